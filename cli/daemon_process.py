"""A real ``bwmon serve`` child process on loopback, for ``bwmon bench`` and end-to-end tests.

The daemon binds free ports (port 0); its JSON log goes to a file, where ``start_daemon`` finds
the ``ready`` line with the bound addresses. ``health()`` reads ``/healthz``; ``stop()`` sends
SIGTERM and waits on a deadline, killing the process only if the deadline passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import BwmonError


class DaemonFailed(BwmonError):
    """The daemon exited or never became ready; the message holds the end of its log."""


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    udp_port: int
    http_port: int
    log_path: Path

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.load(response)
        return body

    def settled_health(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """``/healthz`` once the daemon has read everything already sent to it (its ingest
        counters stopped moving)."""
        last = self.health()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.health()
            if now["ingest"] == last["ingest"]:
                return now
            last = now
        return last

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's log lines so far, parsed (lines that are not JSON are skipped)."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def stop(self, timeout_s: float = 10.0) -> int:
        return stop_process(self.process, timeout_s)


def stop_process(process: subprocess.Popen[Any], timeout_s: float) -> int:
    """SIGTERM, then wait up to ``timeout_s``; SIGKILL only if it does not exit. Returns the
    exit status (negative: killed by that signal)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _address_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def start_daemon(
    log_path: Path,
    args: Sequence[str] = (),
    cpu: int | None = None,
    ready_timeout_s: float = 20.0,
    cwd: Path | None = None,
) -> DaemonProcess:
    """Start ``bwmon serve`` on free loopback ports (``args`` adds options, e.g. ``--config``),
    in ``cwd`` (default: this process's working directory).

    ``cpu`` pins the process (all its threads) to that CPU where the platform allows.
    """
    command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1"]
    command += ["--udp-port", "0", "--http-port", "0", *args]
    env = {k: v for k, v in os.environ.items() if k != "BWMON_CONFIG"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=cwd
        )
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {cpu})
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonFailed(
                f"bwmon serve exited with {process.returncode}:\n{_log_tail(log_path)}"
            )
        daemon = DaemonProcess(process, 0, 0, log_path)
        for event in daemon.log_events():
            if event.get("event") == "ready":
                daemon.udp_port = _address_port(event["udp"])
                daemon.http_port = _address_port(event["http"])
                return daemon
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise DaemonFailed(f"bwmon serve not ready after {ready_timeout_s} s:\n{_log_tail(log_path)}")


@contextmanager
def running_daemon(
    log_path: Path, args: Sequence[str] = (), cpu: int | None = None
) -> Iterator[DaemonProcess]:
    """``start_daemon`` as a context manager that always stops the daemon."""
    daemon = start_daemon(log_path, args, cpu)
    try:
        yield daemon
    finally:
        daemon.stop()
