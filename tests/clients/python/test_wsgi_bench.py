"""``bwmon bench middleware --quick``: a smoke run of the overhead benchmark (its figures are a
measurement's, docs/BENCHMARKS.md; here only their shape and their arithmetic)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_middleware_prints_every_family_with_its_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "middleware", "--json", "--quick"],
        capture_output=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert (figures["target_added_us"], figures["target_ratio"]) == (5.0, 3.0)
    assert figures["target_node_added_us"] == 3.0
    families = figures["families"]
    assert set(families) == {"asgi", "starlette", "wsgi", "flask"}
    for name, family in families.items():
        assert 0 < family["bare_us"] < family["ours_us"] + 50, name
        assert family["ours_meets"] == (family["ours_added_us"] <= 5.0)
    for name, prometheus in (
        ("starlette", "prometheus-fastapi-instrumentator"),
        ("flask", "prometheus-flask-exporter"),
    ):
        family = families[name]
        assert family["prometheus"] == prometheus
        assert family["prometheus_us"] > 0
        if family["ratio"] is not None:
            assert family["ratio"] == pytest.approx(
                family["prometheus_added_us"] / family["ours_added_us"], rel=0.05
            )
    for name in ("asgi", "wsgi"):
        assert families[name]["prometheus"] is None
    verdicts = [f["ours_meets"] and f["ratio_meets"] is not False for f in families.values()]
    assert figures["meets_target"] == all(verdicts)
    # Node's figures when its script ran, else why not.
    assert (figures["node"] is None) == (figures["node_skipped"] is not None)
