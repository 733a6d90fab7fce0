"""What the WSGI client tests share: a real daemon on loopback, a real gunicorn serving a test
application whose emitter sends to it, an HTTP client that counts the body bytes it actually
sent and received, and the per-route totals the daemon stored.

The daemon keeps its rows in SQLite in the test's directory; ``stored_totals`` reads them after
``DaemonProcess.stop`` (SIGTERM closes and writes the open minutes), summed over minutes.
"""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cli.daemon_process import DaemonProcess, start_daemon, stop_process

REPOSITORY = Path(__file__).resolve().parents[3]
EMITTER_INTERVAL_S = 0.2  # the test applications' emitters (flask_site.py, django_site)
LISTENING = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")
BOOTED = re.compile(rb"Booting worker with pid: (\d+)")


@dataclass
class Totals:
    """One (route, method)'s counts, as the daemon stores them or the client saw them."""

    requests: int = 0
    status: list[int] = field(default_factory=lambda: [0] * 5)
    bytes_in: int = 0
    bytes_out: int = 0


def start_test_daemon(directory: Path) -> DaemonProcess:
    config = directory / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{directory}'\nflush_interval_s = 0.5\n")
    return start_daemon(directory / "daemon.log", ["--config", str(config)])


def stored_totals(daemon: DaemonProcess, directory: Path) -> dict[tuple[str, str], Totals]:
    """Stop the daemon once it has read everything sent to it, and sum its stored minute rows
    per (route, method)."""
    daemon.settled_health()
    assert daemon.stop() == 0
    totals: dict[tuple[str, str], Totals] = {}
    with sqlite3.connect(directory / "bwmon.db") as db:
        rows = db.execute(
            "SELECT route, method, SUM(requests), SUM(status_1xx), SUM(status_2xx),"
            " SUM(status_3xx), SUM(status_4xx), SUM(status_5xx), SUM(bytes_in),"
            " SUM(bytes_out) FROM http_minute GROUP BY route, method"
        ).fetchall()
    for route, method, requests, s1, s2, s3, s4, s5, bytes_in, bytes_out in rows:
        totals[(route, method)] = Totals(
            int(requests), [int(s) for s in (s1, s2, s3, s4, s5)], int(bytes_in), int(bytes_out)
        )
    return totals


class Tally:
    """What the test's HTTP client did, per (route, method)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], Totals] = {}

    def add(self, route: str, method: str, status: int | None, sent: int, received: int) -> None:
        totals = self.totals.setdefault((route, method), Totals())
        totals.requests += 1
        if status is not None:
            totals.status[status // 100 - 1] += 1
        totals.bytes_in += sent
        totals.bytes_out += received


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Answer:
    """One request on its own connection; the body exactly as received (de-chunked)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, data, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> bytes:
        return self.log_path.read_bytes()

    def worker_pids(self) -> set[int]:
        return {int(pid) for pid in BOOTED.findall(self.log())}

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (a graceful stop: workers finish, their emitters flush at exit)."""
        return stop_process(self.process, timeout_s)


def wait_for_samples() -> None:
    """Long enough for the test applications' emitters to send their next samples."""
    time.sleep(EMITTER_INTERVAL_S * 3)


def client_path() -> str:
    """PYTHONPATH for a child that imports the repository and the client package."""
    parts = [str(REPOSITORY), str(REPOSITORY / "clients" / "python")]
    if inherited := os.environ.get("PYTHONPATH"):
        parts.append(inherited)
    return os.pathsep.join(parts)


@contextmanager
def gunicorn(
    app: str,
    directory: Path,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 30.0,
) -> Iterator[Gunicorn]:
    """``gunicorn app`` on a free loopback port, until the block ends (then stopped, and
    waited for)."""
    log_path = directory / f"gunicorn-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", *args, app]
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": client_path()}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=child_env,
            cwd=REPOSITORY,
        )
    server = Gunicorn(process, 0, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while server.port == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start:\n{server.log().decode()}")
            if found := LISTENING.search(server.log()):
                server.port = int(found.group(1))
            else:
                time.sleep(0.05)
        _wait_answering(server, deadline)
        yield server
    finally:
        server.stop()


def _wait_answering(server: Gunicorn, deadline: float) -> None:
    """Until a worker accepts connections (a connection that is accepted and closed without a
    request counts nothing)."""
    import socket

    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
