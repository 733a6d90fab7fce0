"""``bwmon bench fanout``: what live subscribers on ``/subscribe`` get and cost the daemon.

One run on one machine, loopback only, bounded in time (docs/BENCHMARKS.md):

- a real ``bwmon serve`` child pinned to CPU 0, storage ``backend = "none"`` (fan-out measured
  apart from storage), ``server.max_connections`` and ``fanout.max_subscribers`` raised, no
  limit of connections per source (every subscriber comes from 127.0.0.1);
- ``bwmon emit`` (a child process) keeps the plan's meetings of 2 live over UDP, one sample per
  participant per second, for the whole run;
- one client process (this module run as ``python -m cli.bench_fanout``, pinned to CPU 1)
  opens the subscribers 100 at a time once the meetings have joined, each a trio-websocket
  connection subscribed to ``meetings`` in MessagePack and followed with its own
  ``TopicMirror``. It times every delta: ``time.time()`` right after the message is read minus
  the delta's ``at`` (the daemon's time of the publish tick; the same machine clock), and
  counts bytes, snapshots, errors and resubscriptions, labelled by the window the run is in;
- a steady window, after the meetings' 5-tick means settled, gives the latency percentiles and
  the mean delta size; a fresh subscribe at its end the size of a snapshot of the same state,
  and every mirror is compared with it when it holds the same position;
- then the daemon's accepted UDP frames/s under a flood (``emit --replay``, bench ingest's
  batched workload, offered more than the daemon takes) is read from ``/healthz`` while the
  flood runs, in ABBA order with the subscribers connected and with them all closed;
- last, a reconnect storm: the subscribers all closed, the same workload offered at
  ``STORM_LOAD`` of what the daemon took per CPU second in the first flood, and all of them
  connecting at once: the datagrams the kernel dropped meanwhile (ingest must not wait on
  subscribers, nor on their handshakes).

Standing in for 1,000 clients, the client process decodes each distinct message once and lets
the mirrors at the same position share their (never modified) entity maps; the sequence rules
are each mirror's own. What it still costs shows in its loop lag and CPU time; a second client
process with ``LIGHT_SUBSCRIBERS`` more, idle but for them, shows the latency a subscriber sees
when its own process is not reading for 1,000.

``--quick`` is a smoke run with 50 subscribers and 50 meetings (CI), not a measurement.

The benchmark drives its client processes with one line of text per command on their stdin
and reads one JSON line per answer on their stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from cli.bench import emit_options
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import EmitOptions, EmitReport, emit
from protocol.errors import BwmonError
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

TARGET_DELTA_LATENCY_P99_MS = 250.0
TARGET_DELTA_BYTES_VS_SNAPSHOT = 0.10
TARGET_INGEST_DROP = 0.10

DAEMON_CPU = 0
CLIENT_CPU = 1
TOPIC = "meetings"
ENCODING = "msgpack"
PARTICIPANTS = 2  # per live meeting
CONNECT_BATCH = 100  # subscribers opened at once: no SYN flood
# A second client process with a few more subscribers, idle but for them, in the steady window
# only: the latency a subscriber sees when its own process is not busy reading the others'.
LIGHT_SUBSCRIBERS = 10
MAX_CONNECTIONS = 4096  # server.max_connections and fanout.max_subscribers of the bench daemon
# The flood: first at full speed (the prime, not counted), then at FLOOD_OVERLOAD times what the
# daemon took from it (per second, or per CPU second if more): more than it takes with or
# without subscribers, and the same offered rate in every phase.
FLOOD_PRIME_OFFERED_FRAMES_PER_S = 2_000_000
FLOOD_OVERLOAD = 3.0
FLOOD_MIN_OFFERED_FRAMES_PER_S = 30_000
FLOOD_BUDGET = 1200  # bytes per datagram, as bench ingest's batched workload
FLOOD_RAMP_S = 0.5  # the flood runs this long before its window opens
STORM_LOAD = 0.5  # the storm's offered rate, of the daemon's frames per CPU second
LAG_PROBE_S = 0.01
MAX_MESSAGE_BYTES = 64 << 20
RECEIVE_BUFFER_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class Plan:
    subscribers: int
    meetings: int
    open_after_s: float  # from the start of emit to opening the subscribers
    warmup_s: float  # from the start of emit to the steady window (at least 2 s after opening)
    steady_s: float
    flood_s: float  # the measured window of one flood phase
    # The measured floods in order, with or without the subscribers connected: ABBA orders
    # cancel a drift of the machine's speed over the run.
    phases: tuple[str, ...]
    settle_s: float  # after the subscribers (re)connected, before a flood
    storm_s: float  # how long UDP is offered in the reconnect storm; the storm starts 1/4 in
    check_s: float  # how long the mirrors are compared with the snapshot probe
    # The children (emit, the clients) stop on their own after this, whatever happens to the
    # benchmark; the benchmark stops them long before.
    bound_s: float


FULL = Plan(
    subscribers=1000,
    meetings=500,
    open_after_s=6,
    warmup_s=12,
    steady_s=20,
    flood_s=3,
    phases=("with", "without", "without", "with", "with", "without", "without", "with"),
    settle_s=2,
    storm_s=6,
    check_s=3,
    bound_s=300,
)
QUICK = Plan(
    subscribers=50,
    meetings=50,
    open_after_s=2,
    warmup_s=5,
    steady_s=3,
    flood_s=1,
    phases=("with", "without"),
    settle_s=0.5,
    storm_s=2,
    check_s=1,
    bound_s=90,
)


# -- results ---------------------------------------------------------------------------------


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


class FloodPhase(msgspec.Struct):
    role: str  # "prime" (not counted), "with" or "without" subscribers
    subscribers: int  # connected at the end of the window (the daemon's /healthz)
    offered_frames_per_s: int
    sent_frames_per_s: float  # what emit got out over its whole run
    accepted_frames_per_s: float  # the daemon's count over the window, all UDP traffic
    loss_fraction: float  # 1 - accepted / sent over the window
    kernel_drops: int
    daemon_cpu_s_per_s: float | None  # CPU time the daemon got over the window (/proc)
    frames_per_daemon_cpu_s: float | None  # accepted frames per CPU second it got


class StormPhase(msgspec.Struct):
    subscribers: int  # that connected at once and got their snapshot
    open_s: float  # from the first connection attempt to the last snapshot
    offered_frames_per_s: int
    datagrams_sent: int  # by the storm's emit
    kernel_drops: int  # datagrams the daemon's socket dropped from start to end (settled)
    datagram_loss: float  # kernel_drops / datagrams_sent


class Counts(msgspec.Struct):
    subscribers_requested: int
    subscribers_connected: int  # that got their first snapshot, at the start
    peak_connected: int
    deltas_received: int
    snapshots_received: int
    heartbeats_received: int
    resyncs: int
    errors: dict[str, int]
    connect_errors: dict[str, int]
    closed_by_daemon: dict[str, int]
    close_errors: dict[str, int]
    meetings_in_final_snapshot: int
    mirrors_compared: int
    mirrors_matching_snapshot: int
    client_cpu_s: float  # the client process's CPU time over the run
    daemon_fanout: dict[str, Any]  # the fanout section of /healthz at the end


class FanoutResult(msgspec.Struct):
    target_delta_latency_p99_ms: float
    target_delta_bytes_vs_snapshot: float
    target_ingest_drop_with_subscribers: float
    meets_target: bool
    latency_meets_target: bool
    bytes_meets_target: bool
    ingest_meets_target: bool
    delta_latency_p50_ms: float
    delta_latency_p99_ms: float
    delta_bytes_vs_snapshot: float
    mean_delta_bytes: float
    snapshot_bytes: int
    encoding: str
    ingest_frames_per_s_without_subscribers: float  # median over the phases
    ingest_frames_per_s_with_subscribers: float
    ingest_drop_with_subscribers: float
    # The same per CPU second the daemon got (/proc): robust to other load on CPU 0.
    ingest_frames_per_daemon_cpu_s_without_subscribers: float | None
    ingest_frames_per_daemon_cpu_s_with_subscribers: float | None
    ingest_drop_per_daemon_cpu_s: float | None
    # The lightly loaded client's subscribers, in the same steady window.
    lightly_loaded_subscribers: int
    lightly_loaded_latency_p50_ms: float | None
    lightly_loaded_latency_p99_ms: float | None
    delta_latency_p50_ms_under_flood: float | None
    delta_latency_p99_ms_under_flood: float | None
    subscribers: int
    meetings: int
    participants_per_meeting: int
    steady_window_s: float
    warmup_s: float
    steady_daemon_cpu_s_per_s: float | None  # CPU time the daemon used in the steady window
    steady_client_cpu_s_per_s: float | None  # and the client process
    cpus: int
    pinned: bool
    counts: Counts
    windows: dict[str, WindowStats]
    phases: list[FloodPhase]
    storm: StormPhase


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(index, len(sorted_values) - 1)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


# -- the client process: the subscribers -----------------------------------------------------


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


async def _command() -> str:
    """The next line from stdin, stripped; empty at the end of input (the benchmark is gone)."""
    line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip()


def _answer(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


async def client(port: int, deadline_s: float) -> None:
    """Run commands from stdin, one per line, answering each with one JSON line:
    ``open N [BATCH]``, ``close``, ``mark LABEL``, ``snapshot CHECK_S``, ``report``, ``quit``."""
    with trio.move_on_after(deadline_s):
        async with trio.open_nursery() as nursery:
            subscribers = Subscribers(f"ws://127.0.0.1:{port}/subscribe", nursery)
            nursery.start_soon(subscribers.watch_lag)
            while line := await _command():
                command, _, argument = line.partition(" ")
                if command == "open":
                    opened = await subscribers.open(*map(int, argument.split()))
                    _answer({"opened": opened, "connected": subscribers.connected})
                elif command == "close":
                    await subscribers.close()
                    _answer({"connected": subscribers.connected})
                elif command == "mark":
                    subscribers.label = argument
                    _answer({"label": argument})
                elif command == "snapshot":
                    _answer(await subscribers.probe_snapshot(float(argument)))
                elif command == "report":
                    subscribers.report.windows = subscribers.windows()
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    subscribers.report.client_cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
                    _answer(subscribers.report)
                elif command == "quit":
                    break
                else:
                    _answer({"error": f"unknown command {command!r}"})
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


# -- the benchmark process -------------------------------------------------------------------


class ClientFailed(BwmonError):
    """The client process exited, answered nonsense, or did not answer in time."""


class ChildProcess:
    """A benchmark's helper child (``command``, pinned to ``cpu``, stderr to ``log``): one
    command line in, one JSON line out."""

    def __init__(self, command: list[str], cpu: int | None, log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        if cpu is not None:
            os.sched_setaffinity(self.process.pid, {cpu})
        self._buffer = b""

    def ask(self, command: str, timeout_s: float = 30.0) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ClientFailed(self._exited(command)) from None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ClientFailed(f"{self.log.stem}: no answer to {command!r} in {timeout_s} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ClientFailed(self._exited(command))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return msgspec.json.decode(line)

    def _exited(self, command: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        return (
            f"{self.log.stem} exited with {self.process.returncode} before answering "
            f"{command!r}: {self.log.read_text(errors='replace')[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ClientFailed, OSError, ValueError):
                self.ask("quit", timeout_s=0.1)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class ClientProcess(ChildProcess):
    """The subscribers' client child (this module run as ``python -m cli.bench_fanout``)."""

    def __init__(self, port: int, cpu: int | None, log: Path, deadline_s: float) -> None:
        command = [sys.executable, "-m", "cli.bench_fanout", "--port", str(port)]
        command += ["--max-subscribers", str(MAX_CONNECTIONS), "--deadline", str(deadline_s)]
        super().__init__(command, cpu, log)


@contextlib.contextmanager
def child(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Terminate (then kill) a child process on the way out, whatever happens."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_subscribers(daemon: DaemonProcess, count: int, timeout_s: float = 15.0) -> int:
    """Wait until the daemon counts ``count`` subscribers; the last count seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen: int = daemon.health()["fanout"]["subscribers"]
        if seen == count or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far; None where
    ``/proc`` does not tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_emit(nursery: trio.Nursery, options: EmitOptions) -> list[EmitReport]:
    """Start ``emit`` in ``nursery``; return once it sends (its replay pool built). The list
    it returns holds emit's report once emit is done."""
    reports: list[EmitReport] = []

    async def send(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reports.append(await emit(options, task_status=task_status))

    await nursery.start(send)
    return reports


async def flood(daemon: DaemonProcess, role: str, offered: int, seconds: float) -> FloodPhase:
    """The daemon's accepted UDP frames/s while ``emit --replay`` (bench ingest's batched
    workload) offers ``offered`` frames/s: ``/healthz`` (and the daemon's CPU time) read
    ``FLOOD_RAMP_S`` into the flood and ``seconds`` later, both while the flood runs."""
    options = emit_options(daemon, offered, FLOOD_RAMP_S + seconds + 0.5, budget=FLOOD_BUDGET)

    def udp() -> tuple[dict[str, Any], int, float | None, float]:
        """The UDP counters, subscribers and the daemon's CPU time, and when (the middle of the
        request: the daemon may take a while to answer under the flood)."""
        asked = time.monotonic()
        health = daemon.health()
        cpu = process_cpu_s(daemon.process.pid)
        at = (asked + time.monotonic()) / 2
        return health["ingest"]["udp"], health["fanout"]["subscribers"], cpu, at

    async with trio.open_nursery() as nursery:
        reports = await start_emit(nursery, options)
        await trio.sleep(FLOOD_RAMP_S)
        before, _, cpu_before, started = await trio.to_thread.run_sync(udp)
        await trio.sleep(seconds)
        after, subscribers, cpu_after, ended = await trio.to_thread.run_sync(udp)
    window = ended - started
    report = reports[0]
    sent_rate = report.frames_sent / report.elapsed_s if report.elapsed_s else 0.0
    accepted = after["frames_accepted"] - before["frames_accepted"]
    cpu = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
    return FloodPhase(
        role=role,
        subscribers=subscribers,
        offered_frames_per_s=offered,
        sent_frames_per_s=round(sent_rate, 1),
        accepted_frames_per_s=round(accepted / window, 1),
        loss_fraction=round(max(0.0, 1 - accepted / (sent_rate * window)), 4) if sent_rate else 0,
        kernel_drops=(after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0),
        daemon_cpu_s_per_s=round(cpu / window, 3) if cpu is not None else None,
        frames_per_daemon_cpu_s=round(accepted / cpu, 1) if cpu else None,
    )


async def storm(
    daemon: DaemonProcess, client: ClientProcess, subscribers: int, offered: int, seconds: float
) -> StormPhase:
    """UDP offered at ``offered`` frames/s for ``seconds`` while, from a quarter in, the
    client connects ``subscribers`` subscribers all at once; the datagrams the daemon lost.
    Drops happen as datagrams arrive: once emit is done and the daemon caught up, the count
    is final (the live meetings' emitter goes on, so the counters never stand still)."""
    options = emit_options(daemon, offered, seconds, budget=FLOOD_BUDGET)
    before = (await trio.to_thread.run_sync(daemon.health))["ingest"]["udp"]
    async with trio.open_nursery() as nursery:
        reports = await start_emit(nursery, options)
        await trio.sleep(seconds / 4)
        started = trio.current_time()
        answer = await trio.to_thread.run_sync(
            client.ask, f"open {subscribers} {subscribers}", 30.0 + subscribers / 10
        )
        open_s = trio.current_time() - started
    await trio.sleep(1)  # the daemon reads what is still in its socket
    after = (await trio.to_thread.run_sync(daemon.health))["ingest"]["udp"]
    sent = reports[0].messages_sent
    drops = (after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0)
    return StormPhase(
        subscribers=answer["opened"],
        open_s=round(open_s, 3),
        offered_frames_per_s=offered,
        datagrams_sent=sent,
        kernel_drops=drops,
        datagram_loss=round(drops / sent, 5) if sent else 0.0,
    )


def live_emitter(daemon: DaemonProcess, plan: Plan, log: Path) -> subprocess.Popen[bytes]:
    """``bwmon emit`` keeping the plan's meetings live: one sample per participant per second
    for longer than the run (it is terminated at the end)."""
    command = [sys.executable, "-m", "cli.main", "emit", "--host", "127.0.0.1"]
    command += ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    command += ["--meetings", str(plan.meetings), "--participants", str(PARTICIPANTS)]
    command += ["--interval", "1", "--http-routes", "0", "--duration", str(plan.bound_s)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _sleep_until(monotonic: float) -> None:
    time.sleep(max(0.0, monotonic - time.monotonic()))


class Measured(msgspec.Struct):
    opened: int  # subscribers that got their first snapshot, at the start
    light: WindowStats  # the steady window of the lightly loaded client
    probe: SnapshotProbe
    phases: list[FloodPhase]
    storm: StormPhase
    report: ClientReport
    fanout: dict[str, Any]  # the daemon's /healthz fanout section at the end
    steady_daemon_cpu_s_per_s: float | None
    steady_client_cpu_s_per_s: float | None


def _cpu_rates(
    pids: tuple[int, int], before: tuple[float | None, ...], seconds: float
) -> tuple[float | None, ...]:
    after = tuple(process_cpu_s(pid) for pid in pids)
    return tuple(
        round((a - b) / seconds, 3) if a is not None and b is not None else None
        for a, b in zip(after, before, strict=True)
    )


def measure(
    daemon: DaemonProcess,
    client: ClientProcess,
    lightly_loaded: ClientProcess,
    plan: Plan,
    emit_started: float,
) -> Measured:
    """The steady window, the snapshot probe, then the flood phases."""
    open_timeout = 30.0 + plan.subscribers / 10
    _sleep_until(emit_started + plan.open_after_s)
    opened: int = client.ask(f"open {plan.subscribers}", open_timeout)["opened"]
    lightly_loaded.ask(f"open {LIGHT_SUBSCRIBERS}", open_timeout)
    _sleep_until(max(emit_started + plan.warmup_s, time.monotonic() + 2))
    pids = (daemon.process.pid, client.process.pid)
    client.ask("mark steady")
    lightly_loaded.ask("mark steady")
    cpu = tuple(process_cpu_s(pid) for pid in pids)
    time.sleep(plan.steady_s)
    steady_cpu = _cpu_rates(pids, cpu, plan.steady_s)
    client.ask("mark after-steady")
    lightly_loaded.ask("mark after-steady")
    light = msgspec.convert(lightly_loaded.ask("report"), ClientReport)
    lightly_loaded.ask("close", 30)
    probe = msgspec.convert(client.ask(f"snapshot {plan.check_s}"), SnapshotProbe)
    # A first flood, not counted: the flood's own meetings exist in every measured phase, and
    # what the daemon takes per CPU second from a sender at full speed sets the offered rate
    # of the others.
    client.ask("mark prime")
    prime = trio.run(flood, daemon, "prime", FLOOD_PRIME_OFFERED_FRAMES_PER_S, plan.flood_s)
    capacity = max(prime.frames_per_daemon_cpu_s or 0, prime.accepted_frames_per_s)
    offered = int(
        min(
            FLOOD_PRIME_OFFERED_FRAMES_PER_S,
            max(FLOOD_MIN_OFFERED_FRAMES_PER_S, round(FLOOD_OVERLOAD * capacity, -4)),
        )
    )
    phases = [prime]
    connected = True
    for role in plan.phases:
        if role == "with" and not connected:
            client.ask(f"open {plan.subscribers}", open_timeout)
            _wait_subscribers(daemon, plan.subscribers)
            time.sleep(plan.settle_s)
        elif role == "without" and connected:
            client.ask("close", 60)
            _wait_subscribers(daemon, 0)
            time.sleep(plan.settle_s / 2)
        connected = role == "with"
        client.ask("mark flood" if connected else "mark between")
        phases.append(trio.run(flood, daemon, role, offered, plan.flood_s))
        client.ask("mark between")
    if connected:
        client.ask("close", 60)
        _wait_subscribers(daemon, 0)
        time.sleep(plan.settle_s / 2)
    client.ask("mark storm")
    storm_offered = max(1000, int(round(STORM_LOAD * capacity, -3)))
    stormed = trio.run(storm, daemon, client, plan.subscribers, storm_offered, plan.storm_s)
    return Measured(
        opened=opened,
        light=light.windows.get("steady", WindowStats()),
        probe=probe,
        phases=phases,
        storm=stormed,
        report=msgspec.convert(client.ask("report"), ClientReport),
        fanout=daemon.health()["fanout"],
        steady_daemon_cpu_s_per_s=steady_cpu[0],
        steady_client_cpu_s_per_s=steady_cpu[1],
    )


def run_fanout(quick: bool) -> FanoutResult:
    plan = QUICK if quick else FULL
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    pinned = cpus >= 2 and {DAEMON_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)
    original = os.sched_getaffinity(0) if pinned else None
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        raise_open_files(MAX_CONNECTIONS + 256)  # the daemon inherits it
        if pinned:
            os.sched_setaffinity(0, {CLIENT_CPU})  # the children inherit it too
        with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
            config = Path(tmp) / "collector.toml"
            config.write_text(
                f"[server]\nmax_connections = {MAX_CONNECTIONS}\n"
                f"[storage]\nbackend = 'none'\nstate_dir = '{tmp}'\n"
                f"[fanout]\nmax_subscribers = {MAX_CONNECTIONS}\n"
                # Every subscriber comes from 127.0.0.1.
                "[limits]\nmax_connections_per_source = 0\n"
            )
            with running_daemon(
                Path(tmp) / "bench-daemon.log",
                ["--config", str(config)],
                cpu=DAEMON_CPU if pinned else None,
            ) as daemon:
                emit_started = time.monotonic()
                with child(live_emitter(daemon, plan, Path(tmp) / "emit.log")):
                    cpu = CLIENT_CPU if pinned else None
                    logs, bound = Path(tmp), plan.bound_s
                    client = ClientProcess(daemon.http_port, cpu, logs / "client.log", bound)
                    try:
                        lightly_loaded = ClientProcess(
                            daemon.http_port, cpu, logs / "lightly-loaded.log", bound
                        )
                        try:
                            measured = measure(daemon, client, lightly_loaded, plan, emit_started)
                        finally:
                            lightly_loaded.stop()
                    finally:
                        client.stop()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        if original is not None:
            os.sched_setaffinity(0, original)
    return _result(plan, measured, cpus, pinned)


def _result(plan: Plan, measured: Measured, cpus: int, pinned: bool) -> FanoutResult:
    probe, phases, report = measured.probe, measured.phases, measured.report
    steady = report.windows.get("steady", WindowStats())
    flooded = report.windows.get("flood", WindowStats())
    p50 = steady.latency_p50_ms if steady.latency_p50_ms is not None else math.inf
    p99 = steady.latency_p99_ms if steady.latency_p99_ms is not None else math.inf
    mean_bytes = steady.mean_delta_bytes or 0.0
    ratio = round(mean_bytes / probe.snapshot_bytes, 4) if probe.snapshot_bytes else math.inf
    without = median([p.accepted_frames_per_s for p in phases if p.role == "without"])
    with_ = median([p.accepted_frames_per_s for p in phases if p.role == "with"])
    drop = round(1 - with_ / without, 4) if without else math.inf
    efficiency = {
        role: [
            p.frames_per_daemon_cpu_s
            for p in phases
            if p.role == role and p.frames_per_daemon_cpu_s is not None
        ]
        for role in ("with", "without")
    }
    cpu_without = round(median(efficiency["without"]), 1) if efficiency["without"] else None
    cpu_with = round(median(efficiency["with"]), 1) if efficiency["with"] else None
    cpu_drop = round(1 - cpu_with / cpu_without, 4) if cpu_with and cpu_without else None
    latency_ok = p99 <= TARGET_DELTA_LATENCY_P99_MS
    bytes_ok = ratio <= TARGET_DELTA_BYTES_VS_SNAPSHOT
    ingest_ok = drop <= TARGET_INGEST_DROP
    return FanoutResult(
        target_delta_latency_p99_ms=TARGET_DELTA_LATENCY_P99_MS,
        target_delta_bytes_vs_snapshot=TARGET_DELTA_BYTES_VS_SNAPSHOT,
        target_ingest_drop_with_subscribers=TARGET_INGEST_DROP,
        meets_target=latency_ok and bytes_ok and ingest_ok,
        latency_meets_target=latency_ok,
        bytes_meets_target=bytes_ok,
        ingest_meets_target=ingest_ok,
        delta_latency_p50_ms=p50,
        delta_latency_p99_ms=p99,
        delta_bytes_vs_snapshot=ratio,
        mean_delta_bytes=mean_bytes,
        snapshot_bytes=probe.snapshot_bytes,
        encoding=ENCODING,
        ingest_frames_per_s_without_subscribers=round(without, 1),
        ingest_frames_per_s_with_subscribers=round(with_, 1),
        ingest_drop_with_subscribers=drop,
        ingest_frames_per_daemon_cpu_s_without_subscribers=cpu_without,
        ingest_frames_per_daemon_cpu_s_with_subscribers=cpu_with,
        ingest_drop_per_daemon_cpu_s=cpu_drop,
        lightly_loaded_subscribers=LIGHT_SUBSCRIBERS,
        lightly_loaded_latency_p50_ms=measured.light.latency_p50_ms,
        lightly_loaded_latency_p99_ms=measured.light.latency_p99_ms,
        delta_latency_p50_ms_under_flood=flooded.latency_p50_ms,
        delta_latency_p99_ms_under_flood=flooded.latency_p99_ms,
        subscribers=plan.subscribers,
        meetings=plan.meetings,
        participants_per_meeting=PARTICIPANTS,
        steady_window_s=plan.steady_s,
        warmup_s=plan.warmup_s,
        steady_daemon_cpu_s_per_s=measured.steady_daemon_cpu_s_per_s,
        steady_client_cpu_s_per_s=measured.steady_client_cpu_s_per_s,
        cpus=cpus,
        pinned=pinned,
        counts=Counts(
            subscribers_requested=plan.subscribers,
            subscribers_connected=measured.opened,
            peak_connected=report.peak_connected,
            deltas_received=report.deltas,
            snapshots_received=report.snapshots,
            heartbeats_received=report.heartbeats,
            resyncs=report.resyncs,
            errors=report.errors,
            connect_errors=report.connect_errors,
            closed_by_daemon=report.closed_by_daemon,
            close_errors=report.close_errors,
            meetings_in_final_snapshot=probe.entities,
            mirrors_compared=probe.mirrors_compared,
            mirrors_matching_snapshot=probe.mirrors_matching,
            client_cpu_s=report.client_cpu_s,
            daemon_fanout=measured.fanout,
        ),
        windows=report.windows,
        phases=phases,
        storm=measured.storm,
    )


def print_summary(result: FanoutResult) -> None:
    """A readable table of the figures, their targets and the verdicts, then the counts."""

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    def ms(*values: float | None) -> str:
        return " / ".join("-" if v is None else f"{v:,.1f}" for v in values)

    steady = result.windows.get("steady", WindowStats())
    per_cpu = result.ingest_drop_per_daemon_cpu_s
    rows = [
        ("delta latency p50 (ms)", ms(result.delta_latency_p50_ms), "", ""),
        (
            "delta latency p99 (ms)",
            ms(result.delta_latency_p99_ms),
            f"<= {result.target_delta_latency_p99_ms:g}",
            verdict(result.latency_meets_target),
        ),
        (
            "  first subscriber's latency p50 / p99 (ms)",
            ms(steady.first_latency_p50_ms, steady.first_latency_p99_ms),
            "",
            "",
        ),
        (
            "  first to last subscriber p50 / p99 (ms)",
            ms(steady.spread_p50_ms, steady.spread_p99_ms),
            "",
            "",
        ),
        ("  client loop lag p99 (ms)", ms(steady.client_lag_p99_ms), "", ""),
        (
            f"  {result.lightly_loaded_subscribers} more in a lightly loaded client p50 / p99 (ms)",
            ms(result.lightly_loaded_latency_p50_ms, result.lightly_loaded_latency_p99_ms),
            "",
            "",
        ),
        (
            "  CPU s/s daemon / client",
            f"{result.steady_daemon_cpu_s_per_s} / {result.steady_client_cpu_s_per_s}",
            "",
            "",
        ),
        (
            "delta bytes / snapshot bytes",
            f"{result.delta_bytes_vs_snapshot:.4f} "
            f"({result.mean_delta_bytes:,.0f} / {result.snapshot_bytes:,} B)",
            f"<= {result.target_delta_bytes_vs_snapshot:g}",
            verdict(result.bytes_meets_target),
        ),
        (
            "ingest frames/s without / with subscribers",
            f"{result.ingest_frames_per_s_without_subscribers:,.0f} / "
            f"{result.ingest_frames_per_s_with_subscribers:,.0f}",
            "",
            "",
        ),
        (
            "ingest drop with subscribers",
            f"{result.ingest_drop_with_subscribers:.4f}",
            f"<= {result.target_ingest_drop_with_subscribers:g}",
            verdict(result.ingest_meets_target),
        ),
        (
            "  the same per daemon CPU second",
            "-"
            if per_cpu is None
            else f"{per_cpu:.4f} ({result.ingest_frames_per_daemon_cpu_s_without_subscribers:,.0f}"
            f" / {result.ingest_frames_per_daemon_cpu_s_with_subscribers:,.0f} frames/CPU-s)",
            "",
            "",
        ),
        (
            "delta latency p50 / p99 under flood (ms)",
            ms(result.delta_latency_p50_ms_under_flood, result.delta_latency_p99_ms_under_flood),
            "",
            "",
        ),
    ]
    echo = sys.stdout.write
    echo(
        f"bwmon bench fanout: {result.subscribers:,} subscribers on `{TOPIC}`, "
        f"{result.meetings:,} live meetings of {result.participants_per_meeting} "
        f"({result.encoding}; steady window {result.steady_window_s:g} s from "
        f"{result.warmup_s:g} s after emit started; pinned: {result.pinned})\n"
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in (("figure", "measured", "target", "verdict"), *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        echo("  ".join(cells).rstrip() + "\n")
    c = result.counts
    echo(
        f"subscribers connected {c.subscribers_connected:,}/{c.subscribers_requested:,} "
        f"(peak {c.peak_connected:,}); deltas received {c.deltas_received:,}; snapshots "
        f"{c.snapshots_received:,}; heartbeats {c.heartbeats_received:,}; resyncs {c.resyncs}; "
        f"errors {c.errors or 0}; connect errors {c.connect_errors or 0}; closed by the daemon "
        f"{c.closed_by_daemon or 0}; errors closing {c.close_errors or 0}; meetings in the "
        "final snapshot "
        f"{c.meetings_in_final_snapshot:,}; mirrors equal to it {c.mirrors_matching_snapshot:,}"
        f"/{c.mirrors_compared:,}\n"
    )
    for phase in result.phases:
        echo(
            f"flood ({phase.role}) with {phase.subscribers:,} subscribers: "
            f"{phase.accepted_frames_per_s:,.0f} accepted frames/s of "
            f"{phase.sent_frames_per_s:,.0f} sent (offered {phase.offered_frames_per_s:,}; "
            f"loss {phase.loss_fraction:.1%}; kernel drops {phase.kernel_drops:,}; daemon CPU "
            f"{phase.daemon_cpu_s_per_s} s/s, {phase.frames_per_daemon_cpu_s or 0:,.0f} "
            "frames/CPU-s)\n"
        )
    storm = result.storm
    echo(
        f"reconnect storm: {storm.subscribers:,} subscribers connected at once in "
        f"{storm.open_s:.2f} s while UDP was offered {storm.offered_frames_per_s:,} frames/s: "
        f"kernel drops {storm.kernel_drops:,} of {storm.datagrams_sent:,} datagrams "
        f"({storm.datagram_loss:.3%})\n"
    )
    echo(f"all targets: {'met' if result.meets_target else 'NOT met'}\n")


if __name__ == "__main__":
    client_main()
