"""The daemon under systemd's eyes: the real ``bwmon serve`` talks the notify protocol to a
socket standing in for systemd, and ``deploy/bwmon.service`` passes ``systemd-analyze verify``
without a warning."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon

pytestmark = pytest.mark.e2e

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "bwmon.service"


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield sock, path


def receive_until(
    sock: socket.socket, seen: list[str], done: Callable[[list[str]], bool], timeout_s: float
) -> None:
    """Append every notify line received to ``seen`` until ``done(seen)``."""
    deadline = time.monotonic() + timeout_s
    while not done(seen) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            break


def test_daemon_reports_ready_status_watchdog_and_stopping(
    systemd_socket: tuple[socket.socket, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)  # systemd sets it to the daemon's pid
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\n")
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        seen: list[str] = []
        # Pings every 0.2 s from READY=1 on: two arrive well within 3 s.
        receive_until(sock, seen, lambda lines: lines.count("WATCHDOG=1") >= 2, 3)
        assert daemon.process.poll() is None
        daemon.process.send_signal(signal.SIGHUP)  # systemctl reload
        receive_until(sock, seen, lambda lines: lines.count("READY=1") >= 2, 5)
        assert daemon.process.poll() is None
    finally:
        status = daemon.stop()
    receive_until(sock, seen, lambda lines: "STOPPING=1" in lines, 5)
    assert status == 0
    assert seen.index("READY=1") < seen.index("WATCHDOG=1")
    statuses = [line for line in seen if line.startswith("STATUS=")]
    assert statuses[0] == (
        f"STATUS=listening on udp 127.0.0.1:{daemon.udp_port}, http 127.0.0.1:{daemon.http_port}"
    )
    assert seen.count("WATCHDOG=1") >= 2
    assert seen.index("STOPPING=1") > seen.index("WATCHDOG=1")
    reloading = seen.index("RELOADING=1")
    assert seen[reloading + 1].startswith("MONOTONIC_USEC=")
    assert seen.index("READY=1") < reloading < len(seen) - seen[::-1].index("READY=1") - 1
    events = [e["event"] for e in daemon.log_events()]
    assert "reloaded" in events
    assert "watchdog_started" in events
    assert "notify_failed" not in events
    assert events[-1] == "stopped"


def runnable_unit(text: str) -> str:
    """The unit with its commands pointed at an executable that exists on this machine."""
    return re.sub(
        r"^(ExecStart(?:Pre)?)=.*$",
        lambda match: f"{match.group(1)}={sys.executable} -c pass",
        text,
        flags=re.MULTILINE,
    )


def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    unit = tmp_path / UNIT.name
    unit.write_text(runnable_unit(text))
    assert unit.read_text().count(sys.executable) == 1
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    about_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    assert about_unit == []
    assert result.returncode == 0, result.stderr
    for directive in (
        "Type=notify",
        "WatchdogSec=30",
        "DynamicUser=yes",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert directive in text.splitlines()
    assert not any(line.startswith(("User=", "Group=")) for line in text.splitlines())
