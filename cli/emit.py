"""``bwmon emit``: synthetic clients sending frames to a daemon over UDP or WebSocket.

Participants are sampled round-robin so that the offered rate is even over time (a slice every
few milliseconds), not a burst per interval. The same code is the load generator of
``bwmon bench``: it reports exactly how many frames it sent, so a benchmark can compare them
with what the daemon counted. UDP sends wait for room in the socket buffer rather than drop, so
every frame counted as sent left this process.

Each run is a new emitter (PROTOCOL.md §8.4): a new boot nonce, in the WebSocket hello and in
every frame over UDP, and — unless the profile has a ``seed`` — new random meeting and
connection ids; every stream starts at ``q`` 0 with counters from 0, so that the daemon counts
each stream's first sample in full and a second run, seeded or not, is never taken for a
replay of the first.

With ``udp_key`` every datagram is signed (PROTOCOL.md §2.3) just before it is sent, so its send
time is fresh even when a replay pool was encoded long before; datagrams are then packed under
``budget`` minus the 26-byte envelope, so the signed datagram still fits the budget.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from cli.synthetic import Profile, make_participants, make_routes
from collector.aggregate.rtc import COUNTERS
from protocol import Frame, Hello, RtcSample, encode_json, encode_msgpack
from protocol.emitter import pack, pack_json
from protocol.errors import BwmonError
from protocol.frames import MAX_SECONDS
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome
from protocol.signing import ENVELOPE_BYTES, sign_datagram

T = TypeVar("T")

SLICE_S = 0.005
MAX_JOINS_PER_SLICE = 2_000


@dataclass(frozen=True, slots=True)
class EmitOptions:
    host: str = "127.0.0.1"
    udp_port: int = 8470
    http_port: int = 8470
    transport: str = "udp"  # udp | ws
    encoding: str = "msgpack"  # msgpack | json
    meetings: int = 10
    participants: int = 5  # per meeting
    interval_s: float = 1.0  # between two samples of one participant
    rate: float | None = None  # rtc frames/s in all; when set, overrides interval_s
    duration_s: float = 10.0
    http_routes: int = 4
    joins: bool = True
    budget: int = 1200  # bytes per UDP datagram
    ws_batch: int = 50  # frames per WebSocket message
    # > 0: encode this many rtc frames once and send them round and round, each round going
    # on with every stream's sequence numbers and counters (MessagePack) so that every frame
    # is a new sample, as from a live client: load beyond what live generation reaches.
    replay: int = 0
    profile: Profile = field(default_factory=Profile)
    # Shared key (auth.udp_keys of the daemon): sign every UDP datagram. Empty: unsigned.
    udp_key: str = field(default="", repr=False)


class EmitReport(msgspec.Struct, kw_only=True):
    transport: str
    frames_sent: int = 0
    frames_by_kind: dict[str, int] = msgspec.field(default_factory=dict)
    messages_sent: int = 0  # datagrams or WebSocket messages
    send_errors: int = 0  # datagrams refused by the network stack (nothing listening)
    elapsed_s: float = 0.0  # from the first send (after a replay's pool is built) to the end
    frames_per_s: float = 0.0
    target_rtc_per_s: float = 0.0
    acked_messages: int | None = None
    acked_accepted: int | None = None
    acked_rejected: int | None = None
    error_replies: dict[str, int] = msgspec.field(default_factory=dict)
    # Live runs: audio + video bytes sent by all participants up to the last rtc frame of each
    # that left this process (counted from 0): what the daemon's minute rows must add up to.
    rtc_bytes_sent: float = 0.0


Spans = dict[tuple[str, str, str], float]  # stream -> total of its last frame sent


class FrameSchedule:
    """Which frames are due after ``elapsed`` seconds: joins first, then ``rtc`` round-robin at
    the target rate, and one ``http`` sample per route every interval."""

    def __init__(self, options: EmitOptions) -> None:
        profile = options.profile
        self.boot = os.urandom(8).hex()  # this run's boot nonce (PROTOCOL.md §8.4)
        # Over WebSocket the session's hello carries the boot for every rtc frame.
        in_frames = self.boot if options.transport == "udp" else None
        self.participants = make_participants(
            options.meetings, options.participants, profile, in_frames
        )
        self.routes = make_routes(options.http_routes, self.boot)
        self.interval_s = options.interval_s
        count = len(self.participants)
        self.rate = options.rate if options.rate is not None else count / options.interval_s
        self.dt = count / self.rate if self.rate > 0 else options.interval_s
        self._cycle = itertools.cycle(self.participants)
        self._rng = random.Random(None if profile.seed is None else profile.seed + 2)
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        now_ms = _now_ms()
        self._joins: list[Frame] = (
            [p.join(now_ms) for p in self.participants] if options.joins else []
        )
        self._rtc_sent = 0
        self._next_http = 0.0

    def due(self, elapsed: float) -> list[Frame]:
        frames: list[Frame] = []
        if self._joins:
            frames = self._joins[:MAX_JOINS_PER_SLICE]
            del self._joins[:MAX_JOINS_PER_SLICE]
        if self.participants:
            # A sender that fell behind catches up by at most a few slices at once.
            want = min(
                int(self.rate * elapsed) - self._rtc_sent, max(1, int(self.rate * SLICE_S * 4))
            )
            if want > 0:
                now_ms, dt = _now_ms(), self.dt
                frames += [p.sample(now_ms, dt) for p in itertools.islice(self._cycle, want)]
                self._rtc_sent += want
        if self.routes and elapsed >= self._next_http:
            now_ms = _now_ms()
            frames += [
                r.sample(now_ms, self.interval_s, self._rng, "synthetic-api", self._instance)
                for r in self.routes
            ]
            self._next_http = elapsed + self.interval_s
        return frames


# Replayed ``rtc`` frames carry sequence numbers from 2**32 up (a uint64 in MessagePack); the
# wall-clock milliseconds are added, so that a replay started later continues above an earlier
# one's numbers (as long as no stream gets 1,000 samples a second). On the wire their counters
# count from 2**16 up (seconds counters in whole seconds), so that each is a uint32. With fixed
# widths, a round can advance every stream by adding one integer to the pool (``_Growth``).
REPLAY_SEQ_BASE = 1 << 32
REPLAY_COUNTER_BASE = 1 << 16
_KEYS: Final = {f.name: f.encode_name for f in msgspec.structs.fields(RtcSample)}
_SEQ_KEY: Final = _KEYS["seq"]
_COUNTER_KEYS: Final = tuple(_KEYS[name] for name in COUNTERS)
_SECONDS_KEYS: Final = frozenset(_KEYS[name] for name in COUNTERS if name.endswith("_s"))


class ReplayPool:
    """Pre-encoded messages sent round and round at the schedule's rtc rate.

    With ``grow`` (MessagePack ``rtc`` frames from ``replay_datagrams``: ``replay_grows``)
    every round turns the pool's frames into the next samples of their streams: each stream's
    sequence numbers and counters go on from where the last round left them, as far again as
    they went in the pool. The daemon aggregates every frame as a new sample, with no counter
    reset (PROTOCOL.md §8.2, §8.3), as it would from a live client. Only when a counter would
    outgrow its encoding do the counters start again from the pool's first values: one reset
    per stream, after about a thousand rounds of `bench ingest`'s pool.
    """

    def __init__(self, messages: list[tuple[bytes, int]], rate: float, grow: bool = False) -> None:
        self.messages = list(messages)
        self.rate = rate
        self.rounds = 0
        self._growth = _Growth(self.messages) if grow else None
        self._sent = 0
        self._next = 0

    def restart(self, rate: float) -> None:
        """Pace from now on at ``rate``, going on where the last send stopped (the sequence
        numbers and counters keep growing)."""
        self.rate = rate
        self._sent = 0

    def due(self, elapsed: float) -> list[tuple[bytes, int]]:
        due: list[tuple[bytes, int]] = []
        # As in FrameSchedule: a sender that fell behind catches up by a few slices at most.
        want = min(int(self.rate * elapsed), self._sent + max(1, int(self.rate * SLICE_S * 4)))
        n = len(self.messages)
        while self._sent < want:
            message = self.messages[self._next]
            due.append(message)
            self._sent += message[1]
            self._next += 1
            if self._next == n:
                self._next = 0
                self.rounds += 1
                if self._growth is not None:
                    self.messages = self._growth.next_round()
        return due


class _Growth:
    """A growing pool's rounds. Each stream's sequence number and counters advance by their
    span in the pool every round — last value minus first, plus one step (last minus the one
    before) — so that the next round's first sample follows the last round's last. As their
    widths are fixed, the pool advanced one round encodes to as many bytes as the pool: the
    whole pool as one big-endian integer grows by one integer a round, the difference of the
    two encodings."""

    def __init__(self, messages: list[tuple[bytes, int]]) -> None:
        decoded = [msgspec.msgpack.decode(data) for data, _ in messages]
        by_stream: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for batch in decoded:
            if not isinstance(batch, list):
                raise ValueError("a growing pool holds batches (arrays) of frames")
            for frame in filter(_is_rtc, batch):
                by_stream.setdefault(_stream(frame), []).append(frame)
        spans = {stream: _spans(frames) for stream, frames in by_stream.items()}
        # Rounds the counters can grow before one would outgrow its encoding (or a seconds
        # counter the protocol's MAX_SECONDS); the sequence numbers have 2**53 to go.
        self.counter_rounds_left = min(
            (
                (_room(frames[-1][key], key) - frames[-1][key]) // span
                for stream, frames in by_stream.items()
                for key, span in spans[stream].items()
                if key != _SEQ_KEY and span > 0
            ),
            default=1 << 62,
        )
        self.counter_rounds = 0
        pool = b"".join(data for data, _ in messages)
        advanced = b"".join(_advance(batch, spans) for batch in decoded)
        seq_spans = {stream: {_SEQ_KEY: s[_SEQ_KEY]} for stream, s in spans.items()}
        seq_advanced = b"".join(_advance(batch, seq_spans) for batch in decoded)
        if len(advanced) != len(pool) or len(seq_advanced) != len(pool):
            raise ValueError(
                "a growing pool needs its sequence numbers and counters at fixed widths, "
                "as replay_datagrams encodes them"
            )
        self.pool = int.from_bytes(pool, "big")
        self.step = int.from_bytes(advanced, "big") - self.pool
        self.counter_step = self.step - (int.from_bytes(seq_advanced, "big") - self.pool)
        self.size = len(pool)
        self.bounds: list[tuple[int, int, int]] = []
        at = 0
        for data, count in messages:
            self.bounds.append((at, at + len(data), count))
            at += len(data)

    def next_round(self) -> list[tuple[bytes, int]]:
        """The pool's messages of the next round."""
        if self.counter_rounds < self.counter_rounds_left:
            self.counter_rounds += 1
            self.pool += self.step
        else:  # the sequence numbers go on; the counters start again from their first values
            self.pool += self.step - (self.counter_rounds + 1) * self.counter_step
            self.counter_rounds = 0
        data = self.pool.to_bytes(self.size, "big")
        return [(data[start:end], count) for start, end, count in self.bounds]


def _is_rtc(frame: Any) -> bool:
    return isinstance(frame, dict) and frame.get("t") == "rtc"


def _stream(frame: dict[str, Any]) -> tuple[str, str, str]:
    return (frame["m"], frame["p"], frame["c"])


def _spans(frames: list[dict[str, Any]]) -> dict[str, int]:
    """By key, how far one stream's sequence number and counters go in one round."""
    spans: dict[str, int] = {}
    for key in (_SEQ_KEY, *_COUNTER_KEYS):
        values = [frame[key] for frame in frames if key in frame]
        if not values:
            continue
        if any(type(value) is not int for value in values):
            raise ValueError(
                "a growing pool needs integer counters, as replay_datagrams encodes them"
            )
        step = values[-1] - values[-2] if len(values) > 1 else 1
        spans[key] = values[-1] - values[0] + step
    return spans


def _room(value: int, key: str) -> int:
    """The largest value the encoding that holds ``value`` can hold (MessagePack: the smallest
    that fits), for a seconds counter also no more than MAX_SECONDS."""
    top = next(top for top in (0x7F, 0xFF, 0xFFFF, 0xFFFF_FFFF, 2**64 - 1) if value <= top)
    return min(top, int(MAX_SECONDS)) if key in _SECONDS_KEYS else top


def _advance(batch: list[Any], spans: dict[tuple[str, str, str], dict[str, int]]) -> bytes:
    """A decoded batch encoded again one round on: each ``rtc`` frame's fields advanced by its
    stream's ``spans``."""
    moved = []
    for frame in batch:
        if _is_rtc(frame):
            by_key = spans[_stream(frame)]
            frame = frame | {key: frame[key] + span for key, span in by_key.items() if key in frame}
        moved.append(frame)
    return msgspec.msgpack.encode(moved)


def replay_frames(options: EmitOptions) -> list[Frame]:
    """The ``rtc`` frames a replay sends round and round: the participants in turn, each the
    same number of times (``options.replay`` rounded up to a whole turn), with sequence
    numbers above ``REPLAY_SEQ_BASE`` plus the wall-clock milliseconds."""
    participants = make_participants(options.meetings, options.participants, options.profile)
    if not participants:
        return []
    now_ms = _now_ms()
    base = REPLAY_SEQ_BASE + int(now_ms)
    turns = -(-options.replay // len(participants))
    cycle = itertools.cycle(participants)
    frames: list[Frame] = []
    for i in range(turns * len(participants)):
        sample = next(cycle).sample(now_ms + i, options.interval_s)
        frames.append(msgspec.structs.replace(sample, seq=sample.seq + base))
    return frames


def replay_grows(options: EmitOptions) -> bool:
    """Whether a pool of ``replay_frames`` grows round by round (``ReplayPool``'s ``grow``):
    MessagePack only; JSON pools are sent as they are."""
    return options.encoding == "msgpack"


def replay_datagrams(options: EmitOptions) -> list[tuple[bytes, int]]:
    """The datagrams of a UDP replay, packed under ``options.budget`` as live sends are, with
    the fixed-width fields a growing pool needs (MessagePack)."""
    return list(_datagrams(_on_the_wire(replay_frames(options), options), options))


def _on_the_wire(frames: list[Frame], options: EmitOptions) -> list[Frame]:
    """``frames`` as a growing pool sends them: counters from ``REPLAY_COUNTER_BASE`` up, seconds
    counters in whole seconds (``_Growth``); unchanged for JSON, which is not rewritten."""
    if not replay_grows(options):
        return frames
    return [
        msgspec.structs.replace(
            frame,
            **{
                name: round(value) + REPLAY_COUNTER_BASE
                for name in COUNTERS
                if (value := getattr(frame, name)) is not None
            },
        )
        if isinstance(frame, RtcSample)
        else frame
        for frame in frames
    ]


def _now_ms() -> float:
    return time.time() * 1000


def _count(report: EmitReport, frames: list[Frame], last: Spans) -> None:
    by_kind = report.frames_by_kind
    for frame in frames:
        kind = str(frame.__struct_config__.tag)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if isinstance(frame, RtcSample):
            total = float((frame.audio_bytes_sent or 0) + (frame.video_bytes_sent or 0))
            last[(frame.meeting, frame.participant, frame.connection)] = total
    report.frames_sent += len(frames)


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


def _count_replayed(report: EmitReport, frames: int) -> None:
    report.frames_by_kind["rtc"] = report.frames_by_kind.get("rtc", 0) + frames
    report.frames_sent += frames


def _datagrams(frames: list[Frame], options: EmitOptions) -> Iterator[tuple[bytes, int]]:
    """Unsigned datagrams (payloads), packed so that they fit ``budget`` once signed."""
    budget = options.budget - ENVELOPE_BYTES if options.udp_key else options.budget
    if options.encoding == "json":
        return pack_json((encode_json(f) for f in frames), budget)
    return pack((encode_msgpack(f) for f in frames), budget)


async def _paced(
    duration_s: float,
    due: Callable[[float], list[T]],
    send: Callable[[list[T]], Awaitable[None]],
    sending: Callable[[], None],
) -> None:
    """Every slice, call ``send`` with what ``due`` says is due, for ``duration_s``; call
    ``sending`` first."""
    sending()
    start = trio.current_time()
    deadline = start + duration_s
    tick = start
    while (now := trio.current_time()) < deadline:
        items = due(now - start)
        if items:
            await send(items)
        tick = max(tick + SLICE_S, now)
        await trio.sleep_until(tick)


async def _send_datagram(
    sock: socket.socket, datagram: bytes, report: EmitReport, key: bytes = b""
) -> bool:
    """Send one datagram (signed with ``key``, if any, at this moment), waiting for room in the
    socket buffer; False if it was refused."""
    if key:
        datagram = sign_datagram(key, datagram, time.time())
    if not await send_when_room(sock, datagram):
        report.send_errors += 1
        return False
    report.messages_sent += 1
    return True


async def send_when_room(sock: socket.socket, datagram: bytes) -> bool:
    """Send one datagram on a connected non-blocking UDP socket, waiting for room in its
    buffer; False if the kernel reported the port closed (ICMP port unreachable)."""
    while True:
        try:
            sock.send(datagram)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except ConnectionRefusedError:
            return False
        return True


async def _emit_udp(
    options: EmitOptions,
    schedule: FrameSchedule,
    report: EmitReport,
    spans: Spans,
    sending: Callable[[], None],
) -> None:
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        sock.connect((options.host, options.udp_port))
        key = options.udp_key.encode()

        async def send(frames: list[Frame]) -> None:
            sent: list[Frame] = []
            position = 0
            for datagram, count in _datagrams(frames, options):
                if await _send_datagram(sock, datagram, report, key):
                    sent += frames[position : position + count]
                position += count
            _count(report, sent, spans)

        async def send_replayed(datagrams: list[tuple[bytes, int]]) -> None:
            for datagram, count in datagrams:
                if await _send_datagram(sock, datagram, report, key):
                    _count_replayed(report, count)

        if options.replay:
            pool = ReplayPool(replay_datagrams(options), schedule.rate, replay_grows(options))
            await _paced(options.duration_s, pool.due, send_replayed, sending)
        else:
            await _paced(options.duration_s, schedule.due, send, sending)


_replies_json = msgspec.json.Decoder(SessionMessage)
_replies_msgpack = msgspec.msgpack.Decoder(SessionMessage)


async def _read_replies(ws: WebSocketConnection, report: EmitReport) -> None:
    try:
        while True:
            message = await ws.get_message()
            reply = (
                _replies_json.decode(message)
                if isinstance(message, str)
                else _replies_msgpack.decode(message)
            )
            if isinstance(reply, Ack):
                report.acked_messages = reply.msg
                report.acked_accepted = reply.accepted
                report.acked_rejected = reply.rejected
            elif isinstance(reply, ErrorReply):
                report.error_replies[reply.reason] = report.error_replies.get(reply.reason, 0) + 1
    except ConnectionClosed:
        return


async def _emit_ws(
    options: EmitOptions,
    schedule: FrameSchedule,
    report: EmitReport,
    spans: Spans,
    sending: Callable[[], None],
) -> None:
    text = options.encoding == "json"
    url = f"ws://{options.host}:{options.http_port}/ingest"
    async with open_websocket_url(url, message_queue_size=64) as ws:
        hello = Hello(
            boot=schedule.boot,
            kind="emitter",
            agent="bwmon-emit/0.1",
            host=socket.gethostname()[:128],
            pid=os.getpid(),
        )
        await ws.send_message(encode_json(hello).decode() if text else encode_msgpack(hello))
        first = await ws.get_message()
        welcome = (
            _replies_json.decode(first)
            if isinstance(first, str)
            else _replies_msgpack.decode(first)
        )
        if not isinstance(welcome, Welcome):
            raise EmitError(f"expected welcome, got {welcome!r}")

        def encode(batch: list[Frame]) -> str | bytes:
            return encode_json(batch).decode() if text else encode_msgpack(batch)

        async def send(frames: list[Frame]) -> None:
            for i in range(0, len(frames), options.ws_batch):
                batch = frames[i : i + options.ws_batch]
                await ws.send_message(encode(batch))
                report.messages_sent += 1
                _count(report, batch, spans)

        async def send_replayed(messages: list[tuple[bytes, int]]) -> None:
            for message, count in messages:
                await ws.send_message(message.decode() if text else message)
                report.messages_sent += 1
                _count_replayed(report, count)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_replies, ws, report)
            if options.replay:
                frames = _on_the_wire(replay_frames(options), options)
                batches = [
                    frames[i : i + options.ws_batch]
                    for i in range(0, len(frames), options.ws_batch)
                ]
                pool = ReplayPool(
                    [(_as_bytes(encode(b)), len(b)) for b in batches],
                    schedule.rate,
                    replay_grows(options),
                )
                await _paced(options.duration_s, pool.due, send_replayed, sending)
            else:
                await _paced(options.duration_s, schedule.due, send, sending)
            # Wait for the ack of the last message, so that the report says what was processed.
            with trio.move_on_after(welcome.ack_interval_s * 3 + 5):
                # Acks arrive on the reader task; polling one counter is the simplest wait.
                while report.acked_messages != report.messages_sent:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()


class EmitError(BwmonError):
    """The daemon could not be reached or ended the session; the message says which."""


async def emit(
    options: EmitOptions, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> EmitReport:
    """Send synthetic frames for ``options.duration_s`` seconds and report what was sent.

    Started with ``nursery.start``, it returns once sending begins (a replay's pool is built,
    a WebSocket session open); ``elapsed_s`` counts from then."""
    schedule = FrameSchedule(options)
    report = EmitReport(transport=options.transport, target_rtc_per_s=round(schedule.rate, 1))
    spans: Spans = {}
    started = trio.current_time()

    def sending() -> None:
        nonlocal started
        started = trio.current_time()
        task_status.started()

    if options.transport == "ws":
        url = f"ws://{options.host}:{options.http_port}/ingest"
        try:
            await _emit_ws(options, schedule, report, spans, sending)
        except HandshakeError as exc:
            cause = exc.__cause__
            raise EmitError(f"cannot connect to {url}: {cause or 'handshake failed'}") from None
        except ConnectionClosed as exc:
            raise EmitError(f"{url} closed the session: {exc.reason}") from None
    else:
        await _emit_udp(options, schedule, report, spans, sending)
    report.rtc_bytes_sent = sum(spans.values())
    report.elapsed_s = round(trio.current_time() - started, 3)
    report.frames_per_s = (
        round(report.frames_sent / report.elapsed_s, 1) if report.elapsed_s else 0.0
    )
    return report
