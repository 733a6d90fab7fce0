"""Shared test helpers: sample frames, free loopback ports, a scratch MariaDB database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncmy
import trio

from protocol import Event, Hello, HttpSample, RtcSample
from protocol.build import COMPILED_MODULES


def rtc(seq: int = 1, meeting: str = "m1", participant: str = "p1") -> RtcSample:
    return RtcSample(
        meeting=meeting,
        participant=participant,
        connection="pc1",
        seq=seq,
        client_ts=1_764_000_000_000.0 + seq,
        audio_bytes_sent=4_000 * seq,
        video_bytes_sent=180_000 * seq,
        rtt_ms=40.0,
    )


def video_gauges(
    fps: tuple[float, float] = (24.0, 30.0),
    size_in: tuple[int, int] = (1280, 720),
    size_out: tuple[int, int] = (640, 360),
    bwe_bps: float = 2_000_000.0,
) -> dict[str, Any]:
    """An ``rtc`` sample's frame rates and resolutions (in, out) and bandwidth estimate, as
    keyword arguments."""
    return dict(
        fps_in=fps[0],
        fps_out=fps[1],
        width_in=size_in[0],
        height_in=size_in[1],
        width_out=size_out[0],
        height_out=size_out[1],
        available_outgoing_bps=bwe_bps,
    )


def http_sample(seq: int = 1) -> HttpSample:
    return HttpSample(
        service="api",
        instance="web-1",
        boot="b00t",
        route="/v1/items",
        method="GET",
        seq=seq,
        client_ts=1_764_000_000_000.0,
        requests=10 * seq,
        status=[0, 9 * seq, 0, seq, 0],
        bytes_in=1_000 * seq,
        bytes_out=20_000 * seq,
        latency_hist=[seq] * 12,
        latency_sum_ms=123.5 * seq,
    )


def event(kind: str = "join") -> Event:
    return Event(meeting="m1", participant="p1", kind=kind, client_ts=1_764_000_000_000.0)  # type: ignore[arg-type]


def hello() -> Hello:
    return Hello(boot="test-boot", kind="other", agent="tests")


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    """Wait until ``condition()`` holds (it is set by another task or process); fail after
    ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state changes elsewhere; poll it
            await trio.sleep(0.01)


def bwmon(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``bwmon`` command as a user does, in a child process (in ``cwd``, default: this
    one); never raises on exit."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    """A port number free for both TCP and UDP on 127.0.0.1 (the daemon uses one of each)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class RedisServer:
    """A real ``redis-server`` of the test's own on a loopback port, that can be restarted (it
    keeps nothing on disk, so a restart loses every key, as a Redis without persistence does)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def redis_server(port: int) -> Iterator[RedisServer]:
    server = RedisServer(port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def admin(sql: str, database: str | None = None) -> list[tuple[object, ...]]:
    async def run() -> list[tuple[object, ...]]:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=3306, user="root", password="", db=database
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
                return list(await cursor.fetchall())
        finally:
            conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def scratch_database(
    run: Callable[[str], object] = admin,
) -> Iterator[str]:
    """A scratch MariaDB database, dropped on exit; ``run`` executes the two statements
    (``admin`` by default; the browser tests run it in a thread of its own)."""
    name = f"bwmon_test_{uuid.uuid4().hex[:10]}"
    run(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        run(f"DROP DATABASE {name}")


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to MariaDB; ``cut()`` resets every connection and refuses new
    ones (they are accepted and closed at once) until ``restore()``; ``hang()`` keeps
    connections open and accepts new ones but forwards nothing either way (a stopped server, a
    hung proxy) until ``flow()``, which delivers what was held."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.cut_off = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while not self.flowing.wait(0.1):
                    if self.closed:
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off = True
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.cut_off = False

    def hang(self) -> None:
        self.flowing.clear()

    def flow(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def assert_build(compiled: list[str]) -> None:
    """``compiled`` (``protocol.build.compiled_modules``, ``/healthz``) is the build this run
    expects: with ``BWMON_EXPECT_BUILD=compiled`` (.ci/run's compiled run) every module of
    ``COMPILED_MODULES``, with ``pure`` (its pure run) none; else all or none, never a build
    of some."""
    every = list(COMPILED_MODULES)
    expected = os.environ.get("BWMON_EXPECT_BUILD")
    if expected == "compiled":
        assert compiled == every
    elif expected == "pure":
        assert compiled == []
    else:
        assert compiled in ([], every)
