"""``bwmon bench all --quick --json``: every benchmark runs end to end and every figure the
issue names comes out, with values that add up (a smoke run: no target is asserted — speed is
for the benchmark to print, never for a test to assert).

StatsD runs here too when Node.js and an installed ``statsd`` are present (``--quick`` never
installs it); otherwise the JSON must say why it was skipped and carry no StatsD figure."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from cli.bench.statsd import installed_stats_js

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIGURES = (
    "ingest_frames_per_s",
    "bare_receiver_frames_per_s",
    "ratio_to_ceiling",
    "e2e_frames_per_s",
    "e2e_search_frames_per_s",
    "e2e_sustained_loss_fraction",
    "e2e_latency_p50_ms",
    "e2e_latency_p99_ms",
    "e2e_delta_latency_p99_ms",
)
TARGETS = {
    "lossless rtc ingest (frames/s)",
    "end to end (frames/s)",
    "ratio_vs_statsd",
    "frame-to-subscriber latency p99 (ms)",
    "ratio_to_ceiling",
}


def _is_figure(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value["min"] <= value["median"] <= value["max"]
        and len(value["runs"]) >= 1
    )


def test_bench_all_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "all", "--json", "--quick"],
        capture_output=True,
        timeout=240,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["quick"] is True
    assert figures["errors"] == {}
    for key in FIGURES:
        assert _is_figure(figures[key]), key

    # Every target, with a verdict wherever it was measured.
    targets = {t["name"]: t for t in figures["targets"]}
    assert set(targets) == TARGETS
    for name, target in targets.items():
        if name != "ratio_vs_statsd":
            assert isinstance(target["passed"], bool), name
    assert figures["e2e_latency_target_ms"] == 1000 * figures["e2e"]["publish_interval_s"] + 250
    assert figures["meets_targets"] == all(t["passed"] for t in figures["targets"])

    # Ingest side by side: the ratios are the run's own pairs.
    ingest = figures["ingest"]
    for run in ingest["runs"]:
        assert run["bwmon"]["rate"] > 0
        assert run["bare"]["rate"] > 0
        assert run["ratio_to_ceiling"] == pytest.approx(
            run["bwmon"]["rate"] / run["bare"]["rate"], abs=0.001
        )
        for search in (run["bwmon"], run["bare"]):
            assert search["steps"]
            assert all(step["sent_frames"] > 0 for step in search["steps"])
    assert ingest["frames_per_datagram"] > 1
    assert ingest["datagram_bytes"] <= 1200
    assert ingest["statsd_datagram_bytes"] <= 1200
    assert ingest["decode_frames_per_s"] > 0

    # StatsD: measured when it can run here, else skipped with the reason and no figure.
    if figures["statsd_skipped"] is None:
        assert installed_stats_js() is not None
        assert _is_figure(figures["statsd_samples_per_s"])
        assert _is_figure(figures["ratio_vs_statsd"])
        assert isinstance(targets["ratio_vs_statsd"]["passed"], bool)
        run = ingest["runs"][0]
        assert run["ratio_vs_statsd"] == pytest.approx(
            run["bwmon"]["rate"] / run["statsd"]["rate"], abs=0.001
        )
        assert ingest["statsd_lines_per_sample"] > 10
        assert ingest["receive_buffer_bytes"]["statsd"] > 0
    else:
        assert installed_stats_js() is None or "Node.js" in figures["statsd_skipped"]
        assert figures["statsd_samples_per_s"] is None
        assert figures["ratio_vs_statsd"] is None
        assert targets["ratio_vs_statsd"]["passed"] is None

    # End to end: rows in MariaDB for every stream of the flood, deltas at the subscriber.
    e2e = figures["e2e"]
    assert e2e["stored"]["replay_streams"] == 1000
    assert e2e["stored"]["rtc_minute_rows"] >= 1000
    assert e2e["storage_health"]["backend"] == "mysql"
    assert e2e["storage_health"]["failed_flushes"] == 0
    assert e2e["probe_error"] is None
    assert e2e["peak_rss_bytes"] > 0
    assert figures["e2e_peak_rss_bytes"] == e2e["peak_rss_bytes"]
    for run in e2e["runs"]:
        assert run["probes_seen"] > 0
        assert run["probes_seen"] <= run["probes_sent"]
        assert 0 < run["probe_latency_p50_ms"] <= run["probe_latency_p99_ms"]

    # The other benchmarks' results, whole.
    assert figures["aggregate"]["frames_per_s"] > 0
    assert figures["storage"]["rows_per_s"] > 0
    assert figures["fanout"]["counts"]["deltas_received"] > 0
    assert set(figures["section_s"]) == {"aggregate", "storage", "fanout", "ingest", "e2e"}
