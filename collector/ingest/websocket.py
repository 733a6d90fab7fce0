"""WebSocket ingest session (``/ingest``): hello, then frames, with error replies and acks.

One session per connection (PROTOCOL.md §7):

- the first message must be a ``hello`` frame, within ``hello_timeout_s`` (else close 1008);
- the daemon answers ``welcome`` and numbers the following messages 1, 2, 3…;
- good frames go to the consumer's queue; unlike UDP the session *waits* for room (backpressure
  on this one client, which TCP carries back to it) rather than dropping;
- each rejected frame gets an ``error`` reply (at most N per ack interval; the rest are counted
  and visible in the next ``ack``);
- every ack interval, if anything changed, an ``ack`` with the last processed message number;
- the daemon pings every heartbeat interval and closes a connection whose pong does not come.

Replies go through a small bounded queue to a sender task, so a client that does not read
never stalls its own receive loop, let alone anyone else's. Errors of this session end this
session only; the HTTP server's per-connection boundary catches anything that escapes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from collector.ingest.counters import TransportCounters
from collector.logs import get_logger
from protocol import Frame, Hello, Limits, ProtocolError, decode_message
from protocol.codec import NOT_A_FRAME, TOO_LARGE
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome

log = get_logger("ingest.websocket")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

_REPLY_QUEUE = 256
_session_ids = itertools.count(1)
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class SessionSettings:
    limits: Limits
    hello_timeout_s: float = 5.0
    heartbeat_interval_s: float = 15.0
    heartbeat_timeout_s: float = 10.0
    ack_interval_s: float = 1.0
    max_error_replies_per_interval: int = 100


class _Session:
    """State of one connection; the three tasks below share it."""

    def __init__(self, ws: WebSocketConnection, text: bool) -> None:
        self.ws = ws
        self.text = text
        self.last_msg = 0
        self.accepted = 0
        self.rejected = 0
        self.acked: tuple[int, int, int] = (0, 0, 0)
        self.error_budget = 0
        self.close: tuple[int, str] = (CLOSE_NORMAL, "")
        send, receive = trio.open_memory_channel[SessionMessage](_REPLY_QUEUE)
        self.replies_in = send
        self.replies_out = receive

    def reply(self, message: SessionMessage) -> None:
        # When the client is not reading, replies are dropped; acks carry the totals anyway.
        with contextlib.suppress(trio.WouldBlock):
            self.replies_in.send_nowait(message)

    async def send(self, message: SessionMessage) -> None:
        if self.text:
            await self.ws.send_message(_json.encode(message).decode())
        else:
            await self.ws.send_message(_msgpack.encode(message))


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


async def serve_ingest_session(
    ws: WebSocketConnection,
    out: trio.MemorySendChannel[list[Frame]],
    counters: TransportCounters,
    settings: SessionSettings,
) -> None:
    """Run one accepted ``/ingest`` connection until it closes."""
    conn = next(_session_ids)
    first: str | bytes | None = None
    with trio.move_on_after(settings.hello_timeout_s):
        first = await ws.get_message()
    if first is None:
        counters.reject("no_hello")
        await ws.aclose(CLOSE_POLICY, "hello expected")
        return
    hello = _expect_hello(_as_bytes(first), settings.limits)
    if isinstance(hello, ProtocolError):
        counters.reject(hello.reason)
        await ws.aclose(CLOSE_POLICY, f"first message must be a hello frame: {hello.reason}")
        return
    session = _Session(ws, text=isinstance(first, str))
    log.info("ingest_session_open", conn=conn, kind=hello.kind, agent=hello.agent)
    await session.send(
        Welcome(
            session=str(conn),
            ack_interval_s=settings.ack_interval_s,
            max_message_bytes=settings.limits.max_message_bytes,
            max_frames=settings.limits.max_frames_per_message,
        )
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_replies, session)
            nursery.start_soon(_ack_and_heartbeat, session, settings, nursery.cancel_scope)
            await _receive_frames(session, out, counters, settings)
            nursery.cancel_scope.cancel()
    except BaseException:
        shutting_down = trio.current_effective_deadline() == -math.inf
        session.close = (
            (CLOSE_GOING_AWAY, "daemon shutting down")
            if shutting_down
            else (CLOSE_INTERNAL, "internal error")
        )
        raise
    finally:
        log.info(
            "ingest_session_closed",
            conn=conn,
            messages=session.last_msg,
            accepted=session.accepted,
            rejected=session.rejected,
        )
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await ws.aclose(*session.close)


def _expect_hello(data: bytes, limits: Limits) -> Hello | ProtocolError:
    decoded = decode_message(data, limits)
    if decoded.errors:
        return decoded.errors[0]
    if len(decoded.frames) != 1 or not isinstance(decoded.frames[0], Hello):
        return ProtocolError(NOT_A_FRAME, "the first message must be one hello frame")
    return decoded.frames[0]


async def _receive_frames(
    session: _Session,
    out: trio.MemorySendChannel[list[Frame]],
    counters: TransportCounters,
    settings: SessionSettings,
) -> None:
    limits = settings.limits
    while True:
        try:
            message = await session.ws.get_message()
        except ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == CLOSE_TOO_BIG:
                counters.reject(TOO_LARGE)
            return
        data = _as_bytes(message)
        msg = session.last_msg + 1
        decoded = decode_message(data, limits)
        counters.count(decoded, len(data))
        if decoded.frames:
            await out.send(decoded.frames)
        # Only now is the message processed: an ack never names a message whose frames are
        # still waiting for room in the consumer's queue.
        session.last_msg = msg
        session.accepted += len(decoded.frames)
        if decoded.errors:
            session.rejected += len(decoded.errors)
            for error in decoded.errors:
                if session.error_budget >= settings.max_error_replies_per_interval:
                    break
                session.error_budget += 1
                session.reply(
                    ErrorReply(
                        msg=msg,
                        index=error.index,
                        reason=error.reason,
                        detail=error.detail,
                    )
                )


async def _send_replies(session: _Session) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in session.replies_out:
            await session.send(message)


async def _ack_and_heartbeat(
    session: _Session, settings: SessionSettings, scope: trio.CancelScope
) -> None:
    """Send acks every ack interval and a ping every heartbeat interval; a missing pong ends
    the session."""
    next_ping = trio.current_time() + settings.heartbeat_interval_s
    while True:
        await trio.sleep(settings.ack_interval_s)
        session.error_budget = 0
        state = (session.last_msg, session.accepted, session.rejected)
        if state != session.acked:
            session.acked = state
            session.reply(Ack(msg=state[0], accepted=state[1], rejected=state[2]))
        if trio.current_time() >= next_ping:
            with trio.move_on_after(settings.heartbeat_timeout_s) as ping_scope:
                try:
                    await session.ws.ping()
                except ConnectionClosed:
                    return
            if ping_scope.cancelled_caught:
                log.info("ingest_heartbeat_timeout")
                session.close = (CLOSE_INTERNAL, "heartbeat timeout")
                scope.cancel()
                return
            next_ping = trio.current_time() + settings.heartbeat_interval_s
