"""Subscriber sessions on ``/subscribe`` and the fan-out of deltas to them (PROTOCOL.md §12).

``Fanout.deliver`` is called by the channel for every delta of a topic that some local
subscriber holds. It encodes the delta once (JSON and MessagePack on demand, each made into a
WebSocket frame once, shared by every subscriber). A subscriber that is up to date, with
nothing queued or being sent, gets the frame written straight to its socket without waiting
(``Wire.send_now``: one system call, no task switch, the cost that matters with a thousand
subscribers). Any other, and one whose socket is full, gets it appended to its bounded queue
for its sender task. Either way ingest and the publisher never wait on a subscriber. A
subscriber whose queue is full has it replaced by a resynchronisation: its sender drops what
was queued and sends each of its topics afresh (the missed deltas merged into one if the
channel still holds them, else a snapshot).

What a session holds and decides (positions, the queue, which topics to resynchronise, what
to merge, what a client message asks) is its ``SubscriberState`` (``collector.fanout.session``:
no I/O, no clock). This module does the I/O around it. Each session runs three tasks: the
receiver (hands the client's messages to the state; it also keeps the WebSocket's pongs
flowing), the sender (fetches what the state asks for, writes what it says, in order) and the
heartbeat (a ``heartbeat`` message and a WebSocket ping every interval; a missing pong ends the
session); when the daemon requires tokens, a fourth ends the session as its token expires.
Errors of one session end that session only.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from collector.auth import Auth
from collector.fanout.channel import Channel, ChannelUnavailable
from collector.fanout.session import SubscriberState
from collector.logs import get_logger
from collector.wire import Wire, websocket_frame
from protocol.close_codes import CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_TRY_AGAIN
from protocol.subscribe import Alert, Delta, ServerMessage, Snapshot

log = get_logger("fanout.subscribers")

RETRY_S = 1.0  # between two attempts to serve a topic while the channel is unavailable
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_session_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class FanoutSettings:
    queue_messages: int = 64
    heartbeat_interval_s: float = 15.0
    heartbeat_timeout_s: float = 10.0
    max_subscribers: int = 10_000


class Encoded:
    """A server message with its encodings, and their WebSocket frames, made on first use
    and shared."""

    __slots__ = ("_frames", "_json", "_msgpack", "message")

    def __init__(self, message: ServerMessage) -> None:
        self.message = message
        self._json: str | None = None
        self._msgpack: bytes | None = None
        self._frames: dict[bool, bytes] = {}

    def frame(self, text: bool) -> bytes:
        """The whole WebSocket message, as ``send_message`` would write it."""
        frame = self._frames.get(text)
        if frame is None:
            payload = self.for_client(text)
            frame = self._frames[text] = websocket_frame(
                payload.encode() if isinstance(payload, str) else payload, text
            )
        return frame

    def for_client(self, text: bool) -> str | bytes:
        if text:
            if self._json is None:
                self._json = _json.encode(self.message).decode()
            return self._json
        if self._msgpack is None:
            self._msgpack = _msgpack.encode(self.message)
        return self._msgpack


class Subscriber:
    """One session's I/O: its socket, its wire and the event that wakes its sender; what the
    session holds and decides is its ``state``."""

    __slots__ = ("conn", "state", "wake", "wire", "ws")

    def __init__(
        self,
        conn: int,
        state: SubscriberState[Encoded],
        ws: WebSocketConnection,
        wire: Wire | None,
    ) -> None:
        self.conn = conn
        self.state = state
        self.ws = ws
        self.wire = wire  # None: every message goes through the queue
        self.wake = trio.Event()

    def send_now(self, messages: list[Encoded]) -> bool:
        """Write messages straight to the socket, when nothing queued or being sent must go
        before them; False: nothing was written, queue them."""
        wire = self.wire
        if wire is None or not self.state.idle or self.ws.closed is not None:
            return False
        text = self.state.text
        data = (
            messages[0].frame(text)
            if len(messages) == 1
            else b"".join(m.frame(text) for m in messages)
        )
        if not wire.send_now(data):
            return False
        self.state.wrote(len(messages))
        if wire.pending:
            self.wake.set()  # the sender flushes the rest
        return True

    def deliver_now(self, delta: Delta, encoded: Encoded, alerts: list[Encoded]) -> bool:
        """``send_now`` for a delta (after its alerts) that follows what the client holds."""
        if not self.state.follows(delta) or not self.send_now(
            [*alerts, encoded] if alerts else [encoded]
        ):
            return False
        self.state.delivered(delta)
        return True

    def offer(self, encoded: Encoded) -> bool:
        """Queue a message without waiting; False when the queue was full and was replaced by
        a resynchronisation of every topic."""
        queued = self.state.offer(encoded)
        self.wake.set()
        return queued

    def reply(self, message: ServerMessage) -> None:
        """Send or queue a reply or heartbeat; dropped (not worth a resync) when the queue is
        full."""
        encoded = Encoded(message)
        if not self.send_now([encoded]) and self.state.offer_reply(encoded):
            self.wake.set()


class _Fetch:
    """A snapshot fetch under way, for the sessions waiting on it."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None
        self.result: tuple[Snapshot, Encoded] | None = None


class Fanout:
    """This daemon's subscribers, by topic; the channel delivers into it."""

    def __init__(
        self,
        channel: Channel,
        settings: FanoutSettings,
        auth: Callable[[], Auth],
        prepare: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.auth = auth  # the keys in force (a reload swaps them)
        # Before a snapshot of a meeting topic: every daemon's part of it into the channel
        # (``Publisher.prepare``).
        self.prepare = prepare
        self.subscribers: set[Subscriber] = set()
        self.by_topic: dict[str, set[Subscriber]] = {}
        # Per topic with subscribers: the last snapshot sent and its encodings, and a fetch of
        # one under way. Subscribers that (re)connect together share one fetch and one encoding.
        self._snapshots: dict[str, tuple[Snapshot, Encoded]] = {}
        self._fetches: dict[str, _Fetch] = {}
        self.counters = {
            "sessions": 0,
            "refused": 0,
            "deltas_delivered": 0,
            "deltas_sent": 0,
            "deltas_written_now": 0,  # of deltas_sent: straight to the socket, no task switch
            "snapshots_sent": 0,
            "resumed": 0,
            "queues_replaced": 0,
            "heartbeat_timeouts": 0,
            "bad_messages": 0,
            "refused_unauthorized": 0,
            "refused_forbidden": 0,
            "tokens_expired": 0,
        }

    # -- channel side: never waits --------------------------------------------------------

    def deliver(self, delta: Delta) -> None:
        subscribers = self.by_topic.get(delta.topic)
        if not subscribers:
            return
        counters = self.counters
        counters["deltas_delivered"] += 1
        encoded = Encoded(delta)
        alerts = [
            Encoded(Alert(topic=delta.topic, epoch=delta.epoch, seq=delta.seq, alert=alert))
            for alert in delta.alerts
        ]
        for subscriber in subscribers:
            if subscriber.deliver_now(delta, encoded, alerts):
                counters["deltas_sent"] += 1
                counters["deltas_written_now"] += 1
                continue
            for alert_message in alerts:
                subscriber.offer(alert_message)
            if not subscriber.offer(encoded):
                counters["queues_replaced"] += 1

    def on_epoch(self, _epoch: str) -> None:
        """The channel's epoch changed: every subscriber needs snapshots."""
        for subscriber in self.subscribers:
            subscriber.state.epoch_changed()
            subscriber.wake.set()

    def topics(self) -> set[str]:
        return {topic for topic, subs in self.by_topic.items() if subs}

    def health(self) -> dict[str, Any]:
        return {"subscribers": len(self.subscribers), **self.counters}

    # -- sessions -------------------------------------------------------------------------

    def _join(self, subscriber: Subscriber, topic: str) -> None:
        self.by_topic.setdefault(topic, set()).add(subscriber)
        self.channel.watch(self.topics())

    def _leave(self, subscriber: Subscriber, topic: str) -> None:
        subs = self.by_topic.get(topic)
        if subs is not None:
            subs.discard(subscriber)
            if not subs:
                del self.by_topic[topic]
                self._snapshots.pop(topic, None)
        self.channel.watch(self.topics())

    async def serve_session(self, ws: WebSocketConnection, wire: Wire | None = None) -> None:
        """Run one accepted ``/subscribe`` connection until it closes. ``wire``: the byte
        stream under ``ws``, which deltas may be written to without waiting; None: every
        delta goes through ``ws``."""
        if len(self.subscribers) >= self.settings.max_subscribers:
            self.counters["refused"] += 1
            await ws.aclose(CLOSE_TRY_AGAIN, "too many subscribers")
            return
        conn = next(_session_ids)
        subscriber: Subscriber | None = None
        close = (1000, "")
        try:
            first = await ws.get_message()
            state = SubscriberState(
                isinstance(first, str), self.settings.queue_messages, Encoded, self.counters
            )
            subscriber = Subscriber(conn, state, ws, wire)
            self.subscribers.add(subscriber)
            self.counters["sessions"] += 1
            log.info("subscriber_open", conn=conn, text=state.text)
            self._handle(subscriber, first)
            async with trio.open_nursery() as nursery:

                async def until_closed(task: Callable[[], Awaitable[None]]) -> None:
                    # Whichever task sees the connection close ends the session.
                    with contextlib.suppress(ConnectionClosed):
                        await task()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_closed, partial(self._send, subscriber, ws))
                nursery.start_soon(
                    until_closed,
                    partial(self._heartbeat, subscriber, ws, nursery.cancel_scope),
                )
                if self.auth().required:
                    nursery.start_soon(self._expire, subscriber, nursery.cancel_scope)
                await until_closed(partial(self._receive, subscriber, ws))
            close = state.close
        except ConnectionClosed:
            pass  # before the first message
        except BaseException:
            shutting_down = trio.current_effective_deadline() == -math.inf
            close = (
                (CLOSE_GOING_AWAY, "daemon shutting down")
                if shutting_down
                else (CLOSE_INTERNAL, "internal error")
            )
            raise
        finally:
            if subscriber is not None:
                self.subscribers.discard(subscriber)
                for topic in list(subscriber.state.held):
                    self._leave(subscriber, topic)
                log.info(
                    "subscriber_closed",
                    conn=conn,
                    sent=subscriber.state.sent,
                    queues_replaced=subscriber.state.replaced,
                )
            # Shutting down, the connection's reader is gone: the client's close reply would
            # never be read, so do not wait for it.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(0.1 if close[0] == CLOSE_GOING_AWAY else 1),
            ):
                await ws.aclose(*close)

    async def _receive(self, subscriber: Subscriber, ws: WebSocketConnection) -> None:
        while True:
            self._handle(subscriber, await ws.get_message())

    def _handle(self, subscriber: Subscriber, data: str | bytes) -> None:
        """One client message, as the session's state takes it."""
        received = subscriber.state.receive(data, self.auth())
        if received.refused is not None:
            log.debug(
                "subscriber_refused",
                conn=subscriber.conn,
                code=received.refused.code,
                detail=received.refused.detail,
            )
        if received.left is not None:
            self._leave(subscriber, received.left)
        for reply in received.replies:
            subscriber.reply(reply)
        if received.joined is not None:
            subscriber.wake.set()
            self._join(subscriber, received.joined)

    async def _expire(self, subscriber: Subscriber, scope: trio.CancelScope) -> None:
        """End the session when the token it was admitted with expires (a later ``auth``
        message with a fresh token moves the end)."""
        while True:
            remaining = subscriber.state.expires_in(time.time())
            if remaining is None:
                scope.cancel()
                return
            await trio.sleep(min(remaining, 10.0))

    async def _send(self, subscriber: Subscriber, ws: WebSocketConnection) -> None:
        state = subscriber.state
        while True:
            # Topics the channel could not serve are retried every second; meanwhile the
            # other topics and the heartbeats go on.
            with trio.move_on_after(RETRY_S if state.resync else math.inf):
                await subscriber.wake.wait()
            subscriber.wake = trio.Event()
            state.sending = True
            try:
                if subscriber.wire is not None:
                    await subscriber.wire.flush()
                failed: set[str] = set()
                while (resync := state.next_resync()) is not None:
                    topic, (epoch, seq) = resync
                    if not await self._resync(subscriber, ws, topic, epoch, seq):
                        failed.add(topic)
                for message in state.take_queued():
                    await self._write(subscriber, ws, message)
                if state.resync:
                    subscriber.wake.set()  # a delta went missing: resynchronise now
                state.retry(failed)
            finally:
                state.sending = False

    async def _write(
        self, subscriber: Subscriber, ws: WebSocketConnection, message: Encoded
    ) -> None:
        await ws.send_message(message.for_client(subscriber.state.text))
        subscriber.state.wrote(1)

    async def _resync(
        self,
        subscriber: Subscriber,
        ws: WebSocketConnection,
        topic: str,
        epoch: str | None,
        seq: int | None,
    ) -> bool:
        """Bring one topic up to date: the missed deltas (with their ``alert`` messages) if the
        channel holds them, else a snapshot. False when the channel is unavailable: the client
        gets one ``unavailable`` error per outage, and the topic is tried again later."""
        state = subscriber.state
        try:
            missed = await self.channel.since(topic, epoch, seq) if seq is not None else None
            shared = await self._snapshot(topic) if missed is None else None
        except ChannelUnavailable as exc:
            for message in state.unavailable_now(topic, str(exc)):
                await self._write(subscriber, ws, message)
            return False
        if shared is not None:
            out = state.snapshot_fetched(*shared)
        else:
            assert missed is not None
            out = state.missed_fetched(topic, (epoch, seq), missed)
        for message in out:
            await self._write(subscriber, ws, message)
        return True

    async def _snapshot(self, topic: str) -> tuple[Snapshot, Encoded]:
        """The topic's snapshot, encoded. While one subscriber's fetch is under way, others
        wait for it; later ones get the same one until the topic's sequence number moves."""
        while (fetch := self._fetches.get(topic)) is not None:
            await fetch.done.wait()
            if fetch.error is not None:
                raise ChannelUnavailable(fetch.error)
            if fetch.result is not None:
                return fetch.result
            # the fetching session ended first: fetch again
        fetch = self._fetches[topic] = _Fetch()
        try:
            if self.prepare is not None and topic.startswith("meeting:"):
                await self.prepare(topic)
            shared = fetch.result = self._share(await self.channel.snapshot(topic))
        except ChannelUnavailable as exc:
            fetch.error = str(exc)
            raise
        finally:
            del self._fetches[topic]
            fetch.done.set()
        return shared

    def _share(self, snapshot: Snapshot) -> tuple[Snapshot, Encoded]:
        """The snapshot and its encodings: the ones sent last if it is the same state (same
        epoch and sequence number), their encodings already made."""
        topic = snapshot.topic
        shared = self._snapshots.get(topic)
        if shared is not None and (shared[0].epoch, shared[0].seq) == (
            snapshot.epoch,
            snapshot.seq,
        ):
            return shared
        shared = (snapshot, Encoded(snapshot))
        if topic in self.by_topic:  # else it would outlive the topic's subscribers
            self._snapshots[topic] = shared
        return shared

    async def _heartbeat(
        self, subscriber: Subscriber, ws: WebSocketConnection, scope: trio.CancelScope
    ) -> None:
        settings = self.settings
        # A random phase: subscribers that connected together do not all get pinged together.
        await trio.sleep(random.uniform(0, settings.heartbeat_interval_s))
        while True:
            subscriber.reply(subscriber.state.heartbeat(time.time(), self.channel.epoch))
            with trio.move_on_after(settings.heartbeat_timeout_s) as ping_scope:
                with contextlib.suppress(ConnectionClosed):
                    await ws.ping()
            if ping_scope.cancelled_caught:
                subscriber.state.heartbeat_missed()
                log.info("subscriber_heartbeat_timeout", conn=subscriber.conn)
                scope.cancel()
                return
            await trio.sleep(settings.heartbeat_interval_s)
