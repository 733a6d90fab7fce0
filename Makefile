# Two commands do everything (see README.md):
#   make serve   install into .venv and run the daemon on embedded defaults
#   make test    install into .venv and run lint, types and the fast test suite
#                (make faults and make slow run the long cases; CI runs all three)
# Both run the compiled build (setup.py: the hot path compiled in place with mypyc) when a C
# compiler is here, else pure Python; BWMON_PURE=1 (`BWMON_PURE=1 make test`) asks for pure.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What the hot path's build depends on: the compiled modules' sources (protocol/build.py).
COMPILED_SOURCES := setup.py protocol/build.py $(shell $(PYTHON) -c 'import runpy; \
	print(*(m.replace(".", "/") + ".py" for m in runpy.run_path("protocol/build.py")["COMPILED_MODULES"]))')
# The Python client's WSGI and ASGI middlewares, compiled the same way in place (clients/python/setup.py).
CLIENT_COMPILED := clients/python/setup.py clients/python/bwmon_client/wsgi.py clients/python/bwmon_client/asgi.py
BUILT := $(VENV)/.built-$(if $(filter 1,$(BWMON_PURE)),pure,compiled)

.PHONY: serve test test-pure faults slow browser soak clients lint lock clean compiled pure

# Editable, without compiling: $(BUILT) builds the hot path in place.
$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock 'setuptools>=77'
	BWMON_PURE=1 $(BIN)/pip install --quiet --disable-pip-version-check --no-deps \
		--no-build-isolation -e .
	# the Python client (its own distribution, clients/python) beside the daemon, as apps have it
	BWMON_PURE=1 $(BIN)/pip install --quiet --disable-pip-version-check --no-deps \
		--no-build-isolation -e clients/python
	touch $(STAMP)

# setup.py says which build it made, and why it is pure when it is (also in /healthz). Its
# record, protocol/_built.py, newer than a stamp: a build made by hand since (pip install -e .).
RECORD := $(wildcard protocol/_built.py)
$(VENV)/.built-compiled: $(STAMP) $(COMPILED_SOURCES) $(CLIENT_COMPILED) $(RECORD)
	rm -f $(VENV)/.built-pure
	$(BIN)/python setup.py --quiet build_ext --inplace
	cd clients/python && ../../$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

$(VENV)/.built-pure: $(STAMP) $(RECORD)
	rm -f $(VENV)/.built-compiled
	BWMON_PURE=1 $(BIN)/python setup.py --quiet build_ext --inplace
	cd clients/python && BWMON_PURE=1 ../../$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

serve: $(BUILT)
	$(BIN)/bwmon serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast suite: unit, property and integration tests and the short end-to-end runs; the
# fault-injection suite and the long end-to-end runs have targets of their own (CI runs all).
# pytest exit 5 means no tests were collected: that is a broken suite, not a pass.
test: lint $(BUILT)
	$(BIN)/pytest -q -p no:cacheprovider -m "not faults and not slow and not browser"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The fault-injection suite (docs/RELIABILITY.md): kill -9, outages, refused rows, Redis
# restarts, hostile datagrams, slow and idle clients, against real servers on loopback.
# FAULTS_MARK narrows it (.ci/run runs the tests marked `alone` apart).
FAULTS_MARK ?= faults
faults: $(BUILT)
	$(BIN)/pytest -q -p no:cacheprovider -m "$(FAULTS_MARK)"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make faults: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The long end-to-end runs: the benchmarks' smoke runs (`bench all --quick` among them) and runs
# of 15 s or more: two daemons on one Redis and MariaDB, a daemon killed under a subscriber, a
# reload mid-stream.
slow: $(BUILT)
	$(BIN)/pytest -q -p no:cacheprovider -m "slow and not faults and not browser"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make slow: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The browser client (clients/browser/) and the dashboard's live client: their unit tests under
# Node's own runner, then the tests that drive the system Chromium (and coturn for TURN relay)
# against them and a real daemon.
browser: $(BUILT)
	node --test --test-reporter=tap clients/browser/test/ tests/browser/dashboard/ > $(VENV)/node-test.tap; rc=$$?; \
	cat $(VENV)/node-test.tap; \
	if grep -q '^# tests 0$$' $(VENV)/node-test.tap; then echo "make browser: node ran no tests" >&2; exit 1; fi; \
	exit $$rc
	$(BIN)/pytest -q -p no:cacheprovider -m "browser and not soak"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make browser: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The dashboard's 5-minute soak with 5,000 live meetings in the system Chromium (first render,
# scrolling, search, rows in the DOM, long tasks over the first minute, the heap after 1 and 5
# minutes). With BWMON_SOAK_READY set it writes that file once its first minute is over (.ci/run
# starts its other suites then).
soak: $(BUILT)
	$(BIN)/pytest -q -p no:cacheprovider -m soak; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make soak: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The pure build's run in CI: the tests of the compiled modules (protocol/build.py) and of the
# code that drives them in process; the end-to-end runs are the compiled build's.
PURE_TESTS := tests/aggregate tests/protocol tests/fanout tests/collector tests/test_build.py
test-pure: $(BUILT)
	$(BIN)/pytest -q -p no:cacheprovider -m "not faults and not slow and not browser and not soak" \
		$(PURE_TESTS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-pure: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The Node client (clients/node/): its unit tests under Node's own runner (real node:http
# servers on loopback, no npm package needed). Its end-to-end tests (Express, a real daemon:
# tests/clients/node) run in `make test`, the daemon-restart case and the benchmark's smoke run
# in `make slow`.
clients:
	@out=$$(mktemp); node --test --test-reporter=tap clients/node/test/ > $$out; rc=$$?; \
	cat $$out; \
	if grep -q '^# tests 0$$' $$out; then echo "make clients: node ran no tests" >&2; rm -f $$out; exit 1; fi; \
	rm -f $$out; exit $$rc

lock: $(STAMP)
	BWMON_PURE=1 $(BIN)/pip install --quiet --no-build-isolation -e '.[dev]'
	rm -f $(VENV)/.built-*
	{ echo "# Exact versions CI and \`make\` install (runtime + dev). Regenerate: make lock"; \
	  $(BIN)/pip freeze --exclude-editable; } > requirements.lock

# The build `make serve` and `make test` run by default, and pure Python (they build the default
# again unless BWMON_PURE=1): for running .venv/bin/ commands on either.
compiled pure:
	rm -f $(VENV)/.built-$@
	$(MAKE) --no-print-directory $(VENV)/.built-$@

clean:
	rm -rf build clients/python/build $(VENV) .mypy_cache .ruff_cache .hypothesis protocol/_built.py
	find collector protocol clients/python -name '*.so' -delete
