# Two commands do everything (see README.md):
#   make serve   install into .venv and run the daemon on embedded defaults
#   make test    install into .venv and run lint, types and the fast test suite
#                (make faults and make slow run the long cases; CI runs all three)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test faults slow lint lock clean compiled pure

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/bwmon serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast suite: unit, property and integration tests and the short end-to-end runs; the
# fault-injection suite and the long end-to-end runs have targets of their own (CI runs all).
# pytest exit 5 means no tests were collected: that is a broken suite, not a pass.
test: lint
	$(BIN)/pytest -q -p no:cacheprovider -m "not faults and not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The fault-injection suite (docs/RELIABILITY.md): kill -9, outages, refused rows, Redis
# restarts, hostile datagrams, slow and idle clients, against real servers on loopback.
faults: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m faults; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make faults: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The long end-to-end runs: the benchmarks' smoke runs (`bench all --quick` among them) and runs
# of 15 s or more: two daemons on one Redis and MariaDB, a daemon killed under a subscriber, a
# reload mid-stream.
slow: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m "slow and not faults"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make slow: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lock: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions CI and \`make\` install (runtime + dev). Regenerate: make lock"; \
	  $(BIN)/pip freeze --exclude-editable; } > requirements.lock

# The hot path compiled with mypyc, in place (setup.py, docs/BENCHMARKS.md); `make pure` undoes it.
compiled: pure $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check 'setuptools>=77'
	BWMON_COMPILE=1 $(BIN)/python setup.py --quiet build_ext --inplace

pure:
	rm -rf build
	find collector protocol \( -name '*.so' -o -name '*.py.sha256' \) -delete

clean: pure
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
