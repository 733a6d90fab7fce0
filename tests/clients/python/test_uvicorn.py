"""uvicorn serving FastAPI with ``instrument``, an emitter sending to a real daemon: the bytes
the daemon stores per route (its minute rows, in SQLite or MariaDB) are the body bytes the client
sent and received, exactly, with the requests and status classes; 200 concurrent requests add up
exactly."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from bwmon_client import Emitter
from bwmon_client.starlette import instrument
from cli.daemon_process import DaemonProcess
from tests.clients.python import apps
from tests.clients.python.support import (
    RouteRows,
    daemon,
    request,
    stored_routes,
    uvicorn_server,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def running(tmp_path: Path) -> Iterator[DaemonProcess]:
    with daemon(tmp_path) as process:
        yield process


def serve(
    tmp_path: Path, process: DaemonProcess, service: str, http_middleware: bool = False
) -> tuple[Emitter, object]:
    file_path = tmp_path / "download.bin"
    file_path.write_bytes(os.urandom(200_003))
    emitter = Emitter(service, url=f"udp://127.0.0.1:{process.udp_port}", interval_s=0.2)
    return emitter, instrument(apps.make_app(file_path, http_middleware), emitter)


def stored(
    tmp_path: Path,
    process: DaemonProcess,
    emitter: Emitter,
    service: str,
    mysql: str | None = None,
) -> dict[tuple[str, str], RouteRows]:
    emitter.close()
    assert emitter.stats()["send_errors"] == 0
    health = process.settled_health()
    assert process.stop() == 0
    assert health["aggregate"]["baseline_samples"]["http"] == 0
    assert all(n == 0 for n in health["aggregate"]["samples_not_applied"]["http"].values())
    return stored_routes(tmp_path, service, mysql)


def expect(rows: dict[tuple[str, str], RouteRows], key: tuple[str, str], **values: object) -> None:
    row = rows[key]
    for name, value in values.items():
        assert getattr(row, name) == value, (key, name)
    assert sum(row.latency_hist) == row.requests, key


def status_classes(*statuses: int) -> list[int]:
    classes = [0] * 5
    for status in statuses:
        classes[status // 100 - 1] += 1
    return classes


def test_every_kind_of_response_is_stored_to_the_byte(
    tmp_path: Path, running: DaemonProcess
) -> None:
    emitter, app = serve(tmp_path, running, "asgi-kinds")
    with uvicorn_server(app) as port:
        streams = [request(port, "GET", f"/stream/{n}") for n in (apps.STREAM_CHUNKS, 7, 0)]
        files = [request(port, "GET", "/file"), request(port, "HEAD", "/file")]
        pages = [
            request(port, "GET", "/page"),
            request(port, "GET", "/page", headers=[("if-none-match", apps.ETAG)]),
        ]
        items = [request(port, "GET", f"/items/{n}") for n in (1, 22, 333)]
        items.append(request(port, "GET", "/items/not-a-number"))  # 422 from FastAPI
        uploads = [
            request(port, "POST", "/upload", os.urandom(70_001)),
            request(port, "POST", "/upload", chunks=[os.urandom(n) for n in (1, 9000, 0, 33)]),
            request(port, "POST", "/upload", b""),
        ]
        boom = request(port, "GET", "/boom")
        unmatched = [request(port, "GET", "/no/such/route"), request(port, "PUT", "/file")]
        gone = request(port, "GET", "/endless", read_at_most=50_000)
        wait_for(lambda: ("/endless", "GET") in emitter.totals())
    assert [e.status for e in streams] == [200] * 3
    assert streams[0].received == sum(len(apps.chunk(i)) for i in range(apps.STREAM_CHUNKS))
    assert [e.status for e in files] == [200, 200]
    assert files[0].received == 200_003
    assert files[1].received == 0
    assert [e.status for e in pages] == [200, 304]
    assert pages[1].received == 0
    assert [e.status for e in items] == [200, 200, 200, 422]
    assert [e.status for e in uploads] == [200] * 3
    assert [e.sent for e in uploads] == [70_001, 9034, 0]
    assert boom.status == 500
    assert boom.received > 0
    assert [e.status for e in unmatched] == [404, 405]
    assert gone.status == 200

    rows = stored(tmp_path, running, emitter, "asgi-kinds")
    expect(
        rows,
        ("/stream/{count}", "GET"),
        requests=3,
        status=status_classes(200, 200, 200),
        bytes_in=0,
        bytes_out=sum(e.received for e in streams),
    )
    expect(rows, ("/file", "GET"), requests=1, bytes_out=200_003, status=status_classes(200))
    expect(rows, ("/file", "HEAD"), requests=1, bytes_out=0, status=status_classes(200))
    expect(
        rows,
        ("/page", "GET"),
        requests=2,
        bytes_out=len(apps.PAGE),
        status=status_classes(200, 304),
    )
    expect(
        rows,
        ("/items/{item_id}", "GET"),
        requests=4,
        bytes_out=sum(e.received for e in items),
        status=status_classes(200, 200, 200, 422),
    )
    expect(
        rows,
        ("/upload", "POST"),
        requests=3,
        bytes_in=70_001 + 9034,
        bytes_out=sum(e.received for e in uploads),
        status=status_classes(200, 200, 200),
    )
    expect(rows, ("/boom", "GET"), requests=1, bytes_out=boom.received, status=status_classes(500))
    expect(
        rows,
        ("<unmatched>", "GET"),
        requests=1,
        bytes_out=unmatched[0].received,
        status=status_classes(404),
    )
    # a path that exists with another method: the router matched the path only partly
    expect(
        rows,
        ("/file", "PUT"),
        requests=1,
        bytes_out=unmatched[1].received,
        status=status_classes(405),
    )
    endless = rows["/endless", "GET"]
    assert endless.requests == 1
    assert endless.status == [0] * 5  # the client went away: no status class
    assert endless.bytes_out >= gone.received
    assert len(rows) == 10


async def exchange(port: int, method: str, target: str, body: bytes) -> tuple[int, int]:
    """One request over asyncio: the status and the body bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = h11.Connection(h11.CLIENT)
    headers = [("host", "127.0.0.1"), ("connection", "close")]
    headers.append(("content-length", str(len(body))))
    writer.write(connection.send(h11.Request(method=method, target=target, headers=headers)))
    writer.write(connection.send(h11.Data(data=body)) if body else b"")
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()
    status, received = 0, 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += len(event.data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    writer.close()
    await writer.wait_closed()
    return status, received


@pytest.fixture
def running_mysql(tmp_path: Path, database: str) -> Iterator[DaemonProcess]:
    with daemon(tmp_path, mysql=database) as process:
        yield process


def test_200_concurrent_requests_add_up_exactly(
    tmp_path: Path, running_mysql: DaemonProcess, database: str
) -> None:
    # the rows in MariaDB; a BaseHTTPMiddleware inside: the route still comes from the scope
    running = running_mysql
    emitter, app = serve(tmp_path, running, "asgi-concurrent", http_middleware=True)
    rng = random.Random(27)
    plan = []
    for i in range(200):
        if i % 2:
            plan.append(("GET", f"/sized/{rng.randrange(0, 60_000)}", b""))
        else:
            plan.append(("POST", "/upload", os.urandom(rng.randrange(0, 60_000))))

    async def run_all(port: int) -> list[tuple[int, int]]:
        return await asyncio.gather(*(exchange(port, m, t, b) for m, t, b in plan))

    with uvicorn_server(app) as port:
        results = asyncio.run(run_all(port))
    assert [status for status, _ in results] == [200] * 200
    rows = stored(tmp_path, running, emitter, "asgi-concurrent", database)
    gets = [
        received
        for (method, _, _), (_, received) in zip(plan, results, strict=True)
        if method == "GET"
    ]
    posts = [
        (len(b), received)
        for (m, _, b), (_, received) in zip(plan, results, strict=True)
        if m == "POST"
    ]
    expect(
        rows,
        ("/sized/{size}", "GET"),
        requests=100,
        bytes_in=0,
        bytes_out=sum(gets),
        status=[0, 100, 0, 0, 0],
    )
    expect(
        rows,
        ("/upload", "POST"),
        requests=100,
        bytes_in=sum(sent for sent, _ in posts),
        bytes_out=sum(received for _, received in posts),
        status=[0, 100, 0, 0, 0],
    )
