"""UDP ingest on a real loopback socket: decoding, counting, passes and turns;
admission (allowlist, signed datagrams) and per-source rate limits."""

from __future__ import annotations

import gc
import math
import socket
import time
from collections.abc import Iterator
from functools import partial

import msgspec
import pytest
import trio

from collector.allowlist import parse_allowlist
from collector.ingest.counters import TransportCounters
from collector.ingest.health import TurnsHealth
from collector.ingest.limits import SourceLimiter
from collector.ingest.udp import (
    CATCH_UP_AFTER_S,
    CATCH_UP_FRAMES,
    TURN_FRAMES,
    UdpAdmission,
    UdpTurns,
    kernel_drops,
    open_udp_socket,
    receive_buffer_size,
    serve_udp,
    udp_health,
)
from protocol import DEFAULT_LIMITS, Frame, Limits, RtcSample, encode_json, encode_msgpack
from protocol.signing import sign_datagram
from tests.helpers import event, http_sample, rtc, wait_for

LIMITS = Limits(max_message_bytes=2048, max_frames_per_message=10)


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = open_udp_socket("127.0.0.1", 0, 1 << 20)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    yield server, client
    client.close()
    server.close()


async def _collect(receive: trio.MemoryReceiveChannel[list[Frame]], want: int) -> list[Frame]:
    frames: list[Frame] = []
    with trio.fail_after(5):
        while len(frames) < want:
            frames += await receive.receive()
    return frames


async def test_frames_and_rejections_are_counted(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, send.send_nowait, counters, LIMITS)
        client.send(encode_msgpack(rtc(1)))
        client.send(encode_msgpack([rtc(2), http_sample(), event()]))
        client.send(encode_json(rtc(3)))
        client.send(b"\xc1garbage")  # looks signed; this daemon has no key
        client.send(b"x" * 3000)  # over the 2,048-byte limit
        client.send(b'{"t":"nope"}')
        client.send(encode_msgpack([rtc(4)] * 11))  # more frames than allowed
        frames = await _collect(receive, 5)
        await wait_for(lambda: counters.messages == 7)
        nursery.cancel_scope.cancel()
    assert [getattr(f, "seq", None) for f in frames] == [1, 2, 1, None, 3]
    assert counters.frames_accepted == 5
    assert counters.rejected_by_reason == {
        "bad_signature": 1,
        "too_large": 1,
        "unknown_tag": 1,
        "batch_too_large": 1,
    }
    assert counters.messages == 7


class _BatchesPerTurn(trio.abc.Instrument):
    """How many batches each turn (task step) of the UDP loop delivered."""

    def __init__(self, delivered: list[list[Frame]]) -> None:
        self.delivered = delivered
        self.turns: list[int] = []
        self._before = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_udp"):
            self._before = len(self.delivered)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_udp"):
            self.turns.append(len(self.delivered) - self._before)


async def test_a_turn_reads_passes_until_its_budget_and_more_when_the_loop_was_held_up(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Another task's long step holds the loop (passes of 4 datagrams, turns of 8, a catch-up
    of 32, no time bound) while 50 datagrams pile up in the kernel."""
    server, client = udp_pair
    counters = TransportCounters()
    delivered: list[list[Frame]] = []
    turns = _BatchesPerTurn(delivered)
    serve = partial(
        serve_udp, turn_datagrams=8, catch_up_datagrams=32, turn_s=math.inf, catch_up_s=math.inf
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, server, delivered.append, counters, LIMITS, 4)
        await trio.testing.wait_all_tasks_blocked()
        time.sleep(CATCH_UP_AFTER_S * 1.5)  # noqa: ASYNC251 - holding the loop is the point
        for seq in range(1, 51):
            client.send(encode_msgpack(rtc(seq)))
        trio.lowlevel.add_instrument(turns)
        await wait_for(lambda: counters.messages == 50)
        trio.lowlevel.remove_instrument(turns)
        nursery.cancel_scope.cancel()
    # The first turn reads on, pass after pass (each its own batch), as far as the catch-up
    # allows: 32 of the 50 datagrams. Then two passes a turn, the loop no longer held up,
    # until the socket is empty.
    assert [t for t in turns.turns if t] == [8, 2, 2, 1]
    assert [len(b) for b in delivered] == [4] * 12 + [2]
    assert [f.seq for b in delivered for f in b if isinstance(f, RtcSample)] == list(range(1, 51))


class _FramesPerTurn(trio.abc.Instrument):
    """How many frames (accepted or rejected) each turn (task step) of the UDP loop decoded,
    and how many steps other tasks took before each turn."""

    def __init__(self, counters: TransportCounters) -> None:
        self.counters = counters
        self.turns: list[int] = []
        self.others_between: list[int] = []
        self._before = 0
        self._others = 0

    def _decoded(self) -> int:
        return self.counters.frames_accepted + self.counters.frames_rejected

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_udp"):
            self._before = self._decoded()
        else:
            self._others += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_udp") and self._decoded() > self._before:
            self.turns.append(self._decoded() - self._before)
            self.others_between.append(self._others)
            self._others = 0


async def _always_ready() -> None:
    """A task that always has a step to take."""
    while True:
        await trio.lowlevel.checkpoint()


def _thousand_invalid_frames() -> bytes:
    """The worst datagram of issue 23: 1,000 frames (some 50 KB), each failing validation."""
    bad = {"t": "rtc", "m": "m1", "p": "p1", "c": "pc1", "q": -1, "ts": 1.0}
    return encode_msgpack([bad] * DEFAULT_LIMITS.max_frames_per_message)  # type: ignore[list-item]


@pytest.fixture
def big_udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """As ``udp_pair``, with a receive buffer for 30 datagrams of 50 KB."""
    server = open_udp_socket("127.0.0.1", 0, 8 << 20)
    if receive_buffer_size(server) < 4 << 20:
        server.close()
        pytest.skip("the kernel refused a 4 MB receive buffer (net.core.rmem_max)")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    yield server, client
    client.close()
    server.close()


async def test_datagrams_of_a_thousand_invalid_frames_cannot_hold_the_loop(
    big_udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """30 worst-case datagrams queue up while the test holds the loop: 30,000 frames to
    reject, some 4 ms of decoding a datagram. Each turn of the UDP loop decodes at most its
    frame bound and one datagram more (the first turn is a catch-up: the loop waited), and a
    task that is always ready runs between turns."""
    server, client = big_udp_pair
    counters = TransportCounters()
    turns = UdpTurns()
    datagram = _thousand_invalid_frames()
    per_datagram = DEFAULT_LIMITS.max_frames_per_message
    frames = _FramesPerTurn(counters)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_udp, turns=turns), server, lambda batch: None, counters, DEFAULT_LIMITS
        )
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(30):
            client.send(datagram)
        nursery.start_soon(_always_ready)
        trio.lowlevel.add_instrument(frames)
        await wait_for(lambda: counters.messages == 30, timeout_s=60)
        trio.lowlevel.remove_instrument(frames)
        nursery.cancel_scope.cancel()
    assert counters.rejected_by_reason == {"out_of_range": 30 * per_datagram}
    assert sum(frames.turns) == 30 * per_datagram
    assert frames.turns[0] <= CATCH_UP_FRAMES + per_datagram - 1
    assert max(frames.turns[1:]) <= TURN_FRAMES + per_datagram - 1
    # Trio shuffles the order of each batch of steps: the ready task ran once a batch.
    assert sum(frames.others_between) >= len(frames.turns) - 1
    assert turns.turns >= len(frames.turns)
    assert turns.bounded >= len(frames.turns) - 1  # the last turn may have emptied the socket


async def test_a_turn_ends_at_its_time_bound(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """With a time bound of zero, a turn decodes one datagram, however small, and yields."""
    server, client = udp_pair
    counters = TransportCounters()
    turns = UdpTurns()
    delivered: list[list[Frame]] = []
    serve = partial(serve_udp, turns=turns, turn_s=0.0, catch_up_s=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, server, delivered.append, counters, LIMITS)
        await trio.testing.wait_all_tasks_blocked()
        for seq in range(1, 11):
            client.send(encode_msgpack(rtc(seq)))
        await wait_for(lambda: counters.messages == 10)
        nursery.cancel_scope.cancel()
    assert [len(b) for b in delivered] == [1] * 10
    assert turns.turns == 10
    assert turns.bounded == 10
    assert turns.health().turn_max_s > 0
    assert turns.health().turn_cpu_max_s > 0


async def test_admitted_datagrams_weigh_what_they_held(
    big_udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """The same frame bound with an admission check configured (the ``recvfrom`` path):
    refused datagrams weigh one frame, decoded ones all they held."""
    server, _client = big_udp_pair
    counters = TransportCounters()
    frames = _FramesPerTurn(counters)
    admission = UdpAdmission(allowlist=parse_allowlist(["127.0.0.1/32"]))
    datagram = _thousand_invalid_frames()
    per_datagram = DEFAULT_LIMITS.max_frames_per_message
    with _sender("127.0.0.1", server) as allowed, _sender("127.0.0.2", server) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                serve_udp, server, lambda batch: None, counters, DEFAULT_LIMITS, 32, admission
            )
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(20):
                allowed.send(datagram)
                other.send(datagram)
            trio.lowlevel.add_instrument(frames)
            await wait_for(lambda: counters.messages == 40, timeout_s=60)
            trio.lowlevel.remove_instrument(frames)
            nursery.cancel_scope.cancel()
    assert counters.rejected_by_reason == {"out_of_range": 20 * per_datagram, "forbidden": 20}
    assert frames.turns[0] <= CATCH_UP_FRAMES + per_datagram - 1
    assert max(frames.turns[1:]) <= TURN_FRAMES + per_datagram - 1


def test_socket_facts() -> None:
    sock = open_udp_socket("127.0.0.1", 0, 1 << 20)
    try:
        assert receive_buffer_size(sock) >= 65_536
        assert kernel_drops(sock) == 0
    finally:
        sock.close()


KEY = b"a-test-key-of-at-least-32-characters"


def _sender(host: str, server: socket.socket) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.connect(server.getsockname())
    return sock


async def test_only_validly_signed_datagrams_are_accepted(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](100)
    admission = UdpAdmission(keys=(b"x" * 32, KEY), max_age_s=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, send.send_nowait, counters, LIMITS, 512, admission)
        now = time.time()
        client.send(encode_msgpack(rtc(1)))  # unsigned
        client.send(sign_datagram(b"w" * 32, encode_msgpack(rtc(2)), now))  # unknown key
        client.send(sign_datagram(KEY, encode_msgpack(rtc(3)), now - 120))  # stale
        tampered = bytearray(sign_datagram(KEY, encode_msgpack(rtc(4)), now))
        tampered[-1] ^= 1
        client.send(bytes(tampered))
        client.send(sign_datagram(KEY, encode_msgpack([rtc(5), rtc(6)]), now))  # good
        client.send(sign_datagram(KEY, encode_json(rtc(7)), now))  # good, JSON payload
        client.send(sign_datagram(KEY, b'{"t":"nope"}', now))  # signed, but a bad frame
        frames = await _collect(receive, 3)
        await wait_for(lambda: counters.messages == 7)
        nursery.cancel_scope.cancel()
    assert [getattr(f, "seq", None) for f in frames] == [5, 6, 7]
    assert counters.frames_accepted == 3
    assert counters.rejected_by_reason == {"bad_signature": 4, "unknown_tag": 1}


async def test_sources_outside_the_allowlist_are_forbidden(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](100)
    admission = UdpAdmission(allowlist=parse_allowlist(["127.0.0.1/32", "10.0.0.0/8"]))
    with _sender("127.0.0.1", server) as allowed, _sender("127.0.0.2", server) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                serve_udp, server, send.send_nowait, counters, LIMITS, 512, admission
            )
            other.send(encode_msgpack([rtc(1), rtc(2)]))
            allowed.send(encode_msgpack(rtc(3)))
            frames = await _collect(receive, 1)
            await wait_for(lambda: counters.messages == 2)
            nursery.cancel_scope.cancel()
    assert [getattr(f, "seq", None) for f in frames] == [3]
    assert counters.rejected_by_reason == {"forbidden": 1}  # one datagram, never decoded


async def test_a_flooding_source_is_limited_while_another_gets_through(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](10_000)
    # A rate low enough that the test's run time adds no noticeable allowance: the burst is
    # what each source may send.
    limiter = SourceLimiter(per_s=0.01, burst=20)
    admission = UdpAdmission(limiter=limiter)
    with _sender("127.0.0.1", server) as steady, _sender("127.0.0.2", server) as flood:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                serve_udp, server, send.send_nowait, counters, LIMITS, 512, admission
            )
            for seq in range(1, 101):  # 300 frames from .2, 3 to a datagram
                flood.send(encode_msgpack([rtc(seq, meeting="flood")] * 3))
            for seq in range(1, 11):
                steady.send(encode_msgpack(rtc(seq, meeting="steady")))
            await wait_for(lambda: counters.messages == 110)
            nursery.cancel_scope.cancel()
    frames: list[Frame] = []
    while True:
        try:
            frames += receive.receive_nowait()
        except trio.WouldBlock:
            break
    by_meeting = [f.meeting for f in frames if isinstance(f, RtcSample)]
    assert by_meeting.count("steady") == 10
    assert by_meeting.count("flood") == 20
    assert counters.frames_accepted == 30
    assert counters.rejected_by_reason == {"rate_limited": 280}
    assert counters.frames_rejected == 280
    assert limiter.tracked == 2


async def test_admission_can_change_while_running(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](100)
    admission = UdpAdmission()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, send.send_nowait, counters, LIMITS, 512, admission)
        client.send(encode_msgpack(rtc(1)))
        await _collect(receive, 1)
        admission.keys = (KEY,)  # a reload added a key: unsigned datagrams are refused now
        client.send(encode_msgpack(rtc(2)))
        client.send(sign_datagram(KEY, encode_msgpack(rtc(3)), time.time()))
        frames = await _collect(receive, 1)
        await wait_for(lambda: counters.messages == 3)
        nursery.cancel_scope.cancel()
    assert [getattr(f, "seq", None) for f in frames] == [3]
    assert counters.rejected_by_reason == {"bad_signature": 1}


def test_the_longest_turn_is_that_of_the_last_one_to_two_minutes() -> None:
    turns = UdpTurns()
    turns.record(0.020, 0.010, 1_000.0, bounded=True)
    turns.record(0.004, 0.030, 1_030.0, bounded=False)
    assert turns.health() == TurnsHealth(
        turns=2, turns_bounded=1, turn_max_s=0.02, turn_cpu_max_s=0.03
    )
    turns.record(0.001, 0.001, 1_070.0, bounded=False)  # a new window: the last one still counts
    assert (turns.health().turn_max_s, turns.health().turn_cpu_max_s) == (0.02, 0.03)
    turns.record(0.002, 0.001, 1_140.0, bounded=False)  # the window of the long turns is gone
    assert (turns.health().turn_max_s, turns.health().turn_cpu_max_s) == (0.002, 0.001)
    turns.record(0.003, 0.002, 1_500.0, bounded=False)  # after an idle spell: nothing older
    assert (turns.health().turn_max_s, turns.health().turn_cpu_max_s) == (0.003, 0.002)


async def test_the_collector_is_off_within_a_turn_and_left_as_found(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Decoding 1,000 bad frames allocates thousands of objects; a collection within the turn
    would promote them and make full collections frequent. The turn (decoding, and ``deliver``
    aggregating) runs with the collector off; after it the collector is as it was (a
    checkpoint may have disabled it)."""
    server, client = udp_pair
    counters = TransportCounters()
    collector_on: list[bool] = []
    deliver = lambda batch: collector_on.append(gc.isenabled())  # noqa: E731
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, deliver, counters, LIMITS)
        client.send(encode_msgpack(rtc(1)))
        await wait_for(lambda: counters.messages == 1)
        assert gc.isenabled()
        gc.disable()
        try:
            client.send(encode_msgpack(rtc(2)))
            await wait_for(lambda: counters.messages == 2)
            assert not gc.isenabled()
        finally:
            gc.enable()
        nursery.cancel_scope.cancel()
    assert collector_on == [False, False]


def test_udp_health_has_the_sockets_figures_only_while_it_is_open() -> None:
    """Before start and after ingest stopped (HTTP still answers while the daemon drains),
    ``/healthz`` leaves them out instead of failing on a closed socket."""
    counters, turns = TransportCounters(), UdpTurns()
    assert "kernel_drops" not in msgspec.to_builtins(udp_health(counters, turns, None))
    sock = open_udp_socket("127.0.0.1", 0, 1 << 20)
    try:
        open_ = msgspec.to_builtins(udp_health(counters, turns, sock))
        assert open_["receive_buffer_bytes"] > 0
        assert "kernel_drops" in open_
    finally:
        sock.close()
    closed = msgspec.to_builtins(udp_health(counters, turns, sock))
    assert "kernel_drops" not in closed
    assert "receive_buffer_bytes" not in closed
    assert closed["turns"] == 0
