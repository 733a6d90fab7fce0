"""Real servers for the client tests: a daemon on loopback with its SQLite rows, uvicorn in a
thread, and an HTTP/1.1 client (h11 on a plain socket) that counts the body bytes it sent and
received, the exact figures the daemon must store."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import uvicorn

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import HttpSample, decode_message
from tests.helpers import admin, free_port


def daemon_config(
    state_dir: Path, udp_port: int | None = None, extra: str = "", mysql: str | None = None
) -> list[str]:
    """The daemon's arguments: its state in ``state_dir``, its rows in SQLite there or in the
    MariaDB database ``mysql``; ``extra`` TOML after."""
    storage = f"[storage]\nstate_dir = '{state_dir}'\nflush_interval_s = 0.5\n"
    if mysql is not None:
        storage += f"backend = 'mysql'\nmysql_user = 'root'\nmysql_database = '{mysql}'\n"
    config = state_dir / "collector.toml"
    config.write_text(storage + extra)
    args = ["--config", str(config)]
    if udp_port is not None:
        args += ["--udp-port", str(udp_port)]
    return args


@contextmanager
def daemon(state_dir: Path, extra: str = "", mysql: str | None = None) -> Iterator[DaemonProcess]:
    """``bwmon serve`` on free loopback ports (``daemon_config``)."""
    args = daemon_config(state_dir, extra=extra, mysql=mysql)
    process = start_daemon(state_dir / "daemon.log", args)
    try:
        yield process
    finally:
        process.stop()


@dataclass
class RouteRows:
    requests: int = 0
    status: list[int] = field(default_factory=lambda: [0] * 5)
    bytes_in: int = 0
    bytes_out: int = 0
    latency_hist: list[int] = field(default_factory=lambda: [0] * 12)


_ROWS = (
    "SELECT route, method, requests, status_1xx, status_2xx, status_3xx, status_4xx, "
    "status_5xx, bytes_in, bytes_out, latency_hist FROM http_minute WHERE service = "
)


def stored_routes(
    state_dir: Path, service: str, mysql: str | None = None
) -> dict[tuple[str, str], RouteRows]:
    """The daemon's minute rows of ``service`` (in SQLite in ``state_dir``, or in the MariaDB
    database ``mysql``), summed per (route, method) over minutes and segments; read after the
    daemon stopped: it writes its open minutes on the way out."""
    rows: dict[tuple[str, str], RouteRows] = {}
    if mysql is not None:
        assert service.replace("-", "").isalnum()
        found: list[tuple[Any, ...]] = admin(f"{_ROWS}'{service}'", mysql)
    else:
        with sqlite3.connect(state_dir / "bwmon.db") as db:
            found = db.execute(_ROWS + "?", (service,)).fetchall()
    for route, method, requests, s1, s2, s3, s4, s5, bytes_in, bytes_out, hist in found:
        total = rows.setdefault((route, method), RouteRows())
        total.requests += int(requests)
        total.status = [a + int(b) for a, b in zip(total.status, (s1, s2, s3, s4, s5), strict=True)]
        total.bytes_in += int(bytes_in)
        total.bytes_out += int(bytes_out)
        total.latency_hist = [
            a + int(b) for a, b in zip(total.latency_hist, json.loads(hist), strict=True)
        ]
    return rows


@contextmanager
def uvicorn_server(app: Any) -> Iterator[int]:
    """``app`` served by uvicorn (h11) in a thread on a free loopback port; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        ws="none",
        lifespan="on",
        log_level="critical",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Exchange:
    """One request as the client saw it: the status and the body bytes both ways."""

    status: int
    sent: int
    received: int
    body: bytes


def request(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    headers: list[tuple[str, str]] | None = None,
    chunks: list[bytes] | None = None,
    read_at_most: int | None = None,
) -> Exchange:
    """One HTTP/1.1 request on its own connection. ``chunks``: a chunked request body;
    ``read_at_most``: close the connection once that many body bytes came (a client that goes
    away mid-response; ``status`` is then the response's, ``received`` what was read)."""
    connection = h11.Connection(h11.CLIENT)
    fields = [("host", "127.0.0.1"), ("connection", "close"), *(headers or [])]
    if body is not None:
        fields.append(("content-length", str(len(body))))
    elif chunks is not None:
        fields.append(("transfer-encoding", "chunked"))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connection.send(h11.Request(method=method, target=target, headers=fields)))
        for part in [body] if body is not None else chunks or []:
            if part:
                sock.sendall(connection.send(h11.Data(data=part)))
                sent += len(part)
        sock.sendall(connection.send(h11.EndOfMessage()))
        status = 0
        received = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
                if read_at_most is not None and len(received) >= read_at_most:
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return Exchange(status, sent, len(received), bytes(received))


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Receiver:
    """A UDP socket on loopback standing in for the daemon's port: it decodes what comes with
    the daemon's own decoder."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"

    def samples(self, timeout_s: float = 0.5) -> list[HttpSample]:
        """The http frames of every datagram until none came for ``timeout_s``."""
        found: list[HttpSample] = []
        self.sock.settimeout(timeout_s)
        while True:
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                return found
            decoded = decode_message(datagram)
            assert decoded.errors == []
            found += [f for f in decoded.frames if isinstance(f, HttpSample)]

    def close(self) -> None:
        self.sock.close()
