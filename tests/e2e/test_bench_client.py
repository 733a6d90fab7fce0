"""``bwmon bench client --quick --json``: the system Chromium sets up the loopback calls, the
client's cost per tick comes out in both ways of measuring, and the module's size with its
targets (a smoke run: no target is asserted, only that the measurement happened and adds up).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

COST_KEYS = ("own_median_ms", "own_p99_ms", "with_getstats_median_ms", "with_getstats_p99_ms")


def bench_client(*options: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "client", "--json", *options],
        capture_output=True,
        timeout=180,
        check=True,
    )
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def check_size(size: dict[str, Any]) -> None:
    assert size["target_minified_bytes"] == 15_000
    assert size["target_gzipped_bytes"] == 6_000
    assert isinstance(size["source_bytes"], int)
    assert isinstance(size["source_gzipped_bytes"], int)
    assert 0 < size["source_gzipped_bytes"] < size["source_bytes"]
    sections = size["sections"]
    assert {"header", "adapter", "quality", "transport", "monitor", "indicator"} <= set(sections)
    assert sum(s["source_bytes"] for s in sections.values()) == size["source_bytes"]
    if size["minify_skipped"] is None:
        assert isinstance(size["minified_bytes"], int)
        assert isinstance(size["gzipped_bytes"], int)
        assert 0 < size["gzipped_bytes"] <= size["minified_bytes"] <= size["source_bytes"]
        assert isinstance(size["meets_target"], bool)
        assert size["minifier"] == "terser 5.51.4"
        for section in sections.values():
            assert 0 <= section["minified_bytes"] <= size["minified_bytes"]
            assert section["gzipped_bytes"] <= size["gzipped_bytes"]
    else:
        assert size["minified_bytes"] is size["gzipped_bytes"] is size["meets_target"] is None
        assert all(s["minified_bytes"] is s["gzipped_bytes"] is None for s in sections.values())


def check_cost(cost: dict[str, Any], ticks: int) -> None:
    assert cost["ticks"] == ticks
    own_median, own_p99, whole_median, whole_p99 = (cost[key] for key in COST_KEYS)
    assert 0 <= own_median <= own_p99
    assert 0 < whole_median <= whole_p99
    # A tick with getStats is never cheaper than its own work: the first holds the second.
    assert own_median <= whole_median


def test_bench_client_prints_its_figures() -> None:
    figures = bench_client("--quick")
    assert figures["target_own_median_ms"] == 1.0
    assert figures["target_connections"] == figures["connections"] == 4
    assert isinstance(figures["meets_target"], bool)
    assert figures["cross_origin_isolated"] is True
    assert isinstance(figures["stats_per_report"], int)
    assert figures["stats_per_report"] > 0
    functions = figures["functions"]
    check_cost(functions, 20)
    assert set(figures["functions_median_ms_by_part"]) == {"rtcFields", "localView", "json"}
    assert figures["report_walk_median_ms"] >= 0
    monitor = figures["monitor"]
    if figures["measured_through"] == "monitor":
        assert figures["monitor_skipped"] is None
        check_cost(monitor, 20)
        # The monitor's frames reached the real daemon and none was refused.
        sent = figures["monitor_stats"]
        assert sent["connections"] == 4
        assert sent["sent"] > 0
        assert sent["rejected"] == sent["dropped"] == 0
    else:
        assert figures["measured_through"] == "functions"
        assert monitor is None
        assert isinstance(figures["monitor_skipped"], str)
        assert figures["monitor_stats"] is None
        monitor = functions
    assert {key: figures[key] for key in COST_KEYS} == {key: monitor[key] for key in COST_KEYS}
    check_size(figures["size"])


def test_bench_client_size_only() -> None:
    check_size(bench_client("--size-only"))
