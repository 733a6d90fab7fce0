"""SIGHUP in the middle of a stream, as a correctness harness: the real daemon writing to the
real MariaDB gets a broken file (kept out), then lower alert thresholds (put in force) while
frames arrive over UDP and over one WebSocket session. Every byte sent ends up in the minute
rows exactly once, the session is never dropped, and the alert raises only after the reload."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from tests.helpers import admin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RTT_MS = 300.0
EMIT_S = 12


def config_text(tmp_path: Path, database: str, raise_threshold: float, raise_count: int = 2) -> str:
    return (
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_database = '{database}'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        "[alerts]\nuse_default_rules = false\n"
        "[[alerts.rules]]\nname = 'slow_rtt'\nmetric = 'rtt_ms'\n"
        f"raise_threshold = {raise_threshold}\nclear_threshold = {raise_threshold - 10}\n"
        f"raise_count = {raise_count}\nraise_window = 2\n"
    )


def emitter(daemon: DaemonProcess, transport: str, seed: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "cli.main", "emit", "--json", "--transport", transport,
        "--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port),
        "--meetings", "2", "--participants", "3", "--interval", "0.5", "--http-routes", "0",
        "--rtt-ms", str(RTT_MS), "--duration", str(EMIT_S), "--seed", str(seed),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e["event"] == name]


def wait_for_event(daemon: DaemonProcess, name: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(events(daemon, name)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(events(daemon, name)) >= count, f"no {name} in the log"


def test_sighup_swaps_alert_thresholds_mid_stream_and_loses_nothing(
    tmp_path: Path, database: str
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(config_text(tmp_path, database, raise_threshold=1000))
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        senders = [emitter(daemon, "udp", 1), emitter(daemon, "ws", 2)]
        time.sleep(3)
        assert daemon.health()["aggregate"]["alerts_active"] == 0  # 300 ms is under 1000
        # A broken file (raise_count over raise_window) is refused: the old rules stay.
        config.write_text(config_text(tmp_path, database, 100, raise_count=3))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_event(daemon, "reload_failed", 1)
        time.sleep(1.5)
        assert daemon.health()["aggregate"]["alerts_active"] == 0
        config.write_text(config_text(tmp_path, database, raise_threshold=100))
        reloaded_at = time.time()
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_event(daemon, "reloaded", 1)
        reports = [json.loads(sender.communicate(timeout=60)[0]) for sender in senders]
        raised_during_stream = daemon.health()["aggregate"]["alerts_active"]
        health = daemon.settled_health()
        assert daemon.stop(timeout_s=30) == 0
    finally:
        daemon.stop()
        for sender in senders:
            sender.kill()
    assert all(sender.returncode == 0 for sender in senders)
    assert raised_during_stream == 12  # every participant: 2 emitters, 2 meetings of 3 each
    ws_report = reports[1]
    assert ws_report["acked_accepted"] == ws_report["frames_sent"] > 0  # one session, all acked
    assert health["ingest"]["websocket"]["rejected_by_reason"] == {}
    failed = events(daemon, "reload_failed")[0]
    assert "raise_count" in failed["error"]
    assert events(daemon, "reloaded")[0]["need_restart"] == []
    ((stored,),) = admin(
        "SELECT SUM(audio_bytes_sent + video_bytes_sent) FROM rtc_minute", database
    )
    assert isinstance(stored, float | int)
    assert float(stored) == sum(report["rtc_bytes_sent"] for report in reports) > 0
    duplicates = admin(
        "SELECT COUNT(*) FROM rtc_minute GROUP BY meeting, participant, connection, minute "
        "HAVING COUNT(*) > 1",
        database,
    )
    assert duplicates == []
    raises = admin("SELECT rule, raised_at FROM alerts", database)
    assert len(raises) == 12
    assert {rule for rule, _ in raises} == {"slow_rtt"}
    assert min(float(str(at)) for _, at in raises) >= reloaded_at - 1
