"""CORS for the configured origins (``HttpSettings.cors_origins``) on real loopback sockets: a
listed origin reads ``/api`` (answers, errors and streamed bodies), an unlisted one and a
request without ``Origin`` get no CORS header, the preflight is 204 or 403, paths outside
``/api/`` are left alone, the always-open CORS of POST routes is unchanged, and a new list
(what a reload sets) is in force for the next request."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from collector.http.server import (
    HttpServer,
    HttpSettings,
    PostRoute,
    Request,
    Response,
    StreamedResponse,
)
from tests.collector.test_http_post import Answer, request

OPS = "https://ops.example.com"
OTHER = "https://evil.example.com"


async def start(nursery: trio.Nursery, origins: Sequence[str]) -> tuple[int, HttpServer]:
    async def no_session(*_: object) -> None:
        pass

    def meetings(_request: Request) -> Response:
        return Response.json(200, {"meetings": []})

    def denied(_request: Request) -> Response:
        return Response.error(401, "token required", [("www-authenticate", "Bearer")])

    def export(_request: Request) -> StreamedResponse:
        async def rows() -> AsyncIterator[bytes]:
            yield b"a,b\n"

        disposition = [("content-disposition", 'attachment; filename="x.csv"')]
        return StreamedResponse(rows(), "text/csv", headers=disposition)

    def healthy(_request: Request) -> Response:
        return Response.json(200, {"status": "ok"})

    http = HttpServer(
        http_routes={
            "/api/meetings": meetings,
            "/api/meetings/{id}": denied,
            "/api/export": export,
            "/healthz": healthy,
        },
        ws_routes={"/in": no_session},
        settings=HttpSettings(cors_origins=tuple(origins)),
        post_routes={"/in": PostRoute(healthy, 100, lambda _r: Response.json(413, {}))},
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return listeners[0].socket.getsockname()[1], http


async def get(port: int, target: str, origin: str | None, method: str = "GET") -> Answer:
    headers = [("origin", origin)] if origin is not None else []
    if method == "OPTIONS":
        headers += [
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ]
    return await request(port, method, target, headers=headers)


def cors_of(answer: Answer) -> dict[str, str]:
    return {k: v for k, v in answer.headers.items() if k.startswith("access-control-")}


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    port, _http = await start(nursery, [OPS, "http://127.0.0.1:3000"])
    return port


async def test_a_listed_origin_reads_api_answers_errors_and_streams(port: int) -> None:
    for target, status in (("/api/meetings", 200), ("/api/meetings/x", 401), ("/api/nope", 404)):
        answer = await get(port, target, OPS)
        assert answer.status == status, target
        assert cors_of(answer) == {
            "access-control-allow-origin": OPS,
            "access-control-expose-headers": "content-disposition, www-authenticate",
        }
        assert answer.headers["vary"] == "origin"
    streamed = await get(port, "/api/export", "http://127.0.0.1:3000")
    assert streamed.body == b"a,b\n"
    assert streamed.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"


async def test_an_unlisted_origin_or_none_gets_no_cors_header(port: int) -> None:
    for origin in (OTHER, "https://ops.example.com:8443", None):
        answer = await get(port, "/api/meetings", origin)
        assert answer.status == 200
        assert cors_of(answer) == {}
        assert answer.headers["vary"] == "origin"


async def test_the_preflight_of_a_listed_origin_is_204_of_another_403(
    nursery: trio.Nursery,
) -> None:
    port, http = await start(nursery, [OPS])
    allowed = await get(port, "/api/meetings", OPS, "OPTIONS")
    assert allowed.status == 204
    assert allowed.body == b""
    assert cors_of(allowed) == {
        "access-control-allow-origin": OPS,
        "access-control-allow-methods": "GET, HEAD",
        "access-control-allow-headers": "authorization",
        "access-control-max-age": "7200",
    }
    refused = await get(port, "/api/meetings", OTHER, "OPTIONS")
    assert refused.status == 403
    assert refused.json() == {"error": "origin not allowed"}
    assert cors_of(refused) == {}
    # Without Origin it is no preflight: a method the route does not take.
    assert (await get(port, "/api/meetings", None, "OPTIONS")).status == 405
    assert (await get(port, "/api/meetings/a%2Fb", OPS)).status == 400
    # Each answer ended its connection cleanly (connection: close), none as a failure.
    assert http.counters.connection_errors == 0


async def test_paths_outside_api_and_post_routes_keep_their_own_rules(port: int) -> None:
    health = await get(port, "/healthz", OPS)
    assert cors_of(health) == {}
    assert "vary" not in health.headers
    assert (await get(port, "/healthz", OPS, "OPTIONS")).status == 405
    preflight = await get(port, "/in", OTHER, "OPTIONS")
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "*"


async def test_no_origins_means_no_cors_and_no_vary(nursery: trio.Nursery) -> None:
    port, _http = await start(nursery, [])
    answer = await get(port, "/api/meetings", OPS)
    assert cors_of(answer) == {}
    assert "vary" not in answer.headers
    assert (await get(port, "/api/meetings", OPS, "OPTIONS")).status == 405


async def test_the_wildcard_answers_every_origin_with_a_star(nursery: trio.Nursery) -> None:
    port, _http = await start(nursery, ["*"])
    answer = await get(port, "/api/meetings", OTHER)
    assert answer.headers["access-control-allow-origin"] == "*"
    preflight = await get(port, "/api/meetings", OTHER, "OPTIONS")
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "*"


async def test_a_new_list_is_in_force_for_the_next_request(nursery: trio.Nursery) -> None:
    port, http = await start(nursery, [OPS])
    assert (await get(port, "/api/meetings", OTHER)).headers.get(
        "access-control-allow-origin"
    ) is None
    http.settings = dataclasses.replace(http.settings, cors_origins=(OTHER,))  # as a reload does
    assert (await get(port, "/api/meetings", OTHER)).headers["access-control-allow-origin"] == OTHER
    assert cors_of(await get(port, "/api/meetings", OPS)) == {}
    assert (await get(port, "/api/meetings", OPS, "OPTIONS")).status == 403
