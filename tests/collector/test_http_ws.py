"""The TCP port on real loopback sockets: HTTP routes, WebSocket ingest sessions, error
boundaries (an injected failure ends one connection, never the server), limits."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import msgspec
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    connect_websocket,
    open_websocket_url,
)

from collector.auth import Auth
from collector.consumer import SessionBatch
from collector.http.server import HttpServer, HttpSettings, Request, Response
from collector.ingest.counters import TransportCounters
from collector.ingest.websocket import SessionSettings, serve_ingest_session
from collector.wire import Wire
from protocol import Limits, encode_json, encode_msgpack
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome
from tests.helpers import hello, rtc, wait_for

replies_json = msgspec.json.Decoder(SessionMessage)
replies_msgpack = msgspec.msgpack.Decoder(SessionMessage)


@dataclass
class Server:
    port: int
    http: HttpServer
    counters: TransportCounters
    frames: trio.MemoryReceiveChannel[SessionBatch]

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


async def _boom(_ws: WebSocketConnection, _request: Request, _wire: Wire) -> None:
    raise RuntimeError("injected failure")


async def start_server(
    nursery: trio.Nursery,
    session: SessionSettings | None = None,
    http_settings: HttpSettings | None = None,
    auth: Auth | None = None,
) -> Server:
    counters = TransportCounters()
    ingest_auth = auth or Auth([])
    send, receive = trio.open_memory_channel[SessionBatch](100)
    settings = session or SessionSettings(
        limits=Limits(max_message_bytes=4096), ack_interval_s=0.05
    )

    async def ingest(ws: WebSocketConnection, _request: Request, _wire: Wire) -> None:
        await serve_ingest_session(ws, send, counters, settings, ingest_auth)

    http = HttpServer(
        http_routes={"/healthz": lambda _r: Response.json(200, {"status": "ok"})},
        ws_routes={"/ingest": ingest, "/boom": _boom},
        settings=http_settings or HttpSettings(max_ws_message_bytes=4096, request_timeout_s=2),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return Server(listeners[0].socket.getsockname()[1], http, counters, receive)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start_server(nursery)


@asynccontextmanager
async def open_ws(url: str, message_queue_size: int = 16) -> AsyncIterator[WebSocketConnection]:
    """``open_websocket_url`` that also closes the TCP stream when the *server* closed first
    (trio-websocket 0.12's client skips that and leaks the socket), and gives up the closing
    handshake after 2 s instead of 60 (a client that stopped reading never completes it)."""
    async with open_websocket_url(
        url, message_queue_size=message_queue_size, disconnect_timeout=2
    ) as ws:
        try:
            yield ws
        finally:
            await ws._stream.aclose()


async def http_get(port: int, raw_request: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw_request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def next_reply(ws: WebSocketConnection) -> SessionMessage:
    with trio.fail_after(5):
        message = await ws.get_message()
    reply: SessionMessage
    if isinstance(message, str):
        reply = replies_json.decode(message)
    else:
        reply = replies_msgpack.decode(message)
    return reply


async def close_reason(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Read replies until the daemon closes the connection; return the close code and reason."""
    while True:
        try:
            await next_reply(ws)
        except ConnectionClosed as closed:
            reason = closed.reason
            break
    assert reason is not None
    code: int = reason.code
    return code, reason.reason


async def close_code(ws: WebSocketConnection) -> int:
    return (await close_reason(ws))[0]


async def test_json_session_welcome_errors_and_acks(server: Server) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_json(hello()).decode())
        welcome = await next_reply(ws)
        assert isinstance(welcome, Welcome)
        assert welcome.max_message_bytes == 4096
        batch = b'[%s, {"t":"rtc","m":"m1"}, %s]' % (encode_json(rtc(1)), encode_json(rtc(2)))
        await ws.send_message(batch.decode())
        error = await next_reply(ws)
        assert isinstance(error, ErrorReply)
        assert (error.msg, error.index, error.reason) == (1, 1, "missing_field")
        ack = await next_reply(ws)
        assert ack == Ack(msg=1, accepted=2, rejected=1)
    frames, boot = server.frames.receive_nowait()
    assert [getattr(f, "seq", None) for f in frames] == [1, 2]
    assert boot == "test-boot"  # the hello's, for rtc frames without their own
    assert server.counters.frames_accepted == 2  # the session's hello is not a data frame
    assert server.counters.rejected_by_reason == {"missing_field": 1}


async def test_msgpack_session_replies_in_msgpack(server: Server) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_msgpack(hello()))
        first = await ws.get_message()
        assert isinstance(first, bytes)
        for seq in range(1, 4):
            await ws.send_message(encode_msgpack(rtc(seq)))
        while (reply := await next_reply(ws)) != Ack(msg=3, accepted=3, rejected=0):
            assert isinstance(reply, Ack)


@pytest.mark.parametrize("text", [True, False], ids=["json", "msgpack"])
async def test_a_hello_with_null_version_and_kind_opens_the_session(
    server: Server, text: bool
) -> None:
    # PROTOCOL.md §3.2: null for an optional field means absent (hello.v 1, kind "other").
    hello_map = {"t": "hello", "boot": "b-1", "v": None, "kind": None}
    async with open_ws(server.url("/ingest")) as ws:
        if text:
            await ws.send_message(msgspec.json.encode(hello_map).decode())
        else:
            await ws.send_message(msgspec.msgpack.encode(hello_map))
        welcome = await next_reply(ws)
        assert isinstance(welcome, Welcome)
    assert server.counters.rejected_by_reason == {}


HELLO_EXPECTED = (1008, "hello expected")


@pytest.mark.parametrize(
    ("first", "close", "counted"),
    [
        # valid frames, but not exactly one hello: PROTOCOL.md §7.1's "hello expected"
        pytest.param(encode_msgpack(rtc(1)), HELLO_EXPECTED, "no_hello", id="rtc"),
        pytest.param(encode_json(rtc(1)).decode(), HELLO_EXPECTED, "no_hello", id="rtc-text"),
        pytest.param(encode_msgpack([hello(), rtc(1)]), HELLO_EXPECTED, "no_hello", id="batch"),
        pytest.param(encode_msgpack([hello(), hello()]), HELLO_EXPECTED, "no_hello", id="2-hellos"),
        pytest.param(b"\x90", HELLO_EXPECTED, "no_hello", id="empty-batch"),
        # what the decoder rejects: the reason code of its (first) rejection
        pytest.param("{not json", (1008, "malformed"), "malformed", id="malformed"),
        pytest.param('{"t":"hello"}', (1008, "missing_field"), "missing_field", id="missing"),
        pytest.param(
            '{"t":"hello","boot":"b","v":0}', (1008, "out_of_range"), "out_of_range", id="range"
        ),
        pytest.param(
            b'[{"t":"hello","boot":"b"},{"t":"rtc"}]',
            (1008, "missing_field"),
            "missing_field",
            id="batch-with-a-bad-frame",
        ),
    ],
)
async def test_a_first_message_that_is_not_one_hello_closes_with_its_reason(
    server: Server, first: str | bytes, close: tuple[int, str], counted: str
) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(first)
        assert await close_reason(ws) == close
    assert server.counters.rejected_by_reason == {counted: 1}
    assert server.counters.frames_rejected == 1


async def test_a_batch_of_one_hello_opens_the_session(server: Server) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_msgpack([hello()]))
        assert isinstance(await next_reply(ws), Welcome)


async def test_silent_client_is_closed_after_hello_timeout(nursery: trio.Nursery) -> None:
    settings = SessionSettings(limits=Limits(), hello_timeout_s=0.2)
    server = await start_server(nursery, session=settings)
    async with open_ws(server.url("/ingest")) as ws:
        assert await close_reason(ws) == HELLO_EXPECTED
    assert server.counters.rejected_by_reason == {"no_hello": 1}


async def test_a_client_that_closes_before_its_hello_is_not_counted(server: Server) -> None:
    async with open_ws(server.url("/ingest")):
        pass
    await wait_for(lambda: server.http.counters.connections_open == 0)
    assert server.counters.rejected_by_reason == {}
    assert server.http.counters.connection_errors == 0


async def test_an_oversize_first_message_closes_with_1009_and_is_counted(server: Server) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(b"x" * 5000)
        code = await close_code(ws)
    assert code == 1009
    await wait_for(lambda: bool(server.counters.rejected_by_reason))
    assert server.counters.rejected_by_reason == {"too_large": 1}
    assert server.http.counters.connection_errors == 0


async def test_oversize_message_closes_with_1009_and_is_counted(server: Server) -> None:
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_msgpack(hello()))
        await next_reply(ws)
        await ws.send_message(b"x" * 5000)
        code = await close_code(ws)
    assert code == 1009
    await wait_for(lambda: bool(server.counters.rejected_by_reason))
    assert server.counters.rejected_by_reason == {"too_large": 1}


async def test_injected_failure_ends_only_its_connection(server: Server) -> None:
    with pytest.raises(ConnectionClosed):
        async with open_ws(server.url("/boom")) as ws:
            await ws.get_message()
    await wait_for(lambda: server.http.counters.connection_errors == 1)
    # The server still serves HTTP and WebSocket.
    status, _ = await http_get(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert status == 200
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_msgpack(hello()))
        assert isinstance(await next_reply(ws), Welcome)


async def test_consumer_failure_closes_the_session_with_1011(server: Server) -> None:
    await server.frames.aclose()  # the consumer is gone: sending frames now fails
    async with open_ws(server.url("/ingest")) as ws:
        await ws.send_message(encode_msgpack(hello()))
        await next_reply(ws)
        await ws.send_message(encode_msgpack(rtc(1)))
        code = await close_code(ws)
    assert code == 1011
    await wait_for(lambda: server.http.counters.connection_errors == 1)
    status, _ = await http_get(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert status == 200


async def test_client_that_stops_reading_is_dropped_by_heartbeat(nursery: trio.Nursery) -> None:
    settings = SessionSettings(
        limits=Limits(), ack_interval_s=0.02, heartbeat_interval_s=0.1, heartbeat_timeout_s=0.2
    )
    server = await start_server(nursery, session=settings)
    # A client whose reader stalls never completes a closing handshake either, so it lives in
    # a nursery this test cancels rather than in open_websocket_url (which would wait 60 s).
    async with trio.open_nursery() as client:
        ws = await connect_websocket(
            client, "127.0.0.1", server.port, "/ingest", use_ssl=False, message_queue_size=1
        )
        await ws.send_message(encode_msgpack(hello()))
        # Keep sending (acks pile up in the client's 1-message queue) and never read again: the
        # client's reader blocks, pongs stop, the daemon closes the connection.
        with trio.fail_after(10):
            while server.http.counters.connections_open:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(encode_msgpack(rtc(1)))
                await trio.sleep(0.02)
        await ws._stream.aclose()
        client.cancel_scope.cancel()
    assert server.http.counters.connection_errors == 0


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200),
        (b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200),
        (b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n", 404),
        (b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n", 405),
        (b"GET /ingest HTTP/1.1\r\nhost: x\r\n\r\n", 426),
        (b"\x00\x01 not http at all\r\n\r\n", 400),
    ],
)
async def test_http_answers(server: Server, request_bytes: bytes, status: int) -> None:
    got, body = await http_get(server.port, request_bytes)
    assert got == status
    if status != 200:
        assert b"error" in body
    elif request_bytes.startswith(b"HEAD"):
        assert body == b""


async def test_connections_over_the_limit_get_503(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, http_settings=HttpSettings(max_connections=1))
    async with open_ws(server.url("/ingest")) as ws:  # a live session is never evicted
        await ws.send_message(encode_msgpack(hello()))
        assert isinstance(await next_reply(ws), Welcome)
        status, _ = await http_get(server.port, b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 503
        # The local operator still reads the daemon's health.
        status, _ = await http_get(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 200
    assert server.http.counters.connections_refused == 1


UPGRADE = (
    b"GET /ingest HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


def client_frame(payload: bytes, opcode: int = 0x2, declared: int | None = None) -> bytes:
    """A masked client frame (all-zero mask), its length field saying ``declared``."""
    size = len(payload) if declared is None else declared
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


async def upgraded(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE)
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 101 ")
    return stream


async def server_close_frame(stream: trio.SocketStream) -> tuple[int, bytes]:
    """Read up to the server's close frame: its code and reason (within 3 s)."""
    data = b""
    with trio.fail_after(3):
        while True:
            data += await stream.receive_some()
            while len(data) >= 2 and len(data) >= 2 + data[1]:  # server frames: < 126 bytes
                opcode, size = data[0] & 0x0F, data[1]
                if opcode == 0x8:
                    return int.from_bytes(data[2:4], "big"), data[4 : 2 + size]
                data = data[2 + size :]


def reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_a_client_that_drops_during_the_handshake_is_not_an_error(server: Server) -> None:
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(UPGRADE)
        reset(stream)  # gone before the daemon's 101
        await stream.aclose()
    await wait_for(lambda: server.http.counters.connections_total == 3)
    await wait_for(lambda: server.http.counters.connections_open == 0)
    assert server.http.counters.connection_errors == 0
    assert server.counters.rejected_by_reason == {}


@pytest.mark.parametrize("before", ["nothing", "hello"])
@pytest.mark.parametrize("split", [False, True])
async def test_a_frame_declaring_2_62_bytes_is_refused_at_its_header(
    server: Server, before: str, split: bool
) -> None:
    stream = await upgraded(server.port)
    async with stream:
        if before == "hello":
            await stream.send_all(client_frame(encode_msgpack(hello())))
        header = client_frame(b"", declared=1 << 62)
        if split:  # the header in two reads, the first not enough to know the length
            await stream.send_all(header[:5])
            await trio.testing.wait_all_tasks_blocked()  # the server read it and waits for more
            await stream.send_all(header[5:])
        else:
            await stream.send_all(header + b"x" * 1000)
        code, reason = await server_close_frame(stream)
    assert code == 1009
    assert reason == b"message larger than 4096 bytes"
    await wait_for(lambda: server.http.counters.connections_open == 0)
    assert server.counters.rejected_by_reason == {"too_large": 1}
    assert server.http.counters.connection_errors == 0


async def test_frames_sent_with_the_upgrade_request_are_read(server: Server) -> None:
    # Bytes that arrive with the request head are the client's first frames (wsproto would
    # drop them): a hello sent at once opens the session.
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(UPGRADE + client_frame(encode_msgpack(hello())))
        data = b""
        with trio.fail_after(3):
            while b"welcome" not in data:
                data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 101 ")


async def test_a_kept_alive_connection_may_upgrade_on_its_next_request(server: Server) -> None:
    # The upgrade request and the first frame come pipelined behind a plain request: the
    # WebSocket handshake gets this request's bytes only, and the frame after them.
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        plain = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n"
        await stream.send_all(plain + UPGRADE + client_frame(encode_msgpack(hello())))
        data = b""
        with trio.fail_after(3):
            while b"welcome" not in data:
                data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n\r\nHTTP/1.1 101 " in data.replace(b'{"status":"ok"}\n', b"")
    assert server.http.counters.connections_total == 1


@pytest.mark.parametrize("declared", [5000, 1 << 62])
async def test_an_oversize_frame_sent_with_the_upgrade_request_is_counted(
    server: Server, declared: int
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(UPGRADE + client_frame(b"x" * 100, declared=declared))
        head = b""
        with trio.fail_after(3):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
        assert head.startswith(b"HTTP/1.1 101 ")
    await wait_for(lambda: server.http.counters.connections_open == 0)
    assert server.counters.rejected_by_reason == {"too_large": 1}
    assert server.http.counters.connection_errors == 0


async def test_the_frame_guard_passes_every_byte_of_good_frames() -> None:
    frames = [
        client_frame(b"a" * n, opcode)
        for n, opcode in [(0, 2), (1, 1), (125, 2), (126, 2), (4096, 2), (10, 9), (300, 0)]
    ]
    data = b"".join(frames)
    for step in (1, 2, 3, 7, 13, 14, 4096, len(data)):
        wire = Wire(trio.testing.MemorySendStream(), b"", max_frame_bytes=4096)  # type: ignore[arg-type]
        passed = b"".join(bytes(wire._guard(data[i : i + step])) for i in range(0, len(data), step))
        assert passed == data, step
        assert not wire.too_large
    wire = Wire(trio.testing.MemorySendStream(), b"", max_frame_bytes=4096)  # type: ignore[arg-type]
    passed = bytes(wire._guard(frames[0] + client_frame(b"x" * 4097)))
    assert passed.startswith(frames[0])
    close = passed[len(frames[0]) :]
    assert close[0] == 0x88  # a close frame follows, masked as from a client
    assert close[1] & 0x80
    assert wire.too_large


def test_h11_is_the_parser() -> None:
    # The server's request parsing is h11's; the bound that protects memory is ours.
    from collector.http import server

    assert server.MAX_REQUEST_HEAD_BYTES <= 64 * 1024
    assert h11.SERVER is not None
