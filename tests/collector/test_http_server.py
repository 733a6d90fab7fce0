"""The HTTP side of the TCP port on real loopback sockets: the ``Request`` routes get (query,
headers, peer), prefix routes, async routes, chunked streaming read back with an h11 client
(complete, truncated, failing before the first byte, HEAD), route errors, the per-source
connection limit, and the upgrade request as a WebSocket route sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import msgspec
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, open_websocket_url

from collector.http.server import (
    MAX_REQUEST_HEAD_BYTES,
    OPERATOR_SLOTS,
    BadRequest,
    Headers,
    HttpServer,
    HttpSettings,
    Request,
    Response,
    StreamedResponse,
    _is_loopback,
    parse_query,
)
from collector.wire import Wire, websocket_frame
from tests.helpers import wait_for


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the body ended as HTTP framing says, not cut off by a closed connection

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def fetch(
    port: int,
    target: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    local_address: str | None = None,
) -> Fetched:
    """One request with an h11 client, which checks the framing (content-length or chunks)."""
    client = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
    status, got, body, complete = 0, {}, b"", False
    async with stream:
        request = h11.Request(method=method, target=target, headers=[("host", "x"), *headers])
        await stream.send_all(client.send(request) + (client.send(h11.EndOfMessage()) or b""))
        with trio.fail_after(10):
            try:
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(bytes(await stream.receive_some()))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        got = {k.decode(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        complete = True
                        break
                    else:
                        break
            except h11.RemoteProtocolError:  # closed before the end of the body
                pass
    return Fetched(status, got, body, complete)


@dataclass
class Body:
    """A streamed body whose progress the test can see."""

    chunks: list[bytes]
    fail_after: int | None = None  # raise once this many chunks are out
    started: bool = False
    closed: bool = False
    log: list[str] = field(default_factory=list)

    async def generate(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for i, chunk in enumerate(self.chunks):
                if i == self.fail_after:
                    raise RuntimeError("injected failure midway")
                await trio.lowlevel.checkpoint()
                yield chunk
        finally:
            self.closed = True


@dataclass
class Server:
    port: int
    http: HttpServer
    bodies: dict[str, Body]
    release: trio.Event = field(default_factory=trio.Event)  # ends the requests to /hold


def echo(request: Request) -> Response:
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "thing": request.headers.get("X-THING"),
            "peer": request.peer,
            "id": request.path_id,
        },
    )


async def slow_echo(request: Request) -> Response:
    await trio.sleep(0.01)
    return echo(request)


def broken(_request: Request) -> Response:
    raise RuntimeError("injected route failure")


async def start(nursery: trio.Nursery, settings: HttpSettings | None = None) -> Server:
    bodies = {
        "ok": Body([b"hello ", b"", b"world"]),
        "big": Body([bytes([65 + i % 26]) * 1024 for i in range(500)]),
        "midway": Body([b"first,", b"second,", b"never"], fail_after=2),
        "at_once": Body([b"never"], fail_after=0),
        "head": Body([b"never"]),
    }

    def streamed(name: str) -> Any:
        def route(_request: Request) -> StreamedResponse:
            return StreamedResponse(
                bodies[name].generate(),
                "text/plain",
                headers=[("content-disposition", 'attachment; filename="x.txt"')],
            )

        return route

    release = trio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return echo(request)

    async def ws_peer(ws: WebSocketConnection, request: Request, wire: Wire) -> None:
        # The wire is the stream under this very connection: a frame written to it arrives.
        await wire.send_all(websocket_frame(b"through the wire", text=True))
        await ws.send_message(msgspec.json.encode([request.peer, dict(request.query)]).decode())

    http = HttpServer(
        http_routes={
            "/echo": echo,
            "/slow": slow_echo,
            "/broken": broken,
            "/crlf": lambda _r: Response.json(200, {}, [("x-note", "a\r\nset-cookie: injected=1")]),
            "/hold": hold,
            "/healthz": echo,
            "/items/{id}": echo,
            **{f"/stream/{name}": streamed(name) for name in bodies},
        },
        ws_routes={"/peer": ws_peer},
        settings=settings or HttpSettings(request_timeout_s=5),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return Server(listeners[0].socket.getsockname()[1], http, bodies, release)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start(nursery)


def test_query_follows_parse_qs_and_refuses_repeated_keys() -> None:
    assert parse_query("a=1&b=x%20y&c=&d+e=f+g&flag") == {
        "a": "1",
        "b": "x y",
        "c": "",
        "d e": "f g",
        "flag": "",
    }
    assert parse_query("") == {}
    with pytest.raises(BadRequest, match="'a' is given more than once"):
        parse_query("a=1&b=2&a=1")
    with pytest.raises(BadRequest, match="unreadable"):
        parse_query("a=%ff")
    with pytest.raises(BadRequest, match="unreadable"):
        parse_query("&".join(f"k{i}=v" for i in range(100)))


def test_headers_are_case_insensitive_and_repeats_are_joined() -> None:
    headers = Headers([(b"X-Thing", b"one"), (b"x-thing", b"two"), ("Accept", "text/csv")])
    assert headers["x-THING"] == "one, two"
    assert headers.get("accept") == "text/csv"
    assert "ACCEPT" in headers
    assert headers.get("authorization") is None
    assert len(headers) == 2
    assert "one" not in repr(headers)  # values may be credentials


async def test_routes_get_method_path_query_headers_and_peer(server: Server) -> None:
    got = await fetch(server.port, "/echo?a=1&b=x%20y&empty=", headers=[("X-Thing", "v")])
    assert got.status == 200
    assert got.complete
    assert got.json() == {
        "method": "GET",
        "path": "/echo",
        "query": {"a": "1", "b": "x y", "empty": ""},
        "thing": "v",
        "peer": "127.0.0.1",
        "id": None,
    }
    slow = await fetch(server.port, "/slow?x=1")
    assert slow.json()["query"] == {"x": "1"}


@pytest.mark.parametrize(
    ("target", "status", "error"),
    [
        ("/echo?a=1&a=2", 400, "'a' is given more than once"),
        ("/echo?a=%ff", 400, "unreadable query string"),
        ("/items/a%2Fb", 400, "must not contain '/'"),
        ("/items/%ff", 400, "not UTF-8"),
        ("/items/", 404, "no such path"),
        ("/items", 404, "no such path"),
        ("/items/a/b", 404, "no such path"),
        ("/broken", 500, "internal error"),
    ],
)
async def test_errors_are_json(server: Server, target: str, status: int, error: str) -> None:
    got = await fetch(server.port, target)
    assert got.status == status
    assert got.headers["content-type"] == "application/json"
    assert error in got.json()["error"]


async def test_a_target_that_is_not_ascii_is_400(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all("GET /echo?a=é HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400"
    assert b"error" in body  # h11 refuses it before our own check would


async def test_a_failing_route_is_counted_and_the_server_goes_on(server: Server) -> None:
    assert (await fetch(server.port, "/broken")).status == 500
    assert server.http.counters.response_errors == 1
    assert server.http.counters.connection_errors == 0
    assert (await fetch(server.port, "/echo")).status == 200


async def test_h11_refuses_a_header_that_would_inject_another(server: Server) -> None:
    # h11 writes the answer and validates it: a route's header holding a line break is a bug
    # of that route, which ends its connection (counted) without one byte of the answer.
    status, body = await raw_answer(server.port, b"GET /crlf HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (status, body) == (b"", b"")
    await wait_for(lambda: server.http.counters.connection_errors == 1)


async def raw_answer(port: int, data: bytes) -> tuple[bytes, bytes]:
    """The head and body of the answer to ``data``, as sent, up to the connection's end."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_prefix_route_gets_the_decoded_id(server: Server) -> None:
    got = await fetch(server.port, "/items/room%20%C3%A9%3F?x=1")
    assert got.status == 200
    assert got.json()["id"] == "room é?"
    assert got.json()["query"] == {"x": "1"}
    assert got.json()["path"] == "/items/room%20%C3%A9%3F"


def test_a_placeholder_must_end_the_route() -> None:
    with pytest.raises(ValueError, match="last segment"):
        HttpServer({"/items/{id}/x": echo}, {}, HttpSettings())


async def test_405_names_the_allowed_methods(server: Server) -> None:
    got = await fetch(server.port, "/echo", method="DELETE")
    assert got.status == 405
    assert got.headers["allow"] == "GET, HEAD"
    assert got.json() == {"error": "method not allowed"}


async def test_streamed_body_is_chunked_and_complete(server: Server) -> None:
    got = await fetch(server.port, "/stream/ok")
    assert got.status == 200
    assert got.complete
    assert got.body == b"hello world"
    assert got.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in got.headers
    assert got.headers["content-type"] == "text/plain"
    assert got.headers["content-disposition"] == 'attachment; filename="x.txt"'
    assert server.bodies["ok"].closed


async def test_a_large_stream_arrives_whole(server: Server) -> None:
    got = await fetch(server.port, "/stream/big")
    assert got.complete
    assert got.body == b"".join(server.bodies["big"].chunks)


async def test_a_stream_failing_midway_is_truncated_counted_and_closed(server: Server) -> None:
    got = await fetch(server.port, "/stream/midway")
    assert got.status == 200
    assert not got.complete  # no terminating chunk: the client cannot take it as whole
    assert got.body == b"first,second,"
    assert server.bodies["midway"].closed
    assert server.http.counters.response_errors == 1
    assert (await fetch(server.port, "/echo")).status == 200


async def test_a_stream_failing_before_its_first_chunk_is_a_500(server: Server) -> None:
    got = await fetch(server.port, "/stream/at_once")
    assert got.status == 500
    assert got.complete
    assert got.json() == {"error": "internal error"}
    assert server.http.counters.response_errors == 1
    assert server.bodies["at_once"].closed


async def test_head_of_a_stream_sends_headers_and_never_runs_it(server: Server) -> None:
    got = await fetch(server.port, "/stream/head", method="HEAD")
    assert got.status == 200
    assert got.body == b""
    assert got.headers["transfer-encoding"] == "chunked"
    assert not server.bodies["head"].started
    assert server.http.counters.requests_by_status == {200: 1}


async def test_connections_over_the_per_source_limit_get_503(nursery: trio.Nursery) -> None:
    server = await start(nursery, HttpSettings(max_connections_per_source=1, request_timeout_s=5))
    counters = server.http.counters
    idle = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with idle:
        await wait_for(lambda: counters.connections_open == 1)
        refused = await fetch(server.port, "/echo")
        assert refused.status == 503
        assert refused.json() == {"error": "too many connections from this address"}
        assert counters.connections_refused_per_source == 1
        assert counters.connections_refused == 0
        # Another source address (all of 127/8 is loopback) has its own allowance.
        other = await fetch(server.port, "/echo", local_address="127.0.0.2")
        assert other.status == 200
        assert other.json()["peer"] == "127.0.0.2"
    await wait_for(lambda: counters.connections_open == 0)
    assert server.http.open_by_source == {}
    assert (await fetch(server.port, "/echo")).status == 200
    health = counters.as_dict()
    assert health["connections_refused_per_source"] == 1


async def send_head(port: int, target: str, local_address: str | None = None) -> trio.SocketStream:
    """A connection that sent its request head and waits for the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return stream


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server closed ``stream`` (reads what it sent, up to the end)."""
    with trio.move_on_after(5):
        while await stream.receive_some():
            pass
        return True
    return False


async def test_connections_over_the_global_limit_get_a_json_503(nursery: trio.Nursery) -> None:
    server = await start(nursery, HttpSettings(max_connections=1, request_timeout_s=5))
    # The one connection sent its request: it is being served, never evicted.
    async with await send_head(server.port, "/hold"):
        await wait_for(lambda: server.http.counters.connections_open == 1)
        await trio.testing.wait_all_tasks_blocked()
        refused = await fetch(server.port, "/echo", local_address="127.0.0.2")
        server.release.set()
    assert refused.status == 503
    assert refused.json() == {"error": "too many connections"}
    assert server.http.counters.connections_refused == 1
    assert server.http.counters.connections_evicted == 0


async def test_at_the_limit_the_longest_idle_connection_is_evicted(nursery: trio.Nursery) -> None:
    # Connections that never send a request head cannot keep a client out: the one that has
    # waited longest is closed to admit the new one.
    server = await start(nursery, HttpSettings(max_connections=2, request_timeout_s=30))
    counters = server.http.counters
    first = await trio.open_tcp_stream("127.0.0.1", server.port)
    await wait_for(lambda: counters.connections_open == 1)
    second = await trio.open_tcp_stream("127.0.0.1", server.port)
    await wait_for(lambda: counters.connections_open == 2)
    async with first, second:
        answer = await fetch(server.port, "/echo", local_address="127.0.0.2")
        assert answer.status == 200
        assert await closed_by_server(first)
        assert counters.connections_evicted == 1
        assert counters.connections_refused == 0
        # The second idle connection is still open and may still send its request.
        await second.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while chunk := await second.receive_some():
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")


async def test_a_busy_server_gives_request_heads_less_time(nursery: trio.Nursery) -> None:
    settings = HttpSettings(max_connections=4, request_timeout_s=60, busy_head_timeout_s=0.2)
    server = await start(nursery, settings)
    counters = server.http.counters
    idle = [await trio.open_tcp_stream("127.0.0.1", server.port)]
    await wait_for(lambda: counters.connections_open == 1)
    await trio.sleep(0.3)  # past the busy timeout: only the full one applies while not busy
    assert counters.connections_open == 1
    # A third connection makes the server busy (3 of 4): every head wait is cut short, the
    # first connection's too, counted from its own start.
    idle += [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
    for stream in idle:
        assert await closed_by_server(stream)
        await stream.aclose()
    assert counters.head_timeouts == 3
    assert counters.connections_open == 0
    assert (await fetch(server.port, "/echo")).status == 200


async def test_loopback_health_is_answered_over_the_limits(nursery: trio.Nursery) -> None:
    settings = HttpSettings(max_connections=1, max_connections_per_source=1, request_timeout_s=5)
    server = await start(nursery, settings)
    counters = server.http.counters
    async with await send_head(server.port, "/hold"):
        await wait_for(lambda: counters.connections_open == 1)
        await trio.testing.wait_all_tasks_blocked()
        # Over the per-source limit (same address) and over the global one (another).
        assert (await fetch(server.port, "/healthz")).status == 200
        assert (await fetch(server.port, "/healthz", local_address="127.0.0.2")).status == 200
        refused = await fetch(server.port, "/echo")
        assert refused.status == 503
        assert refused.json() == {"error": "too many connections from this address"}
        server.release.set()
    assert counters.connections_operator == 2
    assert counters.connections_refused_per_source == 1
    assert counters.connections_refused == 0


async def test_operator_slots_evict_their_longest_idle_connection(nursery: trio.Nursery) -> None:
    settings = HttpSettings(max_connections=1, request_timeout_s=30, busy_head_timeout_s=30)
    server = await start(nursery, settings)
    counters = server.http.counters
    async with await send_head(server.port, "/hold"):
        await wait_for(lambda: counters.connections_open == 1)
        idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(OPERATOR_SLOTS)]
        await wait_for(lambda: counters.connections_open == 1 + OPERATOR_SLOTS)
        assert (await fetch(server.port, "/healthz")).status == 200
        # The longest waiting slot was closed with the 503 it would have had without it.
        answer = b""
        with trio.fail_after(5):
            while chunk := await idle[0].receive_some():
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert counters.connections_refused == 1
        assert counters.connections_evicted == 0
        for stream in idle:
            await stream.aclose()
        server.release.set()


def test_loopback_addresses() -> None:
    assert all(map(_is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(_is_loopback, ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "", "x"]))


async def raw_exchange(port: int, data: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def padded_head(size: int) -> bytes:
    """A GET /echo head of exactly ``size`` bytes."""
    start, end = b"GET /echo HTTP/1.1\r\nhost: x\r\nx-pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


async def test_a_request_head_may_take_16_kib_and_no_more(server: Server) -> None:
    assert MAX_REQUEST_HEAD_BYTES == 16 * 1024
    status, _ = await raw_exchange(server.port, padded_head(MAX_REQUEST_HEAD_BYTES))
    assert status == 200
    for size in (MAX_REQUEST_HEAD_BYTES + 1, MAX_REQUEST_HEAD_BYTES + 4000, 40_000):
        status, body = await raw_exchange(server.port, padded_head(size))
        assert status == 431, size
        assert msgspec.json.decode(body) == {"error": "request head larger than 16384 bytes"}


async def test_a_malformed_request_is_answered_without_echoing_it(server: Server) -> None:
    status, body = await raw_exchange(server.port, b"GARBAGE\x01 /secret-ish\r\n\r\n")
    assert status == 400
    assert msgspec.json.decode(body) == {"error": "malformed HTTP request: illegal request line"}
    status, body = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status == 400
    assert msgspec.json.decode(body) == {"error": "malformed HTTP request: illegal header line"}


async def test_a_websocket_route_is_given_its_upgrade_request_and_wire(server: Server) -> None:
    async with open_websocket_url(
        f"ws://127.0.0.1:{server.port}/peer?room=r1", disconnect_timeout=2
    ) as ws:
        with trio.fail_after(5):
            written = await ws.get_message()
            message = await ws.get_message()
        await ws._stream.aclose()
    assert written == "through the wire"
    assert msgspec.json.decode(message) == ["127.0.0.1", {"room": "r1"}]


class KeptAlive:
    """An h11 client on one connection, for several requests one after the other."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.client = h11.Connection(h11.CLIENT)

    async def get(self, target: str, *, keep_alive: bool = True) -> Fetched:
        if self.client.our_state is h11.DONE and self.client.their_state is h11.DONE:
            self.client.start_next_cycle()
        headers = [("host", "x")] + ([("connection", "keep-alive")] if keep_alive else [])
        request = h11.Request(method="GET", target=target, headers=headers)
        await self.stream.send_all(
            (self.client.send(request) or b"") + (self.client.send(h11.EndOfMessage()) or b"")
        )
        status, got, body = 0, {}, b""
        with trio.fail_after(5):
            while True:
                event = self.client.next_event()
                if event is h11.NEED_DATA:
                    self.client.receive_data(bytes(await self.stream.receive_some()))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                else:
                    assert isinstance(event, h11.EndOfMessage)
                    return Fetched(status, got, body, True)


async def test_a_client_that_asks_for_keep_alive_sends_request_after_request(
    server: Server,
) -> None:
    counters = server.http.counters
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        client = KeptAlive(stream)
        first = await client.get("/echo?n=1")
        second = await client.get("/stream/ok")
        third = await client.get("/echo?n=3", keep_alive=False)
        assert await closed_by_server(stream)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert first.json()["query"] == {"n": "1"}
    assert second.body == b"hello world"
    assert "connection" not in first.headers
    assert second.headers["transfer-encoding"] == "chunked"
    assert third.headers["connection"] == "close"
    assert counters.connections_total == 1
    assert counters.requests_by_status == {200: 3}


async def test_pipelined_requests_are_answered_in_order_up_to_the_bound(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, HttpSettings(request_timeout_s=5, max_requests_per_connection=3))
    head = "GET /echo?n={} HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all("".join(head.format(n) for n in range(4)).encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [answer.split(b" ", 1)[0] for answer in answers] == [b"200"] * 3  # not the fourth
    assert [
        msgspec.json.decode(answer.partition(b"\r\n\r\n")[2])["query"] for answer in answers
    ] == [
        {"n": "0"},
        {"n": "1"},
        {"n": "2"},
    ]
    assert [b"connection: close" in answer for answer in answers] == [False, False, True]


async def test_a_kept_alive_connection_is_closed_when_idle_for_keep_alive_s(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, HttpSettings(request_timeout_s=30, keep_alive_s=0.3))
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        assert (await KeptAlive(stream).get("/echo")).status == 200
        started = trio.current_time()
        assert await closed_by_server(stream)
        waited = trio.current_time() - started
    assert 0.25 <= waited < 5  # keep_alive_s, not request_timeout_s
    assert server.http.counters.head_timeouts == 0  # done, not late
    await wait_for(lambda: server.http.counters.connections_open == 0)


async def test_an_idle_kept_alive_connection_is_evicted_like_an_idle_new_one(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, HttpSettings(max_connections=2, request_timeout_s=30))
    counters = server.http.counters
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as kept:
        assert (await KeptAlive(kept).get("/echo")).status == 200
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as idle:
            await wait_for(lambda: counters.connections_open == 2)
            answer = await fetch(server.port, "/echo", local_address="127.0.0.2")
            assert answer.status == 200
            assert await closed_by_server(kept)  # it has waited longest for a request
            assert counters.connections_evicted == 1
            assert (await KeptAlive(idle).get("/echo", keep_alive=False)).status == 200
