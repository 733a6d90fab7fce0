"""WebSocket ingest session (``/ingest``): hello, then frames, with error replies and acks.

One session per connection (PROTOCOL.md §7):

- the first message must be a ``hello`` frame, within ``hello_timeout_s``; else close 1008
  with the counted reason code as the close reason, or ``hello expected`` (``no_hello``);
- the daemon answers ``welcome`` and numbers the following messages 1, 2, 3…;
- good frames go to the consumer's queue with the hello's ``boot``, which ``rtc`` frames
  without their own take (PROTOCOL.md §8.4); the session *waits* for room (backpressure on this
  one client, which TCP carries back to it) rather than dropping (UDP batches skip the queue:
  the UDP loop aggregates them as it reads them, and what it cannot read the kernel drops);
- each rejected frame gets an ``error`` reply (at most N per ack interval; the rest are counted
  and visible in the next ``ack``);
- frames over a rate limit (``SessionSettings.connection_rate`` for this connection,
  ``source_limiter`` for its peer address, shared with UDP) are rejected as ``rate_limited``
  like bad frames: counted, answered within the same reply budget; the session stays open;
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

from collector.auth import FORBIDDEN, Auth, Denied
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import RATE_LIMITED, Rate, SourceLimiter, TokenBucket, take_all
from collector.logs import get_logger
from protocol import (
    Decoded,
    Event,
    Frame,
    Hello,
    Limits,
    ProtocolError,
    RtcSample,
    decode_message,
)
from protocol.codec import TOO_LARGE
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome

log = get_logger("ingest.websocket")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
# The reason code counted for a session whose hello never came: no first message within the
# hello timeout, or one that decoded but is not one hello frame (PROTOCOL.md §6, §7.1).
NO_HELLO = "no_hello"
HELLO_EXPECTED = "hello expected"  # the close reason then

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
    # Rate limits (PROTOCOL.md §5.2); shared, mutable objects: a reload reconfigures them.
    connection_rate: Rate | None = None
    source_limiter: SourceLimiter | None = None  # per peer address, shared with UDP


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
        self.meeting: str | None = None  # the token's meeting: frames of others are refused
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
    out: trio.MemorySendChannel[tuple[list[Frame], str]],
    counters: TransportCounters,
    settings: SessionSettings,
    auth: Auth,
    source: str = "",
) -> None:
    """Run one accepted ``/ingest`` connection until it closes; ``auth`` checks the hello's
    token (PROTOCOL.md §7.8)."""
    conn = next(_session_ids)
    first: str | bytes | None = None
    with trio.move_on_after(settings.hello_timeout_s):
        try:
            first = await ws.get_message()
        except ConnectionClosed as exc:
            _count_close(exc, counters)
            return
    # The close reason is the counted reason code, or "hello expected" (PROTOCOL.md §7.1).
    if first is None:
        counters.reject(NO_HELLO)
        await ws.aclose(CLOSE_POLICY, HELLO_EXPECTED)
        return
    hello = _expect_hello(_as_bytes(first), settings.limits)
    if isinstance(hello, ProtocolError):
        counters.reject(hello.reason)
        await ws.aclose(CLOSE_POLICY, HELLO_EXPECTED if hello.reason == NO_HELLO else hello.reason)
        return
    claims = auth.admit(hello.token, "ingest")
    if isinstance(claims, Denied):
        counters.reject(claims.code)
        log.info("ingest_session_refused", conn=conn, code=claims.code, detail=claims.detail)
        await ws.aclose(CLOSE_POLICY, f"{claims.code}: {claims.detail}")
        return
    session = _Session(ws, text=isinstance(first, str))
    session.meeting = claims.meeting
    log.info(
        "ingest_session_open", conn=conn, kind=hello.kind, agent=hello.agent, scope=claims.meeting
    )
    welcome = Welcome(
        session=str(conn),
        ack_interval_s=settings.ack_interval_s,
        max_message_bytes=settings.limits.max_message_bytes,
        max_frames=settings.limits.max_frames_per_message,
    )
    try:
        await session.send(welcome)
    except ConnectionClosed as exc:  # gone (or refused, say a message too large) right away
        _count_close(exc, counters)
        log.info("ingest_session_closed", conn=conn, messages=0, accepted=0, rejected=0)
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_replies, session)
            nursery.start_soon(_ack_and_heartbeat, session, settings, nursery.cancel_scope)
            await _receive_frames(session, out, counters, settings, source, hello.boot)
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
    """The hello of a session's first message; else the decoder's first rejection in it, or
    ``no_hello`` when it decoded cleanly but holds anything but one hello frame (a batch of
    one hello is one hello)."""
    decoded = decode_message(data, limits)
    if decoded.errors:
        return decoded.errors[0]
    if len(decoded.frames) != 1 or not isinstance(decoded.frames[0], Hello):
        return ProtocolError(NO_HELLO, "the first message must be one hello frame")
    return decoded.frames[0]


def _count_close(exc: ConnectionClosed, counters: TransportCounters) -> None:
    """Count a connection that the client's message closed: too large (1009, sent by
    trio-websocket itself). A client that closes the connection is not counted."""
    if exc.reason is not None and exc.reason.code == CLOSE_TOO_BIG:
        counters.reject(TOO_LARGE)


async def _receive_frames(
    session: _Session,
    out: trio.MemorySendChannel[tuple[list[Frame], str]],
    counters: TransportCounters,
    settings: SessionSettings,
    source: str,
    boot: str,
) -> None:
    limits = settings.limits
    connection_rate, source_limiter = settings.connection_rate, settings.source_limiter
    connection_bucket = (
        TokenBucket(connection_rate, trio.current_time()) if connection_rate is not None else None
    )
    while True:
        try:
            message = await session.ws.get_message()
        except ConnectionClosed as exc:
            _count_close(exc, counters)
            return
        data = _as_bytes(message)
        msg = session.last_msg + 1
        decoded = decode_message(data, limits)
        counters.count(decoded, len(data))
        rejected = len(decoded.errors)  # frames: a whole-message rejection counts 1
        scope = session.meeting
        if scope is not None and decoded.frames:
            allowed = [_in_scope(frame, scope) for frame in decoded.frames]
            if not all(allowed):
                rejected += allowed.count(False)
                detail = f"the session's token is limited to meeting {scope!r}"
                decoded = _drop(decoded, allowed, FORBIDDEN, detail, counters)
        if decoded.frames:
            buckets = []
            if connection_bucket is not None and connection_bucket.rate.enabled:
                buckets.append(connection_bucket)
            if source_limiter is not None and source_limiter.enabled:
                buckets.append(source_limiter.bucket(source, trio.current_time()))
            wanted = len(decoded.frames)
            granted = take_all(buckets, wanted, trio.current_time()) if buckets else wanted
            if granted < wanted:
                rejected += wanted - granted
                detail = "over the daemon's frame rate limit for this connection or address"
                allowed = [position < granted for position in range(wanted)]
                decoded = _drop(decoded, allowed, RATE_LIMITED, detail, counters)
        frames, errors = decoded.frames, decoded.errors
        if frames:
            await out.send((frames, boot))
        # Only now is the message processed: an ack never names a message whose frames are
        # still waiting for room in the consumer's queue.
        session.last_msg = msg
        session.accepted += len(frames)
        if errors:
            session.rejected += rejected
            for error in errors:
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


def _drop(
    decoded: Decoded,
    allowed: list[bool],
    reason: str,
    detail: str,
    counters: TransportCounters,
) -> Decoded:
    """The message without its good frames that are not ``allowed`` (counted as ``reason``
    instead of accepted), and with an error for them (``_refused``)."""
    counters.withdraw(reason, allowed.count(False))
    frames = [frame for frame, ok in zip(decoded.frames, allowed, strict=True) if ok]
    return Decoded(frames, _refused(decoded, allowed, reason, detail))


def _refused(
    decoded: Decoded, allowed: list[bool], reason: str, detail: str
) -> list[ProtocolError]:
    """The message's errors plus one ``reason`` error per good frame not ``allowed``, at the
    frame's index in the message, in index order; or, when no frame is allowed, one for the
    whole message (index None: none of its frames was accepted, and a single unbatched frame
    has no index, PROTOCOL.md §6)."""
    if not any(allowed):
        return [*decoded.errors, ProtocolError(reason, detail, None)]
    bad = {error.index for error in decoded.errors}
    good_indexes = itertools.islice(
        (i for i in itertools.count() if i not in bad), len(decoded.frames)
    )
    refused = [
        ProtocolError(reason, detail, index)
        for index, ok in zip(good_indexes, allowed, strict=True)
        if not ok
    ]
    return sorted([*decoded.errors, *refused], key=lambda error: error.index or 0)


def _in_scope(frame: Frame, meeting: str) -> bool:
    """Whether a session whose token is limited to ``meeting`` may send ``frame`` (§7.8)."""
    if isinstance(frame, RtcSample | Event):
        return frame.meeting == meeting
    return isinstance(frame, Hello)


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
