"""UDP ingest: datagrams → decoded frame batches, handed to a callable as they are read.

The loop waits until the socket is readable, then drains it without blocking in passes of at
most ``drain_per_pass`` datagrams (DESIGN §4: ``await sock.recv()`` per datagram drops most of a
flood; draining reaches the speed of a blocking loop). Each pass hands its frames, one list, to
``deliver`` — in the daemon, the consumer's ``apply``, which aggregates them there and then: a
direct call, so nothing is queued and nothing awaited. Passes are short (32 datagrams by
default) so that a batch is aggregated while its frames are still in the CPU's caches (a long
pass decodes megabytes of objects before it aggregates any); a turn of the loop is several
passes so that the loop's share of the CPU does not shrink with the pass when other tasks, such
as many subscribers, are busy too (docs/BENCHMARKS.md has the figures).

A turn ends at whichever bound comes first (``TurnBounds``): the socket is empty; it read
``TURN_DATAGRAMS`` datagrams; it decoded ``TURN_FRAMES`` frames, valid or not (a datagram
weighs the frames it held, so a batch of 1,000 frames that all fail validation weighs 1,000,
and a datagram rejected whole weighs 1); or ``TURN_S`` seconds have passed since it began. The
frames and the time are checked after each datagram, so a turn lasts at most its time bound
plus one datagram's decode and one pass's aggregation: a datagram cannot be split (PROTOCOL.md
§6: each bad frame is rejected alone, every other frame accepted), and the costliest known take
milliseconds to decode: some 50 KB holding 1,000 frames that each fail validation, and 64 KB of
an array of 65,535 empty elements, rejected whole (it weighs 1: the time bound, not the frame
bound, covers it). Then the loop yields, and every other task gets its step before the next
turn: no input holds the loop longer than a few milliseconds of the daemon's work
(docs/RELIABILITY.md, "Hostile datagrams"). A flood of valid batches meets the datagram bound
first: a turn of small batches ends within the time bound. A turn runs with the garbage
collector off, so that what decoding allocates dies by reference counting before a collection
can promote it to an older generation, where a flood of bad frames would make full collections,
which hold the loop for tens of milliseconds, come often (docs/RELIABILITY.md).

After a wait for its turn longer than ``CATCH_UP_AFTER_S`` (other tasks held the loop: a burst
of new WebSocket connections, a long tick step, a collection) the kernel's buffer may hold more
than a turn reads: the turn reads on, up to ``CATCH_UP_DATAGRAMS`` datagrams, ``CATCH_UP_FRAMES``
frames and ``CATCH_UP_S`` seconds, until the socket is empty, so that the buffer does not
overflow. ``UdpTurns`` keeps the turns' count, how many a frame or time bound ended, and the
longest in wall-clock and in CPU time, for ``/healthz`` (``ingest.udp``) and ``/metrics``.

Admission (``UdpAdmission``, PROTOCOL.md §2.3): with an allowlist, datagrams from other sources
are refused (``forbidden``); with signing keys, datagrams that are not validly signed and fresh
are refused (``bad_signature``) and the others are decoded from their payload; with a source
rate limit, the frames of a source over its rate are refused (``rate_limited``). Each is
checked only when configured: the loop reads the admission once per pass and, with none of the
three, keeps to ``sock.recv`` and the plain decode. Without keys a signed datagram (first byte
0xC1) is refused as ``bad_signature`` too — noticed only when its decode fails, off the good
path.

Never awaits anything but the socket: no database, no Redis, no subscriber.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from collector.allowlist import Allowlist
from collector.ingest.counters import TransportCounters
from collector.ingest.health import TurnsHealth, UdpHealth
from collector.ingest.limits import FORBIDDEN, RATE_LIMITED, SourceLimiter
from collector.logs import get_logger
from protocol import Frame, Limits, ProtocolError, decode_message
from protocol.signing import BAD_SIGNATURE, is_signed, verify_datagram

log = get_logger("ingest.udp")

# recv errors that concern one datagram or the peer, not the socket: skip and go on.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EINTR, errno.ENOMEM, errno.ENOBUFS})
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# What one turn of the loop reads at most: datagrams (in passes of drain_per_pass, or one pass
# if it is larger), frames decoded (valid or not) and seconds; after a wait for its turn
# longer than CATCH_UP_AFTER_S, the CATCH_UP_ bounds. A turn aggregates what it reads while
# every other task waits: the datagram bound ends a turn of small valid batches within the time
# bound (docs/BENCHMARKS.md, "Ingest: the pauses"); the frame and time bounds are for
# datagrams that hold many frames, valid or not, and for a slower machine or build.
TURN_DATAGRAMS = 512
TURN_FRAMES = 2048
TURN_S = 0.005
CATCH_UP_AFTER_S = 0.02
CATCH_UP_DATAGRAMS = 4096
CATCH_UP_FRAMES = 8192
CATCH_UP_S = 0.010


def open_udp_socket(host: str, port: int, receive_buffer_bytes: int) -> socket.socket:
    """Bind a non-blocking UDP socket with a large receive buffer; log the size the kernel gave.

    The kernel clamps SO_RCVBUF to ``net.core.rmem_max``; the deploy notes say how to raise it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    effective = receive_buffer_size(sock)
    if effective < receive_buffer_bytes:
        log.warning(
            "udp_receive_buffer_clamped",
            requested=receive_buffer_bytes,
            effective=effective,
            hint="raise net.core.rmem_max (see deploy/README.md)",
        )
    return sock


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE passes net.core.rmem_max where the process may (CAP_NET_ADMIN).
    if sys.platform == "linux":
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            pass
        else:
            return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def receive_buffer_size(sock: socket.socket) -> int:
    """The usable receive buffer in bytes (Linux reports twice that: it counts bookkeeping)."""
    reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return reported // 2 if sys.platform == "linux" else reported


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (receive buffer full), from /proc/net/udp*.

    None where the platform does not tell.
    """
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == str(inode):
                        return int(fields[-1])
        except OSError:
            continue
    return None


@dataclass(slots=True)
class UdpAdmission:
    """Which datagrams the UDP loop lets in. Mutable on purpose: a reload assigns new keys or a
    new allowlist, or reconfigures the limiter, and the loop sees it from its next pass."""

    keys: tuple[bytes, ...] = ()  # signing keys (auth.datagram_keys(), UTF-8): empty = unsigned
    max_age_s: float = 60.0
    allowlist: Allowlist | None = None
    limiter: SourceLimiter | None = None  # per source address, shared with WebSocket ingest


class TurnBounds:
    """What is left of one turn: frames to decode and the ``time.perf_counter`` deadline;
    ``emptied`` once the socket is empty, ``bounded`` once the frames or the time are spent."""

    __slots__ = ("bounded", "deadline", "emptied", "frames_left")

    def __init__(self, frames: int, deadline: float) -> None:
        self.frames_left = frames
        self.deadline = deadline
        self.emptied = False
        self.bounded = False


class UdpTurns:
    """The turns of the UDP loop: how many, how many a frame or time bound ended, and the
    longest of the last one to two minutes (``WINDOW_S`` windows, the current and the one
    before), in seconds of wall-clock time and of the thread's CPU time. Wall-clock time is how
    long the turn held the loop; CPU time leaves out the time the process waited for a CPU, so
    that the loop's own work shows apart from a busy machine."""

    __slots__ = ("_current", "_previous", "_window_end", "bounded", "turns")

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self.turns = 0
        self.bounded = 0
        self._current = [0.0, 0.0]  # longest turn of this window: wall-clock, CPU
        self._previous = [0.0, 0.0]
        self._window_end = 0.0

    def record(self, wall_s: float, cpu_s: float, ended: float, bounded: bool) -> None:
        """One turn: its wall-clock and CPU seconds, its end on ``time.perf_counter``."""
        self.turns += 1
        if bounded:
            self.bounded += 1
        current = self._current
        if ended >= self._window_end:
            fresh = ended < self._window_end + self.WINDOW_S
            self._previous = current if fresh else [0.0, 0.0]
            current = self._current = [0.0, 0.0]
            self._window_end = ended + self.WINDOW_S
        if wall_s > current[0]:
            current[0] = wall_s
        if cpu_s > current[1]:
            current[1] = cpu_s

    def health(self) -> TurnsHealth:
        return TurnsHealth(
            turns=self.turns,
            turns_bounded=self.bounded,
            turn_max_s=round(max(self._current[0], self._previous[0]), 6),
            turn_cpu_max_s=round(max(self._current[1], self._previous[1]), 6),
        )


def udp_health(
    counters: TransportCounters, turns: UdpTurns, sock: socket.socket | None
) -> UdpHealth:
    """``ingest.udp`` of ``/healthz``: the counters, the loop's turns, and the kernel's drops
    and the receive buffer of ``sock`` (absent while it is not open: before start, and during
    shutdown, when ingest has stopped and HTTP still answers)."""
    if sock is None or sock.fileno() == -1:
        return UdpHealth.of(counters, turns.health())
    return UdpHealth.of(counters, turns.health(), kernel_drops(sock), receive_buffer_size(sock))


async def serve_udp(
    sock: socket.socket,
    deliver: Callable[[list[Frame]], object],
    counters: TransportCounters,
    limits: Limits,
    drain_per_pass: int = 32,
    admission: UdpAdmission | None = None,
    *,
    turns: UdpTurns | None = None,
    turn_datagrams: int = TURN_DATAGRAMS,
    turn_frames: int = TURN_FRAMES,
    turn_s: float = TURN_S,
    catch_up_datagrams: int = CATCH_UP_DATAGRAMS,
    catch_up_frames: int = CATCH_UP_FRAMES,
    catch_up_s: float = CATCH_UP_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read datagrams from ``sock`` until cancelled; ``deliver`` each pass's frames."""
    # One byte more than allowed: a longer datagram is truncated to this and then rejected as
    # too large instead of being decoded from a prefix.
    bufsize = limits.max_message_bytes + 1
    recv = sock.recv
    admit = admission or UdpAdmission()
    stats = turns if turns is not None else UdpTurns()
    clock = time.perf_counter
    cpu_clock = time.thread_time
    turn_passes = max(1, turn_datagrams // drain_per_pass)
    catch_up_passes = max(turn_passes, catch_up_datagrams // drain_per_pass)
    task_status.started()
    last_turn = trio.current_time()
    while True:
        await trio.lowlevel.wait_readable(sock)
        began = clock()
        began_cpu = cpu_clock()
        if trio.current_time() - last_turn > CATCH_UP_AFTER_S:
            passes = catch_up_passes
            turn = TurnBounds(catch_up_frames, began + catch_up_s)
        else:
            passes = turn_passes
            turn = TurnBounds(turn_frames, began + turn_s)
        # No collection within a turn: what decoding allocates dies young, by reference
        # counting, before a collection could promote it (1,000 bad frames are 1,000 error
        # objects alive at once, and promoted ones make full collections, which hold the loop
        # for tens of milliseconds, come often); the next allocation after the turn collects as
        # usual. Left as it was found: a checkpoint disables collections across its steps,
        # between which turns run.
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            for _ in range(passes):
                allowlist = (
                    admit.allowlist
                    if admit.allowlist is not None and admit.allowlist.active
                    else None
                )
                limiter = (
                    admit.limiter if admit.limiter is not None and admit.limiter.enabled else None
                )
                if admit.keys or allowlist is not None or limiter is not None:
                    batch = _drain_admitted(
                        sock,
                        counters,
                        limits,
                        drain_per_pass,
                        turn,
                        admit.keys,
                        admit.max_age_s,
                        allowlist,
                        limiter,
                    )
                else:
                    batch = _drain(recv, bufsize, counters, limits, drain_per_pass, turn)
                if batch:
                    deliver(batch)
                if turn.emptied or turn.bounded:
                    break
        finally:
            if collecting:
                gc.enable()
        ended = clock()
        stats.record(ended - began, cpu_clock() - began_cpu, ended, turn.bounded)
        last_turn = trio.current_time()


def _drain(
    recv: Callable[[int], bytes],
    bufsize: int,
    counters: TransportCounters,
    limits: Limits,
    drain_per_pass: int,
    turn: TurnBounds,
) -> list[Frame]:
    """One pass of the loop with no admission check: the frames of at most ``drain_per_pass``
    datagrams, fewer if the socket empties (``turn.emptied``) or the turn meets a bound
    (``turn.bounded``)."""
    batch: list[Frame] = []
    frames_left = turn.frames_left
    deadline = turn.deadline
    clock = time.perf_counter
    for _ in range(drain_per_pass):
        try:
            data = recv(bufsize)
        except BlockingIOError:
            turn.emptied = True
            break
        except OSError as exc:
            if exc.errno not in _TRANSIENT_ERRNOS:
                raise
            continue
        decoded = decode_message(data, limits)
        frames = decoded.frames
        errors = decoded.errors
        frames_left -= len(frames) + len(errors)
        if errors and is_signed(data) and len(data) < bufsize:
            counters.refuse(BAD_SIGNATURE, len(data))  # "this daemon has no udp key"
        else:
            counters.count(decoded, len(data))
            if frames:
                batch += frames
        if frames_left <= 0 or clock() >= deadline:
            turn.bounded = True
            break
    turn.frames_left = frames_left
    return batch


def _drain_admitted(
    sock: socket.socket,
    counters: TransportCounters,
    limits: Limits,
    drain_per_pass: int,
    turn: TurnBounds,
    keys: tuple[bytes, ...],
    max_age_s: float,
    allowlist: Allowlist | None,
    limiter: SourceLimiter | None,
) -> list[Frame]:
    """One pass of the loop when some admission check is configured: ``recvfrom`` (the source
    address), allowlist, signature, decode, source rate — each only when set. The frames, as
    ``_drain``; a datagram refused before decoding weighs one frame."""
    bufsize = limits.max_message_bytes + 1
    recvfrom = sock.recvfrom
    wall_now = time.time()  # signatures carry wall-clock send times
    now = trio.current_time()  # rate buckets run on the monotonic clock
    batch: list[Frame] = []
    frames_left = turn.frames_left
    deadline = turn.deadline
    clock = time.perf_counter
    for _ in range(drain_per_pass):
        try:
            data, address = recvfrom(bufsize)
        except BlockingIOError:
            turn.emptied = True
            break
        except OSError as exc:
            if exc.errno not in _TRANSIENT_ERRNOS:
                raise
            continue
        frames_left -= _admit(
            data,
            address[0],
            batch,
            counters,
            limits,
            keys,
            max_age_s,
            allowlist,
            limiter,
            wall_now,
            now,
        )
        if frames_left <= 0 or clock() >= deadline:
            turn.bounded = True
            break
    turn.frames_left = frames_left
    return batch


def _admit(
    data: bytes,
    source: str,
    batch: list[Frame],
    counters: TransportCounters,
    limits: Limits,
    keys: tuple[bytes, ...],
    max_age_s: float,
    allowlist: Allowlist | None,
    limiter: SourceLimiter | None,
    wall_now: float,
    now: float,
) -> int:
    """One datagram through the admission checks that are set: its admitted frames appended to
    ``batch``; returns its weight (frames decoded, valid or not; 1 if refused undecoded)."""
    max_bytes = limits.max_message_bytes
    if allowlist is not None and not allowlist.permits(source):
        counters.refuse(FORBIDDEN, len(data))
        return 1
    payload = data
    if keys and len(data) <= max_bytes:  # longer: decoded below as too_large
        verified = verify_datagram(keys, data, wall_now, max_age_s)
        if isinstance(verified, ProtocolError):
            counters.refuse(BAD_SIGNATURE, len(data))
            return 1
        payload = verified
    decoded = decode_message(payload, limits)
    frames = decoded.frames
    weight = len(frames) + len(decoded.errors)
    if not keys and decoded.errors and is_signed(data) and len(data) <= max_bytes:
        counters.refuse(BAD_SIGNATURE, len(data))
        return weight
    counters.count(decoded, len(data))
    if frames and limiter is not None:
        granted = limiter.take(source, len(frames), now)
        if granted < len(frames):
            counters.withdraw(RATE_LIMITED, len(frames) - granted)
            frames = frames[:granted]
    batch += frames
    return weight
