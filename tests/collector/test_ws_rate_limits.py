"""WebSocket ingest over its limits, on real loopback sockets: frames over the connection's or
the source address's rate get ``rate_limited`` error replies and are counted; the session stays
open and its other frames are accepted."""

from __future__ import annotations

from dataclasses import dataclass

import trio
from trio_websocket import WebSocketConnection

from collector.auth import Auth
from collector.consumer import SessionBatch
from collector.http.server import HttpServer, HttpSettings, Request
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import Rate, SourceLimiter
from collector.ingest.websocket import SessionSettings, serve_ingest_session
from collector.wire import Wire
from protocol import Frame, Limits, encode_msgpack
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome
from tests.collector.test_http_ws import next_reply, open_ws
from tests.helpers import hello, http_sample, rtc

# Rates low enough that a test's run time adds no noticeable allowance: bursts decide.
SLOW = 0.01


@dataclass
class Server:
    port: int
    counters: TransportCounters
    frames: trio.MemoryReceiveChannel[SessionBatch]

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ingest"


async def start_server(nursery: trio.Nursery, settings: SessionSettings) -> Server:
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[SessionBatch](100)

    async def ingest(ws: WebSocketConnection, request: Request, _wire: Wire) -> None:
        await serve_ingest_session(ws, send, counters, settings, Auth([]), request.peer)

    http = HttpServer(
        http_routes={},
        ws_routes={"/ingest": ingest},
        settings=HttpSettings(max_ws_message_bytes=1 << 16, request_timeout_s=2),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return Server(listeners[0].socket.getsockname()[1], counters, receive)


async def replies_until_ack(ws: WebSocketConnection, msg: int) -> list[SessionMessage]:
    """Every reply up to the first ack that names message ``msg``."""
    replies: list[SessionMessage] = []
    while True:
        reply = await next_reply(ws)
        replies.append(reply)
        if isinstance(reply, Ack) and reply.msg == msg:
            return replies


def drain(frames: trio.MemoryReceiveChannel[SessionBatch]) -> list[Frame]:
    out: list[Frame] = []
    while True:
        try:
            out += frames.receive_nowait()[0]
        except trio.WouldBlock:
            return out


async def test_frames_over_the_connection_rate_get_error_replies(nursery: trio.Nursery) -> None:
    settings = SessionSettings(
        limits=Limits(max_message_bytes=1 << 16),
        ack_interval_s=0.05,
        connection_rate=Rate(SLOW, burst=3),
    )
    server = await start_server(nursery, settings)
    async with open_ws(server.url()) as ws:
        await ws.send_message(encode_msgpack(hello()))
        assert isinstance(await next_reply(ws), Welcome)
        # message 1: five good frames and one bad one (index 1); three fit the allowance
        bad = {"t": "rtc", "m": "m1"}
        await ws.send_message(
            encode_msgpack([rtc(1), bad, rtc(2), rtc(3), rtc(4), rtc(5)])  # type: ignore[list-item]
        )
        # message 2: the allowance is spent; the session is still open
        await ws.send_message(encode_msgpack(http_sample()))
        replies = await replies_until_ack(ws, 2)
    errors = [(r.msg, r.index, r.reason) for r in replies if isinstance(r, ErrorReply)]
    assert errors == [
        (1, 1, "missing_field"),
        (1, 4, "rate_limited"),
        (1, 5, "rate_limited"),
        (2, None, "rate_limited"),
    ]
    assert replies[-1] == Ack(msg=2, accepted=3, rejected=4)
    assert [getattr(f, "seq", None) for f in drain(server.frames)] == [1, 2, 3]
    assert server.counters.frames_accepted == 3
    assert server.counters.rejected_by_reason == {"missing_field": 1, "rate_limited": 3}


async def test_the_source_limit_is_shared_by_connections_from_one_address(
    nursery: trio.Nursery,
) -> None:
    limiter = SourceLimiter(per_s=SLOW, burst=4)
    settings = SessionSettings(
        limits=Limits(max_message_bytes=1 << 16), ack_interval_s=0.05, source_limiter=limiter
    )
    server = await start_server(nursery, settings)
    async with open_ws(server.url()) as first, open_ws(server.url()) as second:
        for ws in (first, second):
            await ws.send_message(encode_msgpack(hello()))
            assert isinstance(await next_reply(ws), Welcome)
        await first.send_message(encode_msgpack([rtc(1), rtc(2), rtc(3)]))
        assert (await replies_until_ack(first, 1))[-1] == Ack(msg=1, accepted=3, rejected=0)
        await second.send_message(encode_msgpack([rtc(4), rtc(5)]))
        replies = await replies_until_ack(second, 1)
        # the session goes on: once the limit is raised (a reload), its frames pass again
        limiter.configure(1000, 1000)
        await second.send_message(encode_msgpack(rtc(6)))
        later = await replies_until_ack(second, 2)
    errors = [(r.index, r.reason) for r in replies if isinstance(r, ErrorReply)]
    assert errors == [(1, "rate_limited")]
    assert replies[-1] == Ack(msg=1, accepted=1, rejected=1)
    assert later[-1] == Ack(msg=2, accepted=2, rejected=1)
    assert limiter.tracked == 1  # both connections came from 127.0.0.1
    assert [getattr(f, "seq", None) for f in drain(server.frames)] == [1, 2, 3, 4, 6]
    assert server.counters.rejected_by_reason == {"rate_limited": 1}
