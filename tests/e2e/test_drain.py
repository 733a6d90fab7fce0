"""SIGTERM drains in order: the real daemon's database goes away, then SIGTERM. While the last
flush is retried (up to ``storage.shutdown_deadline_s``) plain HTTP still answers: ``/readyz``
says 503 ``draining``, a subscriber is closed with 1001 and a new WebSocket gets 503. A second
SIGTERM stops the retries: the daemon spools what it could not write and exits 0."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from cli.daemon_process import start_daemon
from protocol import encode_msgpack
from protocol.subscribe import Snapshot, server_json_decoder
from tests.helpers import CuttableProxy, rtc

pytestmark = pytest.mark.e2e


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


async def upgrade_status(port: int) -> int:
    """The status line's code of a WebSocket upgrade request to ``/ingest``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET /ingest HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        with trio.fail_after(5):
            head = await stream.receive_some()
    return int(head.split()[1])


async def test_sigterm_keeps_http_up_while_draining(tmp_path: Path, database: str) -> None:
    proxy = CuttableProxy(("127.0.0.1", 3306))
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_port = {proxy.port}\nmysql_database = '{database}'\n"
        f"state_dir = '{tmp_path}'\nflush_interval_s = 0.5\nshutdown_deadline_s = 120.0\n"
        "statement_timeout_s = 2.0\n"
    )
    daemon = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    url = f"ws://127.0.0.1:{daemon.http_port}"
    try:
        assert readyz(daemon.http_port)[0] == 200
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for seq in range(1, 4):  # open minutes: rows the last flush has to write
                sock.sendto(encode_msgpack(rtc(seq)), ("127.0.0.1", daemon.udp_port))
        while daemon.health()["ingest"]["udp"]["frames_accepted"] < 3:  # noqa: ASYNC110
            await trio.sleep(0.05)
        async with open_websocket_url(f"{url}/subscribe", disconnect_timeout=2) as ws:
            await ws.send_message('{"t":"subscribe","topic":"meetings"}')
            assert isinstance(server_json_decoder.decode(await ws.get_message()), Snapshot)
            proxy.cut()
            daemon.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):  # noqa: PT012
                while True:
                    await ws.get_message()
            await ws._stream.aclose()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001
        status, body = readyz(daemon.http_port)
        assert (status, body) == (503, {"status": "draining"})
        assert await upgrade_status(daemon.http_port) == 503
        # The database stays away: a second SIGTERM gives up on it long before the 120 s
        # deadline, spooling the rows instead.
        daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while daemon.process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await trio.sleep(0.05)
        assert daemon.process.returncode == 0
    finally:
        daemon.stop()
        proxy.close()
    events = {e["event"]: e for e in daemon.log_events()}
    assert "stopping_now" in events  # the second signal
    assert events["storage_closed"]["rows_spooled"] > 0  # kept for the next start
