"""``bwmon bench fanout --quick --json``: the real daemon, ``emit`` and the subscriber process
run end to end and the figures the benchmark promises come out (a smoke run: no target is
asserted, only that the measurement happened and adds up)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_bench_fanout_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "fanout", "--json", "--quick"],
        capture_output=True,
        timeout=90,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["target_delta_latency_p99_ms"] == 250
    assert figures["target_delta_bytes_vs_snapshot"] == 0.10
    assert figures["target_ingest_drop_with_subscribers"] == 0.10
    for key in ("latency_meets_target", "bytes_meets_target", "ingest_meets_target"):
        assert isinstance(figures[key], bool), key
    assert 0 < figures["delta_latency_p50_ms"] <= figures["delta_latency_p99_ms"]
    assert 0 < figures["delta_bytes_vs_snapshot"] < 1
    assert figures["delta_bytes_vs_snapshot"] == pytest.approx(
        figures["mean_delta_bytes"] / figures["snapshot_bytes"], abs=0.001
    )
    assert figures["encoding"] == "msgpack"
    assert figures["ingest_frames_per_s_without_subscribers"] > 0
    assert figures["ingest_frames_per_s_with_subscribers"] > 0
    assert figures["ingest_drop_with_subscribers"] == pytest.approx(
        1
        - figures["ingest_frames_per_s_with_subscribers"]
        / figures["ingest_frames_per_s_without_subscribers"],
        abs=0.001,
    )

    counts = figures["counts"]
    subscribers = figures["subscribers"]
    assert counts["subscribers_connected"] == counts["peak_connected"] == subscribers
    assert counts["deltas_received"] > 0
    assert counts["snapshots_received"] >= subscribers
    assert counts["resyncs"] == 0
    assert counts["errors"] == {}
    assert counts["connect_errors"] == {}
    assert counts["closed_by_daemon"] == {}
    assert counts["meetings_in_final_snapshot"] == figures["meetings"]
    assert counts["mirrors_compared"] > 0
    assert counts["mirrors_matching_snapshot"] == counts["mirrors_compared"]
    assert figures["windows"]["steady"]["deltas"] > 0

    roles = [phase["role"] for phase in figures["phases"]]
    assert roles == ["prime", "with", "without"]
    for phase in figures["phases"]:
        assert phase["accepted_frames_per_s"] > 0
        assert phase["subscribers"] == (subscribers if phase["role"] != "without" else 0)

    storm = figures["storm"]
    assert storm["subscribers"] == subscribers
    assert storm["open_s"] > 0
    assert storm["datagrams_sent"] > 0
    assert storm["kernel_drops"] >= 0
    assert storm["datagram_loss"] == pytest.approx(
        storm["kernel_drops"] / storm["datagrams_sent"], abs=1e-5
    )
