"""The emitter against a real daemon: a daemon restarted mid-way loses no request (the daemon
keeps each stream over its restart, the emitter's counters are cumulative), and the
``http://`` transport (``POST /ingest``) stores the same totals as UDP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bwmon_client import Emitter
from cli.daemon_process import DaemonProcess, start_daemon
from tests.clients.python.support import daemon, daemon_config, stored_routes, wait_for
from tests.helpers import free_port

pytestmark = pytest.mark.e2e


def accepted(process: DaemonProcess) -> int:
    return int(process.health()["ingest"]["udp"]["frames_accepted"])


@pytest.mark.slow  # two daemon starts
def test_a_daemon_restart_mid_way_loses_no_request(tmp_path: Path) -> None:
    port = free_port()
    args = daemon_config(tmp_path, udp_port=port)
    emitter = Emitter("restarted", url=f"udp://127.0.0.1:{port}", interval_s=0.1)
    first = start_daemon(tmp_path / "first.log", args)
    try:
        for _ in range(40):
            emitter.record("/r", "GET", 200, 1, 100, 0.002)
        wait_for(lambda: accepted(first) > 0)
    finally:
        assert first.stop() == 0
    for _ in range(25):  # while the daemon is down: samples refused by the kernel
        emitter.record("/r", "GET", 503, 2, 10, 0.002)
    time.sleep(0.3)  # a few samples are sent to the closed port
    second = start_daemon(tmp_path / "second.log", args)
    try:
        for _ in range(10):
            emitter.record("/r", "POST", 201, 3, 1, 0.002)
        emitter.close()
        health = second.settled_health()
    finally:
        assert second.stop() == 0
    assert emitter.stats()["send_errors"] == 0
    assert health["aggregate"]["baseline_samples"]["http"] == 0
    rows = stored_routes(tmp_path, "restarted")

    get, post = rows["/r", "GET"], rows["/r", "POST"]
    assert (get.requests, get.status, get.bytes_in, get.bytes_out) == (
        65,
        [0, 40, 0, 0, 25],
        40 + 50,
        4000 + 250,
    )
    assert (post.requests, post.status, post.bytes_in, post.bytes_out) == (
        10,
        [0, 10, 0, 0, 0],
        30,
        10,
    )


KEY = "k" * 40


def test_http_websocket_and_signed_udp_store_the_same_totals(tmp_path: Path) -> None:
    with daemon(tmp_path, f"[auth]\nudp_keys = ['{KEY}']\n") as process:
        udp = f"udp://127.0.0.1:{process.udp_port}"
        emitters = [
            Emitter("posted", url=f"http://127.0.0.1:{process.http_port}", interval_s=0.1),
            Emitter("session", url=f"ws://127.0.0.1:{process.http_port}/ingest", interval_s=0.1),
            Emitter("signed", url=udp, interval_s=0.1, udp_key=KEY),
            Emitter("unsigned", url=udp, interval_s=0.1),  # refused: the daemon wants keys
        ]
        for i in range(30):
            for emitter in emitters:
                emitter.record(f"/r{i % 3}", "GET", 200, i, 2 * i, 0.02)
            if i % 10 == 0:
                time.sleep(0.15)  # a flush or two in between: several messages per session
        for emitter in emitters:
            emitter.close()
            assert emitter.stats()["send_errors"] == 0
        health = process.settled_health()
        assert process.stop() == 0
    assert health["ingest"]["http"]["frames_accepted"] >= 3
    assert health["ingest"]["websocket"]["frames_accepted"] >= 3
    assert health["ingest"]["udp"]["rejected_by_reason"]["bad_signature"] >= 1
    assert stored_routes(tmp_path, "unsigned") == {}
    for service in ("posted", "session", "signed"):
        rows = stored_routes(tmp_path, service)
        assert {route: row.bytes_out for (route, _), row in rows.items()} == {
            f"/r{k}": sum(2 * i for i in range(30) if i % 3 == k) for k in range(3)
        }
        assert all(row.latency_hist[2] == 10 for row in rows.values())
