"""The trio loop of the WebSocket ingest session (collector/ingest/websocket.py) over
in-memory streams, on a virtual clock: its timers (hello timeout, ack interval, heartbeat) and
its hand-off to the consumer, where an ack never names a message still waiting for room.
What the session decides is tested without a loop in test_ingest_session.py; the real
sockets in test_http_ws.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from collector.auth import Auth
from collector.consumer import SessionBatch
from collector.ingest.counters import TransportCounters
from collector.ingest.websocket import SessionSettings, serve_ingest_session
from protocol import Limits, encode_msgpack
from protocol.session import Ack, SessionMessage, Welcome
from tests.collector.test_http_ws import UPGRADE, client_frame
from tests.helpers import hello, rtc

replies = msgspec.msgpack.Decoder(SessionMessage)


@dataclass
class Loop:
    stream: trio.abc.Stream  # the client's end
    websocket: WebSocketConnection | None  # a trio-websocket client on it, unless raw
    counters: TransportCounters
    frames: trio.MemoryReceiveChannel[SessionBatch]
    ended: trio.Event  # the session's loop returned

    @property
    def client(self) -> WebSocketConnection:
        assert self.websocket is not None
        return self.websocket

    async def reply(self) -> SessionMessage:
        message = await self.client.get_message()
        assert isinstance(message, bytes)  # the hello came as MessagePack
        reply: SessionMessage = replies.decode(message)
        return reply


@asynccontextmanager
async def session_loop(
    settings: SessionSettings, queue: int = 10, client_queue: int = 16, raw_client: bool = False
) -> AsyncIterator[Loop]:
    """``serve_ingest_session`` on one end of an in-memory stream; on the other a
    trio-websocket client, or nothing (``raw_client``: the test writes and reads bytes)."""
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[SessionBatch](queue)
    server_stream, client_stream = trio.testing.memory_stream_pair()
    ended = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await wrap_server_stream(nursery, server_stream)
            ws = await request.accept()
            await serve_ingest_session(ws, send, counters, settings, Auth([]), "10.0.0.1")
            ended.set()

        nursery.start_soon(serve)
        client = None
        if not raw_client:
            client = await wrap_client_stream(
                nursery,
                client_stream,  # type: ignore[arg-type]
                "127.0.0.1",
                "/ingest",
                message_queue_size=client_queue,
            )
        yield Loop(client_stream, client, counters, receive, ended)
        nursery.cancel_scope.cancel()


async def test_no_hello_within_the_timeout_closes_1008_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SessionSettings(limits=Limits(), hello_timeout_s=5.0)
    async with session_loop(settings) as loop:
        start = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            await loop.reply()
        assert trio.current_time() - start == pytest.approx(5.0)
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "hello expected")
    assert loop.counters.rejected_by_reason == {"no_hello": 1}


async def test_acks_come_each_interval_and_only_when_something_changed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SessionSettings(limits=Limits(), ack_interval_s=1.0)
    async with session_loop(settings) as loop:
        await loop.client.send_message(encode_msgpack(hello()))
        assert isinstance(await loop.reply(), Welcome)
        opened = trio.current_time()
        for seq in range(1, 4):
            await loop.client.send_message(encode_msgpack(rtc(seq)))
        assert await loop.reply() == Ack(msg=3, accepted=3, rejected=0)
        assert trio.current_time() - opened == pytest.approx(1.0)
        with trio.move_on_after(10) as quiet:  # nothing changed: no ack
            await loop.reply()
        assert quiet.cancelled_caught
        await loop.client.send_message(encode_msgpack(rtc(4)))  # at 11 s
        assert await loop.reply() == Ack(msg=4, accepted=4, rejected=0)
        assert trio.current_time() - opened == pytest.approx(12.0)  # the next interval's end


async def test_an_ack_never_names_a_message_waiting_for_room_in_the_consumer_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SessionSettings(limits=Limits(), ack_interval_s=1.0)
    async with session_loop(settings, queue=0) as loop:  # no room until the consumer reads
        await loop.client.send_message(encode_msgpack(hello()))
        assert isinstance(await loop.reply(), Welcome)
        await loop.client.send_message(encode_msgpack([rtc(1), rtc(2)]))
        with trio.move_on_after(5) as waiting:  # the session waits; it acks nothing meanwhile
            await loop.reply()
        assert waiting.cancelled_caught
        frames, boot = await loop.frames.receive()
        assert (len(frames), boot) == (2, "test-boot")
        assert await loop.reply() == Ack(msg=1, accepted=2, rejected=0)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Opcode and payload of each (unmasked, short) frame the daemon sent after its 101."""
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    frames = []
    while data:
        size = data[1]
        assert size < 126
        frames.append((data[0] & 0x0F, data[2 : 2 + size]))
        data = data[2 + size :]
    return frames


async def test_a_client_that_answers_no_ping_is_closed_1011_after_the_pong_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SessionSettings(
        limits=Limits(), ack_interval_s=1.0, heartbeat_interval_s=15.0, heartbeat_timeout_s=10.0
    )
    # A client that sends its hello and never reads again.
    async with session_loop(settings, raw_client=True) as loop:
        await loop.stream.send_all(UPGRADE)
        received = b""
        while b"\r\n\r\n" not in received:
            received += await loop.stream.receive_some()
        await loop.stream.send_all(client_frame(encode_msgpack(hello())))
        opened = trio.current_time()
        await loop.ended.wait()
        # The first ping at 15 s, unanswered for 10 s; then 1 s for a closing handshake the
        # client never completes.
        assert trio.current_time() - opened == pytest.approx(26.0)
        while chunk := await loop.stream.receive_some():
            received += chunk
    frames = server_frames(received)
    assert [opcode for opcode, _ in frames] == [0x2, 0x9, 0x8]  # welcome, ping, close
    assert isinstance(replies.decode(frames[0][1]), Welcome)
    close = frames[2][1]
    assert (int.from_bytes(close[:2], "big"), close[2:]) == (1011, b"heartbeat timeout")
