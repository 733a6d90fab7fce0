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
    # Node's figures when its script ran, on one CPU (every app on the same one), else why not.
    assert (figures["node"] is None) == (figures["node_skipped"] is not None)
    if figures["node"] is not None:
        assert figures["node"]["express"]["cpus"] == 1


def test_the_summary_signs_every_added_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """A figure below the bare one (the machine's noise) prints as -6.02, not +-6.02."""
    from cli.bench.middleware import Family, MiddlewareResult, print_summary

    family = Family(bare_us=1.0, ours_us=0.5, ours_added_us=-0.5, ours_meets=True)
    express = {"bare_ns": 100_000, "empty_ns": 103_000, "empty_added_ns": 3_000}
    express |= {"prom_ns": 128_000, "prom_added_ns": 28_000, "instrument_ns": 94_000}
    express |= {"middleware_ns": 102_500, "cpus": 1}
    print_summary(
        MiddlewareResult(
            target_added_us=5.0,
            target_ratio=3.0,
            target_node_added_us=3.0,
            meets_target=True,
            families={"asgi": family},
            rounds=1,
            trivial_batch=1,
            framework_batch=1,
            node={"express": express},
            node_added_us=-6.02,
            node_middleware_added_us=2.5,
        )
    )
    out = capsys.readouterr().out
    assert "+-" not in out
    assert "(-0.50, target ≤ 5" in out
    assert "(+3.00)" in out
    assert "(+28.00)" in out
    assert "(-6.02, target ≤ 3" in out
    assert "(+2.50, target ≤ 3" in out
    assert "overhead.mjs, on 1 CPU(s)]" in out
