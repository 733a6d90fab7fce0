"""Django over ASGI: ``RouteMiddleware`` (then async, with no thread hop) puts the route Django
resolved where ``bwmon_client.asgi.BwmonMiddleware`` reads it; the application called in
process as a server would."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from bwmon_client import Emitter
from bwmon_client.asgi import BwmonMiddleware


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    made = Emitter("unit", url="udp://127.0.0.1:9", interval_s=3600)
    yield made
    made.close()


async def serve(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through ``app``; the status and the body it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)  # the client stays: no http.disconnect
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_django_over_asgi_counts_under_the_resolved_route(
    emitter: Emitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        os.environ, "DJANGO_SETTINGS_MODULE", "tests.clients.python.django_site.settings"
    )
    from django.core.asgi import get_asgi_application

    app = BwmonMiddleware(get_asgi_application(), emitter)

    async def requests() -> list[tuple[int, bytes]]:
        return [
            await serve(app, "GET", "/api/orders/x-1/"),
            await serve(app, "POST", "/upload/", b"0123456789"),
            await serve(app, "GET", "/nowhere/"),
        ]

    (order, upload, missing) = asyncio.run(requests())
    assert order == (200, b"order x-1" * 10)
    assert upload == (200, b"10")
    assert missing[0] == 404
    counted = emitter.totals()
    assert counted[("/api/orders/<slug:ref>/", "GET")]["bytes_out"] == len(order[1])
    assert counted[("/upload/", "POST")]["bytes_in"] == 10
    assert counted[("<unmatched>", "GET")]["status"] == [0, 0, 0, 1, 0]
