"""The trio loop of a WebSocket ingest session (``/ingest``): reads messages, hands frames to
the consumer, sends replies, pings and closes. What the protocol says about them (PROTOCOL.md
§7: hello and welcome, numbering, acks, the meeting scope, rate limits, the error-reply
budget, close codes) is decided by ``collector.ingest.session.IngestSession``; this module
only does the I/O it asks for, and owns the timers:

- the hello must come within ``hello_timeout_s``;
- good frames go to the consumer's queue with the hello's ``boot``, which ``rtc`` frames
  without their own take (PROTOCOL.md §8.4); the loop *waits* for room (backpressure on this
  one client, which TCP carries back to it) rather than dropping (UDP batches skip the queue:
  the UDP loop aggregates them as it reads them, and what it cannot read the kernel drops);
  only then is the message processed, so an ack never names a message still waiting there;
- every ack interval the session is ticked (an ``ack`` if anything changed, a ping when due);
  a ping whose pong does not come in time closes the connection.

Replies go through a small bounded queue to a sender task, so a client that does not read
never stalls its own receive loop, let alone anyone else's. Errors of this session end this
session only; the HTTP server's per-connection boundary catches anything that escapes.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from collector.auth import Auth
from collector.ingest.counters import TransportCounters
from collector.ingest.session import NO_HELLO, Close, IngestSession, SessionSettings
from collector.logs import get_logger
from protocol import Frame
from protocol.session import SessionMessage

# The session's settings and the no-hello reason code, where callers of the loop find them.
__all__ = ["NO_HELLO", "SessionSettings", "serve_ingest_session"]

log = get_logger("ingest.websocket")

_REPLY_QUEUE = 256
_session_ids = itertools.count(1)


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
    session = IngestSession(
        settings, counters, lambda token: auth.admit(token, "ingest"), str(conn), source
    )
    first: str | bytes | None = None
    with trio.move_on_after(settings.hello_timeout_s):
        try:
            first = await ws.get_message()
        except ConnectionClosed as exc:
            session.peer_closed(_close_code(exc))
            return
    opened = session.no_hello() if first is None else session.hello(first, trio.current_time())
    if isinstance(opened, Close):
        if session.denied is not None:
            denied = session.denied
            log.info("ingest_session_refused", conn=conn, code=denied.code, detail=denied.detail)
        await ws.aclose(opened.code, opened.reason)
        return
    hello = session.hello_frame
    assert hello is not None
    log.info(
        "ingest_session_open", conn=conn, kind=hello.kind, agent=hello.agent, scope=session.meeting
    )
    try:
        await ws.send_message(session.encode(opened))
    except ConnectionClosed as exc:  # gone (or refused, say a message too large) right away
        session.peer_closed(_close_code(exc))
        log.info("ingest_session_closed", conn=conn, messages=0, accepted=0, rejected=0)
        return
    replies_in, replies_out = trio.open_memory_channel[SessionMessage](_REPLY_QUEUE)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_replies, ws, session, replies_out)
            nursery.start_soon(_ack_and_heartbeat, ws, session, replies_in, nursery.cancel_scope)
            await _receive_frames(ws, session, out, replies_in)
            nursery.cancel_scope.cancel()
    except BaseException:
        session.abort(shutting_down=trio.current_effective_deadline() == -math.inf)
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
            await ws.aclose(session.close.code, session.close.reason)


def _close_code(exc: ConnectionClosed) -> int | None:
    return exc.reason.code if exc.reason is not None else None


def _reply(replies: trio.MemorySendChannel[SessionMessage], message: SessionMessage) -> None:
    # When the client is not reading, replies are dropped; acks carry the totals anyway.
    with contextlib.suppress(trio.WouldBlock):
        replies.send_nowait(message)


async def _receive_frames(
    ws: WebSocketConnection,
    session: IngestSession,
    out: trio.MemorySendChannel[tuple[list[Frame], str]],
    replies: trio.MemorySendChannel[SessionMessage],
) -> None:
    boot = session.boot
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as exc:
            session.peer_closed(_close_code(exc))
            return
        frames = session.receive(message, trio.current_time())
        if frames:
            await out.send((frames, boot))
        for error in session.message_processed():
            _reply(replies, error)


async def _send_replies(
    ws: WebSocketConnection,
    session: IngestSession,
    replies: trio.MemoryReceiveChannel[SessionMessage],
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in replies:
            await ws.send_message(session.encode(message))


async def _ack_and_heartbeat(
    ws: WebSocketConnection,
    session: IngestSession,
    replies: trio.MemorySendChannel[SessionMessage],
    scope: trio.CancelScope,
) -> None:
    """Tick the session every ack interval: send its ack, ping when it says so; a missing
    pong ends the session."""
    settings = session.settings
    while True:
        await trio.sleep(settings.ack_interval_s)
        tick = session.tick(trio.current_time())
        if tick.ack is not None:
            _reply(replies, tick.ack)
        if tick.ping:
            with trio.move_on_after(settings.heartbeat_timeout_s) as ping_scope:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if ping_scope.cancelled_caught:
                log.info("ingest_heartbeat_timeout")
                session.heartbeat_timeout()
                scope.cancel()
                return
            session.pong(trio.current_time())
