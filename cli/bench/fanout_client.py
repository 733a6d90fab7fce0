"""The subscribers' process of ``bwmon bench fanout`` (``python -m cli.bench.fanout_client``).

It opens subscribers on a daemon's ``/subscribe``, each a trio-websocket connection subscribed
to ``meetings`` in MessagePack and followed with its own ``TopicMirror``, and times every
delta: ``time.time()`` right after the message is read minus the delta's ``at`` (the daemon's
time of the publish tick; the same machine clock). It counts bytes, snapshots, errors and
resubscriptions, labelled by the window the benchmark says the run is in.

Standing in for 1,000 clients, it decodes each distinct message once and lets the mirrors at
the same position share their (never modified) entity maps (``Shared``); the sequence rules
are each mirror's own. What it still costs shows in its loop lag and CPU time.

It takes one command per line on stdin and answers each with one JSON line on stdout:
``open N [BATCH]``, ``close``, ``mark LABEL``, ``snapshot CHECK_S``, ``report``, ``quit``; the
end of stdin, or its ``--deadline``, ends it.
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from typing import Any

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from cli.bench.harness import answer, percentile, read_command
from protocol.subscribe import (
    Delta,
    Entities,
    Heartbeat,
    Snapshot,
    Subscribe,
    SubscribeError,
    TopicMirror,
    server_msgpack_decoder,
)

TOPIC = "meetings"
CONNECT_BATCH = 100  # subscribers opened at once: no SYN flood
MAX_CONNECTIONS = 4096  # server.max_connections and fanout.max_subscribers of the bench daemon
LAG_PROBE_S = 0.01
MAX_MESSAGE_BYTES = 64 << 20
RECEIVE_BUFFER_BYTES = 1 << 16


# -- what it reports -------------------------------------------------------------------------


class WindowStats(msgspec.Struct):
    """What the subscribers received in one window of the run."""

    deltas: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    mean_delta_bytes: float | None = None
    # Per delta (epoch, seq): the first subscriber's latency, and the time from the first to
    # the last subscriber that received it (the daemon sending and the client reading).
    first_latency_p50_ms: float | None = None
    first_latency_p99_ms: float | None = None
    spread_p50_ms: float | None = None
    spread_p99_ms: float | None = None
    client_lag_p99_ms: float | None = None  # how late the client's loop woke (see watch_lag)
    client_lag_max_ms: float | None = None


class ClientReport(msgspec.Struct):
    subscribers_opened: int = 0  # connections that got their first snapshot
    peak_connected: int = 0
    deltas: int = 0
    snapshots: int = 0
    heartbeats: int = 0
    resyncs: int = 0  # deltas that did not follow what a mirror held: subscribed again
    errors: dict[str, int] = msgspec.field(default_factory=dict)  # error messages by code
    connect_errors: dict[str, int] = msgspec.field(default_factory=dict)
    closed_by_daemon: dict[str, int] = msgspec.field(default_factory=dict)  # by close code
    close_errors: dict[str, int] = msgspec.field(default_factory=dict)  # closing from our side
    windows: dict[str, WindowStats] = msgspec.field(default_factory=dict)
    client_cpu_s: float = 0.0  # CPU time the client process used


class SnapshotProbe(msgspec.Struct):
    """A fresh subscribe's snapshot, and how many connected mirrors at its ``seq`` equal it."""

    snapshot_bytes: int = 0
    entities: int = 0
    seq: int = 0
    mirrors_compared: int = 0
    mirrors_matching: int = 0


# -- the subscribers -----------------------------------------------------------------------


_subscribe_meetings = msgspec.msgpack.encode(Subscribe(topic=TOPIC))
MEMO_ENTRIES = 256


class Shared:
    """What one process standing in for many clients does once, not once per client.

    The daemon sends the same bytes of a delta to every subscriber: ``decode`` decodes them
    once, and makes with them the same message without entities (its position only). A
    subscriber's ``TopicMirror`` follows that position by the rules of PROTOCOL.md §12.5 (a
    delta that does not follow what it holds makes it subscribe again), while the entity
    maps are shared, copy-on-write, by the mirrors that hold the same position: ``after``
    gives the state a delta leads to, computed once per state and delta."""

    def __init__(self) -> None:
        self._decoded: dict[bytes, tuple[Any, Snapshot | Delta | None]] = {}
        self._states: dict[tuple[int, int], tuple[Entities | None, Any, Entities]] = {}

    def decode(self, data: bytes) -> tuple[Any, Snapshot | Delta | None]:
        """The message, and for a snapshot or delta the same without its entities."""
        known = self._decoded.get(data)
        if known is None:
            message = server_msgpack_decoder.decode(data)
            position: Snapshot | Delta | None = None
            if isinstance(message, Snapshot):
                position = Snapshot(
                    topic=message.topic,
                    epoch=message.epoch,
                    seq=message.seq,
                    at=message.at,
                    entities={},
                )
            elif isinstance(message, Delta):
                position = Delta(
                    topic=message.topic,
                    epoch=message.epoch,
                    seq=message.seq,
                    prev=message.prev,
                    at=message.at,
                )
            if len(self._decoded) >= MEMO_ENTRIES:
                self._decoded.clear()
            known = self._decoded[data] = (message, position)
        return known

    def after(self, entities: Entities, message: Snapshot | Delta) -> Entities:
        """The (shared, never modified) state after applying ``message`` to ``entities``."""
        # A snapshot's state does not depend on what was held before it.
        base: Entities | None = None if isinstance(message, Snapshot) else entities
        key = (id(base), id(message))
        known = self._states.get(key)
        if known is None:
            if isinstance(message, Snapshot):
                state = {k: dict(v) for k, v in message.entities.items()}
            else:
                state = dict(entities)  # copy on write: the entities that change are new
                for entity in message.removed:
                    state.pop(entity, None)
                for entity, fields in message.changed.items():
                    current = state.get(entity)
                    state[entity] = dict(fields) if current is None else current | fields
            if len(self._states) >= MEMO_ENTRIES:
                self._states.clear()
            # The entry holds both keys' objects: their ids stay theirs while it exists.
            known = self._states[key] = (base, message, state)
        return known[2]


class Subscribers:
    """The subscriber connections of the client process and what they received."""

    def __init__(self, url: str, nursery: trio.Nursery) -> None:
        self.url = url
        self.nursery = nursery
        self.report = ClientReport()
        self.label = "warmup"
        self.latencies: dict[str, list[float]] = {}
        self.delta_bytes: dict[str, list[int]] = {}
        self.mirrors: dict[int, TopicMirror] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.connected = 0
        self.shared = Shared()
        self.lags: dict[str, list[float]] = {}
        # label -> (epoch, seq) -> [first latency, first receipt, last receipt]
        self.spans: dict[str, dict[tuple[str, int], list[float]]] = {}
        self._next = 0
        self._none_left = trio.Event()
        self.probe = SnapshotProbe()
        self.check: Snapshot | None = None
        self.checked: dict[int, tuple[Entities, bool]] = {}
        self.compared: set[int] = set()

    async def watch_lag(self) -> None:
        """How late this process's loop wakes up from a short sleep: when it is high, the
        latencies measured include time the subscribers waited for this process."""
        while True:
            asked = trio.current_time() + LAG_PROBE_S
            await trio.sleep_until(asked)
            self.lags.setdefault(self.label, []).append(trio.current_time() - asked)

    async def open(self, count: int, batch: int = CONNECT_BATCH) -> int:
        """Open ``count`` subscribers, ``batch`` at a time, each batch once all of the
        previous one got a snapshot (or failed); the number that got one."""
        opened = self.report.subscribers_opened
        for first in range(0, count, batch):
            ready = [trio.Event() for _ in range(min(batch, count - first))]
            for event in ready:
                self.nursery.start_soon(self._subscriber, self._next, event)
                self._next += 1
            with trio.move_on_after(30):
                for event in ready:
                    await event.wait()
        return self.report.subscribers_opened - opened

    async def close(self) -> None:
        """Close every subscriber (a normal WebSocket close) and wait until they are gone."""
        self._none_left = trio.Event()
        for scope in self.scopes.values():
            scope.cancel()
        with trio.move_on_after(30):
            if self.scopes:
                await self._none_left.wait()

    async def _subscriber(self, index: int, ready: trio.Event) -> None:
        report = self.report
        scope = trio.CancelScope()
        self.scopes[index] = scope
        try:
            async with open_websocket_url(
                self.url,
                max_message_size=MAX_MESSAGE_BYTES,
                receive_buffer_size=RECEIVE_BUFFER_BYTES,
                connect_timeout=20,
                disconnect_timeout=5,
            ) as ws:
                self.connected += 1
                report.peak_connected = max(report.peak_connected, self.connected)
                mirror = TopicMirror(TOPIC)
                self.mirrors[index] = mirror
                try:
                    with scope:
                        await ws.send_message(_subscribe_meetings)
                        await self._read(ws, index, mirror, ready)
                finally:
                    self.connected -= 1
                    del self.mirrors[index]
        except HandshakeError as exc:
            _count(report.connect_errors, type(exc).__name__)
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason is not None else None
            _count(report.closed_by_daemon, str(code))
        except OSError as exc:
            _count(report.connect_errors, type(exc).__name__)
        except trio.Cancelled:
            if trio.current_effective_deadline() == -math.inf:
                raise  # this task is being cancelled
            # trio-websocket 0.12 lets a Cancelled of its own nursery out when answering a
            # ping fails while the connection closes (wsproto refuses a Pong in LOCAL_CLOSING:
            # python-trio/trio-websocket#184); it would cancel every subscriber. The
            # connection is closed: count it.
            _count(report.close_errors, "cancelled while closing")
        finally:
            del self.scopes[index]
            if not self.scopes:
                self._none_left.set()
            ready.set()

    async def _read(
        self, ws: WebSocketConnection, index: int, mirror: TopicMirror, ready: trio.Event
    ) -> None:
        report = self.report
        while True:
            data = await ws.get_message()
            received = time.time()
            if isinstance(data, str):  # a MessagePack session gets binary messages only
                _count(report.errors, "text message")
                continue
            message, position = self.shared.decode(data)
            if isinstance(message, Delta):
                assert isinstance(position, Delta)
                report.deltas += 1
                self.latencies.setdefault(self.label, []).append(received - message.at)
                self.delta_bytes.setdefault(self.label, []).append(len(data))
                span = self.spans.setdefault(self.label, {}).get((message.epoch, message.seq))
                if span is None:
                    self.spans[self.label][message.epoch, message.seq] = [
                        received - message.at,
                        received,
                        received,
                    ]
                else:
                    span[2] = received
                held = mirror.seq
                again = mirror.receive(position)
                if again is not None:
                    report.resyncs += 1
                    await ws.send_message(msgspec.msgpack.encode(again))
                elif mirror.seq != held:  # applied (not old news)
                    mirror.entities = self.shared.after(mirror.entities, message)
                    self._compare(index, mirror)
            elif isinstance(message, Snapshot):
                assert isinstance(position, Snapshot)
                report.snapshots += 1
                mirror.receive(position)
                mirror.entities = self.shared.after(mirror.entities, message)
                self._compare(index, mirror)
                if not ready.is_set():
                    report.subscribers_opened += 1
                    ready.set()
            elif isinstance(message, Heartbeat):
                report.heartbeats += 1
            elif isinstance(message, SubscribeError):
                _count(report.errors, message.code)
            else:
                _count(report.errors, f"unexpected {type(message).__name__}")

    async def probe_snapshot(self, check_s: float) -> SnapshotProbe:
        """A fresh subscriber's first snapshot, taken half-way between two publish ticks (the
        daemon publishes just after each whole second); each connected mirror is compared
        with it when it holds the same position (within ``check_s``)."""
        await trio.sleep(1.5 - time.time() % 1.0)
        async with open_websocket_url(
            self.url, max_message_size=MAX_MESSAGE_BYTES, receive_buffer_size=RECEIVE_BUFFER_BYTES
        ) as ws:
            await ws.send_message(_subscribe_meetings)
            while True:
                data = await ws.get_message()
                if isinstance(data, str):
                    continue
                message = server_msgpack_decoder.decode(data)
                if isinstance(message, Snapshot):
                    break
        self.probe = SnapshotProbe(
            snapshot_bytes=len(data), entities=len(message.entities), seq=message.seq
        )
        self.check, self.checked, self.compared = message, {}, set()
        for index, mirror in self.mirrors.items():
            self._compare(index, mirror)
        await trio.sleep(check_s)
        self.check, self.checked = None, {}
        return self.probe

    def _compare(self, index: int, mirror: TopicMirror) -> None:
        """If a check is on and this mirror holds its position: is its state the snapshot's?
        (Compared once per distinct state: the mirrors share them.)"""
        check = self.check
        if check is None or mirror.seq != check.seq or mirror.epoch != check.epoch:
            return
        if index in self.compared:
            return
        self.compared.add(index)
        state = mirror.entities
        known = self.checked.get(id(state))
        if known is None:
            known = self.checked[id(state)] = (state, state == check.entities)
        self.probe.mirrors_compared += 1
        self.probe.mirrors_matching += known[1]

    def windows(self) -> dict[str, WindowStats]:
        out = {}
        for label in self.latencies.keys() | self.lags.keys():
            stats = out[label] = WindowStats()
            if ordered := sorted(self.latencies.get(label, ())):
                sizes = self.delta_bytes[label]
                stats.deltas = len(ordered)
                stats.latency_p50_ms = round(1000 * percentile(ordered, 0.50), 1)
                stats.latency_p99_ms = round(1000 * percentile(ordered, 0.99), 1)
                stats.latency_max_ms = round(1000 * ordered[-1], 1)
                stats.mean_delta_bytes = round(sum(sizes) / len(sizes), 1)
                spans = self.spans[label].values()
                first = sorted(span[0] for span in spans)
                spread = sorted(span[2] - span[1] for span in spans)
                stats.first_latency_p50_ms = round(1000 * percentile(first, 0.50), 1)
                stats.first_latency_p99_ms = round(1000 * percentile(first, 0.99), 1)
                stats.spread_p50_ms = round(1000 * percentile(spread, 0.50), 1)
                stats.spread_p99_ms = round(1000 * percentile(spread, 0.99), 1)
            if lags := sorted(self.lags.get(label, ())):
                stats.client_lag_p99_ms = round(1000 * percentile(lags, 0.99), 1)
                stats.client_lag_max_ms = round(1000 * lags[-1], 1)
        return out


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


async def client(port: int, deadline_s: float) -> None:
    """Run commands from stdin, one per line, answering each with one JSON line:
    ``open N [BATCH]``, ``close``, ``mark LABEL``, ``snapshot CHECK_S``, ``report``, ``quit``."""
    with trio.move_on_after(deadline_s):
        async with trio.open_nursery() as nursery:
            subscribers = Subscribers(f"ws://127.0.0.1:{port}/subscribe", nursery)
            nursery.start_soon(subscribers.watch_lag)
            while line := await read_command():
                command, _, argument = line.partition(" ")
                if command == "open":
                    opened = await subscribers.open(*map(int, argument.split()))
                    answer({"opened": opened, "connected": subscribers.connected})
                elif command == "close":
                    await subscribers.close()
                    answer({"connected": subscribers.connected})
                elif command == "mark":
                    subscribers.label = argument
                    answer({"label": argument})
                elif command == "snapshot":
                    answer(await subscribers.probe_snapshot(float(argument)))
                elif command == "report":
                    subscribers.report.windows = subscribers.windows()
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    subscribers.report.client_cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
                    answer(subscribers.report)
                elif command == "quit":
                    break
                else:
                    answer({"error": f"unknown command {command!r}"})
            await subscribers.close()
            nursery.cancel_scope.cancel()


def raise_open_files(needed: int) -> None:
    """Raise the soft limit on open files towards ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def client_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bwmon bench fanout: the subscriber process")
    parser.add_argument("--port", type=int, required=True, help="the daemon's HTTP port")
    parser.add_argument("--max-subscribers", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--deadline", type=float, default=600, help="exit after this many s")
    args = parser.parse_args(argv)
    raise_open_files(args.max_subscribers + 256)
    trio.run(client, args.port, args.deadline)


if __name__ == "__main__":
    client_main()
