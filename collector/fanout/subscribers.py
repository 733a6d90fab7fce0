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

Each session runs three tasks: the receiver (``auth``/``subscribe``/``unsubscribe`` from the
client; it also keeps the WebSocket's pongs flowing), the sender (the queue, in order, per topic
only deltas that follow what the client holds) and the heartbeat (a ``heartbeat`` message and a
WebSocket ping every interval; a missing pong ends the session); when the daemon requires
tokens, a fourth ends the session as its token expires. Errors of one session end that session
only.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from collector.auth import Auth, Denied
from collector.fanout.channel import Channel, ChannelUnavailable
from collector.fanout.hub import merge
from collector.logs import get_logger
from collector.wire import Wire, websocket_frame
from protocol.subscribe import (
    BAD_MESSAGE,
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_TOPICS_PER_SESSION,
    TOO_MANY_TOPICS,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN_TOPIC,
    Alert,
    Authenticate,
    Delta,
    Heartbeat,
    ServerMessage,
    Snapshot,
    Subscribe,
    SubscribeError,
    Unsubscribe,
    Unsubscribed,
    client_json_decoder,
    client_msgpack_decoder,
    is_topic,
)
from protocol.tokens import Claims

log = get_logger("fanout.subscribers")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
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
    """One session's topics, positions and outgoing queue."""

    def __init__(
        self,
        conn: int,
        text: bool,
        queue_messages: int,
        ws: WebSocketConnection,
        wire: Wire | None,
    ) -> None:
        self.conn = conn
        self.text = text
        self.queue_messages = queue_messages
        self.ws = ws
        self.wire = wire  # None: every message goes through the queue
        self.busy = False  # the sender task is at work: what it sends must go first
        # topic -> (epoch, seq) the client holds; None until it has a snapshot or a resume
        self.held: dict[str, tuple[str | None, int | None]] = {}
        self.queue: deque[Encoded] = deque()
        self.resync: set[str] = set()
        self.unavailable: set[str] = set()  # topics told "unavailable" in this outage
        self.wake = trio.Event()
        self.sent = 0
        self.replaced = 0
        self.claims: Claims | None = None  # from the session's last good ``auth`` message
        self.close = (1000, "")

    def send_now(self, messages: list[Encoded]) -> bool:
        """Write messages straight to the socket, when nothing queued or being sent must go
        before them; False: nothing was written, queue them."""
        wire = self.wire
        if wire is None or self.busy or self.queue or self.resync or self.ws.closed is not None:
            return False
        text = self.text
        data = (
            messages[0].frame(text)
            if len(messages) == 1
            else b"".join(m.frame(text) for m in messages)
        )
        if not wire.send_now(data):
            return False
        self.sent += len(messages)
        if wire.pending:
            self.wake.set()  # the sender flushes the rest
        return True

    def deliver_now(self, delta: Delta, encoded: Encoded, alerts: list[Encoded]) -> bool:
        """``send_now`` for a delta (after its alerts) that follows what the client holds."""
        topic = delta.topic
        if self.held.get(topic) != (delta.epoch, delta.prev) or not self.send_now(
            [*alerts, encoded] if alerts else [encoded]
        ):
            return False
        self.held[topic] = (delta.epoch, delta.seq)
        return True

    def offer(self, encoded: Encoded) -> bool:
        """Queue a message without waiting; False when the queue was full and was replaced by
        a resynchronisation of every topic."""
        if len(self.queue) >= self.queue_messages:
            self.queue.clear()
            self.resync.update(self.held)
            self.replaced += 1
            self.wake.set()
            return False
        self.queue.append(encoded)
        self.wake.set()
        return True

    def reply(self, message: ServerMessage) -> None:
        """Send or queue a reply or heartbeat; dropped (not worth a resync) when the queue is
        full."""
        encoded = Encoded(message)
        if self.send_now([encoded]):
            return
        if len(self.queue) < self.queue_messages:
            self.queue.append(encoded)
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
            subscriber.queue.clear()
            subscriber.held = dict.fromkeys(subscriber.held, (None, None))
            subscriber.resync.update(subscriber.held)
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
            subscriber = Subscriber(
                conn, isinstance(first, str), self.settings.queue_messages, ws, wire
            )
            self.subscribers.add(subscriber)
            self.counters["sessions"] += 1
            log.info("subscriber_open", conn=conn, text=subscriber.text)
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
            close = subscriber.close
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
                for topic in list(subscriber.held):
                    self._leave(subscriber, topic)
                log.info(
                    "subscriber_closed",
                    conn=conn,
                    sent=subscriber.sent,
                    queues_replaced=subscriber.replaced,
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
        """One client message: subscribe or unsubscribe; anything else gets an error."""
        if len(data) > MAX_CLIENT_MESSAGE_BYTES:
            self._bad(subscriber, f"message over {MAX_CLIENT_MESSAGE_BYTES} bytes")
            return
        try:
            if isinstance(data, str):
                message = client_json_decoder.decode(data)
            else:
                message = client_msgpack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            self._bad(subscriber, str(exc)[:200])
            return
        if isinstance(message, Authenticate):
            claims = self.auth().admit(message.token, "read")
            if isinstance(claims, Denied):
                self._refuse(subscriber, claims, None)
            else:
                subscriber.claims = claims
            return
        topic = message.topic
        if not is_topic(topic):
            subscriber.reply(
                SubscribeError(
                    code=UNKNOWN_TOPIC,
                    detail="topics are meetings, http, alerts and meeting:<meeting id>",
                    topic=topic[:140],
                )
            )
            return
        if isinstance(message, Unsubscribe):
            if topic in subscriber.held:
                del subscriber.held[topic]
                subscriber.resync.discard(topic)
                self._leave(subscriber, topic)
            subscriber.reply(Unsubscribed(topic=topic))
            return
        assert isinstance(message, Subscribe)
        if topic not in subscriber.held and len(subscriber.held) >= MAX_TOPICS_PER_SESSION:
            subscriber.reply(
                SubscribeError(
                    code=TOO_MANY_TOPICS,
                    detail=f"at most {MAX_TOPICS_PER_SESSION} topics per session",
                    topic=topic,
                )
            )
            return
        denied = self._authorize(subscriber, topic)
        if denied is not None:
            self._refuse(subscriber, denied, topic)
            return
        subscriber.held[topic] = (message.epoch, message.seq)
        subscriber.resync.add(topic)
        subscriber.wake.set()
        self._join(subscriber, topic)

    def _authorize(self, subscriber: Subscriber, topic: str) -> Denied | None:
        """None when the session's token may read ``topic``: a meeting-scoped token reads its
        own ``meeting:<id>`` topic only (the others show every meeting)."""
        auth = self.auth()
        if not auth.required:
            return None
        if subscriber.claims is None:
            return Denied(UNAUTHORIZED, "send an auth message with a token first")
        meeting = topic.removeprefix("meeting:") if topic.startswith("meeting:") else None
        return auth.check(subscriber.claims, "read", meeting)

    def _refuse(self, subscriber: Subscriber, denied: Denied, topic: str | None) -> None:
        self.counters[f"refused_{denied.code}"] += 1
        log.debug(
            "subscriber_refused", conn=subscriber.conn, code=denied.code, detail=denied.detail
        )
        subscriber.reply(SubscribeError(code=denied.code, detail=denied.detail, topic=topic))

    async def _expire(self, subscriber: Subscriber, scope: trio.CancelScope) -> None:
        """End the session when the token it was admitted with expires (a later ``auth``
        message with a fresh token moves the end)."""
        while True:
            claims = subscriber.claims
            remaining = claims.exp - time.time() if claims is not None else math.inf
            if remaining <= 0:
                self.counters["tokens_expired"] += 1
                subscriber.close = (CLOSE_POLICY, "token expired")
                scope.cancel()
                return
            await trio.sleep(min(remaining, 10.0))

    def _bad(self, subscriber: Subscriber, detail: str) -> None:
        self.counters["bad_messages"] += 1
        subscriber.reply(SubscribeError(code=BAD_MESSAGE, detail=detail))

    async def _send(self, subscriber: Subscriber, ws: WebSocketConnection) -> None:
        while True:
            # Topics the channel could not serve are retried every second; meanwhile the
            # other topics and the heartbeats go on.
            with trio.move_on_after(RETRY_S if subscriber.resync else math.inf):
                await subscriber.wake.wait()
            subscriber.wake = trio.Event()
            subscriber.busy = True
            try:
                if subscriber.wire is not None:
                    await subscriber.wire.flush()
                failed: set[str] = set()
                while subscriber.resync:
                    topic = subscriber.resync.pop()
                    if topic in subscriber.held and not await self._resync(subscriber, ws, topic):
                        failed.add(topic)
                pending = list(subscriber.queue)
                subscriber.queue.clear()
                for message in self._in_order(subscriber, pending):
                    await self._write(subscriber, ws, message)
                subscriber.resync |= failed
            finally:
                subscriber.busy = False

    async def _write(
        self, subscriber: Subscriber, ws: WebSocketConnection, message: Encoded
    ) -> None:
        await ws.send_message(message.for_client(subscriber.text))
        subscriber.sent += 1

    def _in_order(self, subscriber: Subscriber, pending: list[Encoded]) -> list[Encoded]:
        """The queued messages to send: per topic, the deltas that follow what the client
        holds, several merged into one in the place of the first; a gap makes the topic
        resynchronise instead."""
        out: list[Encoded | str] = []  # a str holds the place of that topic's deltas
        runs: dict[str, list[Delta]] = {}
        first: dict[str, Encoded] = {}
        for encoded in pending:
            message = encoded.message
            if isinstance(message, Alert):
                epoch, seq = subscriber.held.get(message.topic, (None, None))
                if (
                    seq is not None
                    and message.topic not in subscriber.resync
                    and message.epoch == epoch
                    and message.seq > seq
                ):
                    out.append(encoded)  # else: covered by the snapshot or resume sent
                continue
            if not isinstance(message, Delta):
                out.append(encoded)
                continue
            topic = message.topic
            epoch, seq = subscriber.held.get(topic, (None, None))
            if seq is None or topic in subscriber.resync:
                continue  # unsubscribed, or a snapshot is on its way
            run = runs.setdefault(topic, [])
            last = run[-1].seq if run else seq
            if message.epoch != epoch or message.seq <= last:
                continue  # already covered by the snapshot or resume the client got
            if message.prev != last:
                subscriber.resync.add(topic)  # a delta went missing: start afresh
                subscriber.wake.set()
                run.clear()
                continue
            if not run:
                first[topic] = encoded
                out.append(topic)
            run.append(message)
        result: list[Encoded] = []
        for item in out:
            if not isinstance(item, str):
                result.append(item)
                continue
            run = runs[item]
            if not run:
                continue
            subscriber.held[item] = (run[-1].epoch, run[-1].seq)
            self.counters["deltas_sent"] += 1
            result.append(first[item] if len(run) == 1 else Encoded(merge(run)))
        return result

    async def _resync(self, subscriber: Subscriber, ws: WebSocketConnection, topic: str) -> bool:
        """Bring one topic up to date: the missed deltas (with their ``alert`` messages) if the
        channel holds them, else a snapshot. False when the channel is unavailable: the client
        gets one ``unavailable`` error per outage, and the topic is tried again later."""
        epoch, seq = subscriber.held[topic]
        try:
            missed = await self.channel.since(topic, epoch, seq) if seq is not None else None
            shared = await self._snapshot(topic) if missed is None else None
        except ChannelUnavailable as exc:
            if topic not in subscriber.unavailable:
                subscriber.unavailable.add(topic)
                error = SubscribeError(code=UNAVAILABLE, detail=str(exc)[:200], topic=topic)
                await self._write(subscriber, ws, Encoded(error))
            return False
        subscriber.unavailable.discard(topic)
        if topic not in subscriber.held:
            return True  # unsubscribed meanwhile
        if shared is not None:
            snapshot, encoded = shared
            subscriber.held[topic] = (snapshot.epoch, snapshot.seq)
            self.counters["snapshots_sent"] += 1
            await self._write(subscriber, ws, encoded)
            return True
        self.counters["resumed"] += 1
        if not missed:
            return True  # nothing was missed
        update = merge(missed)
        for alert in update.alerts:
            message = Alert(topic=topic, epoch=update.epoch, seq=update.seq, alert=alert)
            await self._write(subscriber, ws, Encoded(message))
        subscriber.held[topic] = (update.epoch, update.seq)
        self.counters["deltas_sent"] += 1
        await self._write(subscriber, ws, Encoded(update))
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
            subscriber.reply(Heartbeat(at=time.time(), epoch=self.channel.epoch))
            with trio.move_on_after(settings.heartbeat_timeout_s) as ping_scope:
                with contextlib.suppress(ConnectionClosed):
                    await ws.ping()
            if ping_scope.cancelled_caught:
                self.counters["heartbeat_timeouts"] += 1
                log.info("subscriber_heartbeat_timeout", conn=subscriber.conn)
                subscriber.close = (CLOSE_INTERNAL, "heartbeat timeout")
                scope.cancel()
                return
            await trio.sleep(settings.heartbeat_interval_s)
