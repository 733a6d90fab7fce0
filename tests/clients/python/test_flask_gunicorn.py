"""Flask behind a real gunicorn, its emitter sending to a real daemon: the per-route requests,
status classes and body bytes the daemon stores are exactly what the HTTP client sent and
received — a generator body, a ``send_file`` through gunicorn's ``wsgi.file_wrapper``
(sendfile), a 304, a HEAD, a path parameter, a view that raises, an upload, the legacy
``write()``, an unmatched path, 200 concurrent requests of different sizes; a client that went
away counts with no status class; latency runs to the last byte. ``--preload`` with 4 workers
gives the daemon 4 instances with their own boot nonces; they serve all of it."""

from __future__ import annotations

import random
import socket
import sqlite3
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli.daemon_process import DaemonProcess
from collector.storage import checkpoint
from tests.clients.python.wsgi_harness import (
    Tally,
    gunicorn,
    request,
    start_test_daemon,
    stored_totals,
    wait_for_samples,
)

pytestmark = pytest.mark.e2e

APP = "tests.clients.python.flask_site:application"
FILE_BYTES = 300_001  # large enough that gunicorn sends it with sendfile in several calls


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = start_test_daemon(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def site_env(daemon: DaemonProcess, tmp_path: Path) -> dict[str, str]:
    served = tmp_path / "served.bin"
    served.write_bytes(random.Random(1).randbytes(FILE_BYTES))
    return {"BWMON_TEST_UDP_PORT": str(daemon.udp_port), "BWMON_TEST_FILE": str(served)}


def went_away_mid_stream(port: int, path: str, keep: int) -> int:
    """Read about ``keep`` bytes of the response (headers included), then close; the body
    bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # HTTP/1.0: no chunked framing, the bytes after the head are body bytes
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        received = b""
        while len(received) < keep:
            received += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    return len(received.partition(b"\r\n\r\n")[2])


def every_worker_answers(port: int, tally: Tally) -> set[str]:
    """``/worker`` (pid and boot of the worker that answered), 8 at once, until 4 workers
    answered; what they said."""
    answers: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(25):
            for answer in pool.map(lambda _: request(port, "GET", "/worker?sleep=0.05"), range(8)):
                assert answer.status == 200
                tally.add("/worker", "GET", 200, 0, len(answer.body))
                answers.add(answer.body.decode())
            if len(answers) == 4:
                break
    return answers


def test_flask_under_gunicorn_the_daemon_stores_what_the_client_sent_and_received(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    tally = Tally()
    env = site_env(daemon, tmp_path)
    # The application imported once in the arbiter, then 4 forked workers of 8 threads each.
    args = ["--preload", "--workers", "4", "--worker-class", "gthread", "--threads", "8"]
    with gunicorn(APP, tmp_path, args, env) as server:
        port = server.port

        # Each worker is its own instance (host:pid) with its own boot nonce.
        answers = every_worker_answers(port, tally)
        pids = {int(answer.split()[0]) for answer in answers}
        boots = {answer.split()[1] for answer in answers}
        assert pids == server.worker_pids()
        assert len(boots) == 4

        answer = request(port, "GET", "/stream/40?size=1000")
        assert answer.status == 200
        assert len(answer.body) == sum(1000 + i for i in range(40))
        assert answer.headers.get("transfer-encoding") == "chunked"
        tally.add("/stream/<int:chunks>", "GET", 200, 0, len(answer.body))

        answer = request(port, "GET", "/file")
        assert answer.status == 200
        assert len(answer.body) == FILE_BYTES
        tally.add("/file", "GET", 200, 0, FILE_BYTES)
        etag = answer.headers["etag"]

        answer = request(port, "GET", "/file", headers={"If-None-Match": etag})
        assert (answer.status, answer.body) == (304, b"")
        tally.add("/file", "GET", 304, 0, 0)

        answer = request(port, "HEAD", "/file")
        assert (answer.status, answer.body) == (200, b"")
        assert answer.headers["content-length"] == str(FILE_BYTES)
        tally.add("/file", "HEAD", 200, 0, 0)

        for item_id, size in ((7, 1234), (8, 0), (9, 1)):
            answer = request(port, "GET", f"/items/{item_id}?size={size}")
            assert len(answer.body) == size
            tally.add("/items/<int:item_id>", "GET", 200, 0, size)

        answer = request(port, "GET", "/boom")  # Flask turns the exception into its 500 page
        assert answer.status == 500
        tally.add("/boom", "GET", 500, 0, len(answer.body))

        upload = random.Random(2).randbytes(100_000)
        answer = request(port, "POST", "/upload", upload)
        assert answer.body == b"100000"
        tally.add("/upload", "POST", 200, len(upload), len(answer.body))

        answer = request(port, "GET", "/legacy/write?500")
        assert len(answer.body) == 1500
        tally.add("/legacy/write", "GET", 200, 0, 1500)

        # Out of the WSGI application before start_response: gunicorn answers with its own
        # error page, which is no byte of the application's; counted 500 with 0 bytes out.
        answer = request(port, "GET", "/legacy/raise")
        assert answer.status == 500
        tally.add("/legacy/raise", "GET", 500, 0, 0)

        answer = request(port, "GET", "/no/such/route")
        assert answer.status == 404
        tally.add("<unmatched>", "GET", 404, 0, len(answer.body))

        answer = request(port, "GET", "/slow-stream")
        tally.add("/slow-stream", "GET", 200, 0, len(answer.body))

        # 200 requests at once, of different sizes, GETs and uploads mixed.
        sizes = random.Random(3).sample(range(1, 200_000), 200)
        start = threading.Barrier(200)

        def one(index: int) -> tuple[str, str, int, int, int]:
            size = sizes[index]
            start.wait()
            if index % 2:
                body = bytes([index % 256]) * size
                got = request(port, "POST", "/upload", body)
                assert got.body == str(size).encode()
                return "/upload", "POST", got.status, size, len(got.body)
            got = request(port, "GET", f"/items/{index}?size={size}")
            assert len(got.body) == size
            return "/items/<int:item_id>", "GET", got.status, 0, size

        with ThreadPoolExecutor(200) as pool:
            for route, method, status, sent, received in pool.map(one, range(200)):
                tally.add(route, method, status, sent, received)

        # A client that goes away mid-stream: counted, with no status class, and no more
        # bytes out than the server handed over (at least what the client read).
        read = went_away_mid_stream(port, "/forever", 200_000)

        # The emitters' next samples carry everything; then a graceful stop.
        wait_for_samples()
        assert server.stop() == 0

    stored = stored_totals(daemon, tmp_path)
    gone = stored.pop(("/forever", "GET"))
    assert gone.requests == 1
    assert gone.status == [0, 0, 0, 0, 0]
    assert gone.bytes_out >= read
    slow = stored[("/slow-stream", "GET")]
    assert stored == tally.totals
    assert slow.requests == 1
    latency_ms = latency_sum_ms(tmp_path, "/slow-stream")
    assert latency_ms >= 300  # the body's last byte left 0.3 s after the view returned

    # The daemon saw the 4 workers as 4 instances of the route, with the boots they told.
    state = checkpoint.load(tmp_path)
    assert state is not None
    (route,) = [r for r in state["engine"]["routes"] if r["key"][1] == "/worker"]
    assert {values[0] for values in route["instances"].values()} == boots
    assert {int(name.rsplit(":", 1)[1]) for name in route["instances"]} == pids


def latency_sum_ms(directory: Path, route: str) -> float:
    with sqlite3.connect(directory / "bwmon.db") as db:
        (value,) = db.execute(
            "SELECT SUM(latency_sum_ms) FROM http_minute WHERE route = ?", (route,)
        ).fetchone()
    return float(value)
