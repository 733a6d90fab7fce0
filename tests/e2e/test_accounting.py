"""The real daemon on the real clock counts every stream from its first sample: two runs of an
HTTP server process that keep their instance name (the second one's first datagram lost), and
two ``bwmon emit`` runs with the same ids one after the other (UDP, then WebSocket, as the
README's quick start does), are all in the minute rows, to the byte; nothing is dropped
silently."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.e2e

# One process of an HTTP server: its own boot nonce, a fixed instance name (a pod's), the
# route's response bytes at each sample, from sequence number ``first_q`` on.
HTTP_PROCESS = """
import os, sys, time
from protocol import HttpSample
from protocol.emitter import UdpEmitter

port, first_q, totals = int(sys.argv[1]), int(sys.argv[2]), map(int, sys.argv[3].split(","))
boot = os.urandom(8).hex()
with UdpEmitter("127.0.0.1", port) as emitter:
    for q, total in enumerate(totals, start=first_q):
        sample = HttpSample(
            service="checkout", instance="checkout-7", boot=boot, route="/v1/orders/{id}",
            method="GET", seq=q, client_ts=time.time() * 1000, requests=total,
            status=[0, total, 0, 0, 0], bytes_in=0, bytes_out=total,
            latency_hist=[total] + [0] * 11, latency_sum_ms=1.0 * total,
        )
        assert emitter.send([sample]) == 1
        time.sleep(0.05)
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n")
    process = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        yield process
    finally:
        process.stop()


def http_process(daemon: DaemonProcess, first_q: int, totals: list[int]) -> None:
    command = [sys.executable, "-c", HTTP_PROCESS, str(daemon.udp_port), str(first_q)]
    subprocess.run([*command, ",".join(map(str, totals))], check=True, timeout=30)


def emit(daemon: DaemonProcess, transport: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "cli.main", "emit", "--json", "--transport", transport]
    command += ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    command += ["--meetings", "2", "--participants", "3", "--interval", "0.5"]
    command += ["--http-routes", "0", "--duration", "3", "--seed", "42"]
    result = subprocess.run(command, capture_output=True, check=True, timeout=60)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_two_process_boots_and_two_emit_runs_are_counted_in_full(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    http_process(daemon, 0, [0, 20, 50])
    http_process(daemon, 1, [8, 30])  # restarted; its first datagram (q 0) was lost
    runs = [emit(daemon, "udp"), emit(daemon, "ws")]  # the same ids, q from 0 again
    health = daemon.settled_health()
    assert daemon.stop() == 0
    live = health["aggregate"]
    assert live["samples_not_applied"] == {
        "http": {"duplicate": 0, "http_instance_cap": 0, "http_route_cap": 0, "old_boot": 0},
        "rtc": {
            "connection_cap": 0,
            "duplicate": 0,
            "meeting_cap": 0,
            "old_boot": 0,
            "participant_cap": 0,
        },
    }
    assert live["baseline_samples"] == {"http": 0, "rtc": 0}
    with sqlite3.connect(tmp_path / "bwmon.db") as db:
        ((http_bytes,),) = db.execute("SELECT SUM(bytes_out) FROM http_minute").fetchall()
        ((rtc_bytes, samples),) = db.execute(
            "SELECT SUM(audio_bytes_sent + video_bytes_sent), SUM(samples) FROM rtc_minute"
        ).fetchall()
        segments = db.execute(
            "SELECT COUNT(DISTINCT segment) FROM rtc_minute "
            "GROUP BY meeting, participant, connection"
        ).fetchall()
    assert http_bytes == 80  # 50 of the first process, 30 of the second: none lost
    assert rtc_bytes == sum(run["rtc_bytes_sent"] for run in runs) > 0
    assert samples == sum(run["frames_by_kind"]["rtc"] for run in runs)
    assert segments == [(2,)] * 6  # each of the 6 streams: one segment per run
