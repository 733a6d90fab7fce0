"""The real daemon writing to the real MariaDB through a TCP proxy that the test cuts for 60 s:
rows wait (memory, then spool) and arrive exactly once, with every byte emit sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncmy
import pytest

from cli.daemon_process import start_daemon

pytestmark = pytest.mark.e2e

OUTAGE_S = 60


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to MariaDB; ``cut()`` resets every connection and refuses new
    ones (they are accepted and closed at once) until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.cut_off = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
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

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


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


@pytest.fixture
def database() -> Iterator[str]:
    name = f"bwmon_fault_{uuid.uuid4().hex[:10]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin(f"DROP DATABASE {name}")


def test_a_60_s_database_outage_loses_and_doubles_nothing(tmp_path: Path, database: str) -> None:
    proxy = CuttableProxy(("127.0.0.1", 3306))
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_port = {proxy.port}\nmysql_database = '{database}'\n"
        f"state_dir = '{tmp_path}'\nflush_interval_s = 0.5\nretry_max_s = 2.0\n"
        "statement_timeout_s = 3.0\nqueue_max_rows = 5\n"
    )
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        command = [
            sys.executable, "-m", "cli.main", "emit", "--json", "--udp-port", str(daemon.udp_port),
            "--meetings", "4", "--participants", "3", "--interval", "0.5",
            "--duration", str(OUTAGE_S + 15),
        ]  # fmt: skip
        sender = subprocess.Popen(command, stdout=subprocess.PIPE)
        time.sleep(5)
        proxy.cut()
        time.sleep(OUTAGE_S)
        during = daemon.health()["storage"]
        proxy.restore()
        out, _ = sender.communicate(timeout=60)
        sent = json.loads(out)
        assert daemon.stop(timeout_s=30) == 0
    finally:
        daemon.stop()
        proxy.close()
    assert during["failed_flushes"] > 0
    assert during["rows_spooled"] > 0  # over queue_max_rows: the spool took them
    duplicates = admin(
        "SELECT meeting, participant, connection, minute, COUNT(*) FROM rtc_minute "
        "GROUP BY meeting, participant, connection, minute HAVING COUNT(*) > 1",
        database,
    )
    assert duplicates == []
    ((streams, minutes, stored),) = admin(
        "SELECT COUNT(DISTINCT participant), COUNT(DISTINCT minute), "
        "SUM(audio_bytes_sent + video_bytes_sent) FROM rtc_minute",
        database,
    )
    assert streams == 12
    assert isinstance(minutes, int)
    assert minutes >= 2
    assert isinstance(stored, float | int)
    assert float(stored) == sent["rtc_bytes_sent"] > 0
