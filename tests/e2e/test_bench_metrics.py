"""``bwmon bench metrics --quick --json``: the daemon holds every participant of the smoke
run (1,000 meetings of 4), every scrape answers with the daemon's own count of its cost, and
the two lossless searches ran side by side (a smoke run, not a measurement: no figure is held
to its target here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_bench_metrics_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "metrics", "--json", "--quick"],
        capture_output=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["participants"] == figures["meetings"] * 4 == 4_000
    assert figures["render_cpu_ms_per_scrape"] > 0
    assert figures["scrape_bytes"] > 10_000
    assert 0 < figures["scrape_ms_median"] <= figures["scrape_ms_p95"] <= figures["scrape_ms_max"]
    assert figures["target_cost"] == 0.02
    sides = figures["sides"]
    assert [side["scraping"] for side in sides] == [False, True]
    for side in sides:
        assert side["steps"]
    assert figures["lossless_frames_per_s_without"] == sides[0]["lossless_frames_per_s"]
    assert figures["lossless_frames_per_s_with"] == sides[1]["lossless_frames_per_s"]
