"""A restart between an alert's raise and its clear, with the real daemon and the real MariaDB:
the alert raised before SIGTERM is raised again from the checkpoint and clears after the
restart under its id, so the database holds one closed row per alert, none left open."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import encode_msgpack
from tests.helpers import admin, rtc

pytestmark = pytest.mark.e2e

PARTICIPANTS = ("p1", "p2")
RULE = (
    "[alerts]\nuse_default_rules = false\n"
    "[[alerts.rules]]\nname = 'slow_rtt'\nmetric = 'rtt_ms'\n"
    "raise_threshold = 100\nclear_threshold = 90\n"
    "raise_count = 2\nraise_window = 2\nclear_count = 2\nclear_window = 2\n"
)


def send(daemon: DaemonProcess, seqs: Iterable[int], rtt_ms: float) -> None:
    """Four samples a second of every participant, each with ``rtt_ms``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in seqs:
            for participant in PARTICIPANTS:
                frame = msgspec.structs.replace(
                    rtc(seq, participant=participant),
                    rtt_ms=rtt_ms,
                    audio_bytes_received=4_000 * seq,
                )
                sock.sendto(encode_msgpack(frame), ("127.0.0.1", daemon.udp_port))
            time.sleep(0.25)


def active_alerts(daemon: DaemonProcess) -> int:
    active: int = daemon.health()["aggregate"]["alerts_active"]
    return active


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_an_alert_raised_before_a_restart_clears_after_it_under_its_id(
    tmp_path: Path, database: str
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_database = '{database}'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n" + RULE
    )
    first = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    try:
        send(first, range(1, 13), rtt_ms=300)
        wait_until(lambda: active_alerts(first) == len(PARTICIPANTS))
        assert first.stop() == 0
    finally:
        first.stop()
    raised = admin("SELECT id FROM alerts WHERE cleared_at IS NULL", database)
    assert len(raised) == len(PARTICIPANTS)

    second = start_daemon(tmp_path / "second.log", ["--config", str(config), *ports])
    try:
        assert active_alerts(second) == len(PARTICIPANTS)  # from the checkpoint
        send(second, range(13, 25), rtt_ms=20)
        wait_until(lambda: active_alerts(second) == 0)
        assert second.stop() == 0
    finally:
        second.stop()
    rows = admin("SELECT id, participant, cleared_at FROM alerts ORDER BY participant", database)
    assert [(row[0], row[1]) for row in rows] == [
        (alert_id, participant)
        for (alert_id,), participant in zip(sorted(raised), PARTICIPANTS, strict=True)
    ]
    assert all(row[2] is not None for row in rows)
