"""The TCP port's POST routes and static files on real loopback sockets, read back with an h11
client: a body with ``content-length`` or chunked, refused over the limit before it is read
(also to a client that waits for ``100 Continue``), a slow body, keep-alive after a POST, the
CORS preflight and headers; ``/client/bwmon.js`` with its ETag, 304, HEAD and CORS; and the
assets read from the package or the checkout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import msgspec
import pytest
import trio

from collector.http.assets import (
    ASSETS,
    Asset,
    AssetMissing,
    LoadedAsset,
    etag_matches,
    etag_of,
    read_asset,
    read_assets,
)
from collector.http.server import HttpServer, HttpSettings, PostRoute, Request, Response
from collector.http.static import StaticRoutes

LIMIT = 1000
ROOT = Path(__file__).parents[2]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int]

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class Server:
    port: int
    http: HttpServer
    bodies: list[bytes]


async def start(nursery: trio.Nursery, timeout_s: float = 5) -> Server:
    bodies: list[bytes] = []

    async def no_session(*_: object) -> None:
        pass

    def take(request: Request) -> Response:
        bodies.append(request.body)
        return Response.json(200, {"got": len(request.body)})

    http = HttpServer(
        http_routes=StaticRoutes().routes(),
        ws_routes={"/in": no_session},
        settings=HttpSettings(request_timeout_s=timeout_s),
        post_routes={
            "/in": PostRoute(take, LIMIT, lambda _r: Response.json(413, {"too": "large"}))
        },
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return Server(listeners[0].socket.getsockname()[1], http, bodies)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start(nursery)


async def exchange(
    stream: trio.SocketStream,
    client: h11.Connection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    chunks: Sequence[bytes] = (),
) -> Answer:
    """One request on ``stream`` (the body with its length, or ``chunks`` chunked) and its
    answer; a client that says ``expect: 100-continue`` sends its body only after the 100."""
    fields = [("host", "x"), *headers]
    if body is not None:
        fields.append(("content-length", str(len(body))))
    elif chunks:
        fields.append(("transfer-encoding", "chunked"))
    await stream.send_all(client.send(h11.Request(method=method, target=target, headers=fields)))
    waits = any(name == "expect" for name, _ in headers)

    async def send_body() -> None:
        data = b""
        if body:
            data += client.send(h11.Data(data=body)) or b""
        for chunk in chunks:
            data += client.send(h11.Data(data=chunk)) or b""
        await stream.send_all(data + (client.send(h11.EndOfMessage()) or b""))

    if not waits:
        await send_body()
    informational: list[int] = []
    status, got, received = 0, {}, b""
    with trio.fail_after(10):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(bytes(await stream.receive_some()))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                await send_body()
            elif isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                received += bytes(event.data)
            else:
                break
    return Answer(status, got, received, informational)


async def request(port: int, method: str, target: str, **kwargs: Any) -> Answer:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        return await exchange(stream, h11.Connection(h11.CLIENT), method, target, **kwargs)


async def test_a_body_with_a_length_or_in_chunks_reaches_the_route(server: Server) -> None:
    answer = await request(server.port, "POST", "/in", body=b"x" * LIMIT)
    assert (answer.status, answer.json()) == (200, {"got": LIMIT})
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["access-control-expose-headers"] == "retry-after"
    chunked = await request(server.port, "POST", "/in", chunks=[b"ab", b"", b"cde"])
    assert chunked.json() == {"got": 5}
    assert server.bodies == [b"x" * LIMIT, b"abcde"]


async def test_a_body_over_the_limit_is_refused_unread_with_the_routes_answer(
    server: Server,
) -> None:
    declared = await request(server.port, "POST", "/in", body=b"x" * (LIMIT + 1))
    assert (declared.status, declared.json()) == (413, {"too": "large"})
    assert declared.headers["access-control-allow-origin"] == "*"
    assert declared.headers["connection"] == "close"
    chunked = await request(server.port, "POST", "/in", chunks=[b"x" * 600, b"x" * 600])
    assert chunked.status == 413
    assert server.bodies == []
    assert server.http.counters.requests_by_status == {413: 2}


async def test_100_continue_comes_only_for_a_body_within_the_limit(server: Server) -> None:
    expect = [("expect", "100-continue")]
    small = await request(server.port, "POST", "/in", body=b"abc", headers=expect)
    assert (small.informational, small.status) == ([100], 200)
    large = await request(server.port, "POST", "/in", body=b"x" * 5000, headers=expect)
    assert (large.informational, large.status) == ([], 413)


async def test_a_body_that_does_not_come_in_time_is_408(nursery: trio.Nursery) -> None:
    server = await start(nursery, timeout_s=0.5)
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        with trio.fail_after(5):
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"the request body did not arrive in time"' in data


async def test_a_broken_chunked_body_is_400(server: Server) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(
            b"POST /in HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
        )
        with trio.fail_after(5):
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"unreadable request body" in data


async def test_a_kept_alive_connection_takes_post_after_post(server: Server) -> None:
    keep = [("connection", "keep-alive")]
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        client = h11.Connection(h11.CLIENT)
        for n in range(3):
            answer = await exchange(stream, client, "POST", "/in", body=b"y" * n, headers=keep)
            assert answer.json() == {"got": n}
            assert "connection" not in answer.headers
            client.start_next_cycle()
        preflight = await exchange(stream, client, "OPTIONS", "/in", headers=keep)
        assert preflight.status == 204
    assert server.http.counters.connections_total == 1


async def test_the_preflight_allows_any_origin_to_post_with_a_token(server: Server) -> None:
    answer = await request(
        server.port,
        "OPTIONS",
        "/in",
        headers=[
            ("origin", "https://meet.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization, content-type"),
        ],
    )
    assert answer.status == 204
    assert answer.body == b""
    assert "content-length" not in answer.headers
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert answer.headers["access-control-allow-headers"] == "content-type, authorization"
    assert int(answer.headers["access-control-max-age"]) > 0


async def test_other_methods_on_a_post_path_are_told_what_it_takes(server: Server) -> None:
    upgrade = await request(server.port, "GET", "/in")  # also a WebSocket path
    assert upgrade.status == 426
    put = await request(server.port, "PUT", "/in", body=b"x")
    assert (put.status, put.headers["allow"]) == (405, "GET, POST, OPTIONS")
    elsewhere = await request(server.port, "POST", "/client/bwmon.js", body=b"x")
    assert (elsewhere.status, elsewhere.headers["allow"]) == (405, "GET, HEAD")


async def test_the_client_module_is_served_with_etag_no_cache_and_cors(server: Server) -> None:
    source = (ROOT / "clients" / "browser" / "bwmon.js").read_bytes()
    answer = await request(server.port, "GET", "/client/bwmon.js")
    assert answer.status == 200
    assert answer.body == source
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.headers["content-length"] == str(len(source))
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["access-control-allow-origin"] == "*"
    etag = answer.headers["etag"]
    assert etag == etag_of(source)
    assert etag.startswith('"')  # strong

    head = await request(server.port, "HEAD", "/client/bwmon.js")
    assert (head.status, head.body, head.headers["etag"]) == (200, b"", etag)
    assert head.headers["content-length"] == str(len(source))

    for if_none_match in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        cached = await request(
            server.port, "GET", "/client/bwmon.js", headers=[("if-none-match", if_none_match)]
        )
        assert (cached.status, cached.body) == (304, b""), if_none_match
        assert cached.headers["etag"] == etag
        assert cached.headers["cache-control"] == "no-cache"
        assert "content-length" not in cached.headers
    stale = await request(
        server.port, "GET", "/client/bwmon.js", headers=[("if-none-match", '"old"')]
    )
    assert (stale.status, stale.body) == (200, source)


def test_etag_matching_follows_rfc_9110() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches(' "b" , "a" ', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches("", '"a"')
    assert not etag_matches('"ab"', '"a"')


def test_assets_are_read_from_the_package_first_then_the_checkout(tmp_path: Path) -> None:
    asset = Asset("http/files/x.js", "text/javascript", "clients/x.js")
    package, checkout = tmp_path / "collector", tmp_path / "repo"
    with pytest.raises(AssetMissing, match=r"/x\.js: none of .*files/x\.js, .*clients/x\.js"):
        read_asset("/x.js", asset, package, checkout)
    (checkout / "clients").mkdir(parents=True)
    (checkout / "clients" / "x.js").write_bytes(b"checkout")
    assert read_asset("/x.js", asset, package, checkout).body == b"checkout"
    (package / "http" / "files").mkdir(parents=True)
    (package / "http" / "files" / "x.js").write_bytes(b"packaged")
    loaded = read_asset("/x.js", asset, package, checkout)
    assert (loaded.body, loaded.etag) == (b"packaged", etag_of(b"packaged"))


async def test_a_missing_asset_is_a_404_and_the_rest_is_served(nursery: trio.Nursery) -> None:
    assets: dict[str, LoadedAsset | AssetMissing] = {
        "/client/bwmon.js": AssetMissing("gone"),
        "/x.js": LoadedAsset(b"x", "a/b", '"1"'),
    }
    http = HttpServer(StaticRoutes(assets).routes(), {}, HttpSettings())
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    port = listeners[0].socket.getsockname()[1]
    assert (await request(port, "GET", "/client/bwmon.js")).status == 404
    assert (await request(port, "GET", "/x.js")).body == b"x"


def test_every_asset_of_a_checkout_is_there() -> None:
    loaded = read_assets()
    assert set(ASSETS) == {"/client/bwmon.js"}
    assert set(ASSETS) | {"/", "/ui/index.html", "/ui/app.js"} <= set(loaded)
    assert all(isinstance(asset, LoadedAsset) for asset in loaded.values())
