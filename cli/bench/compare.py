"""Ingest side by side, for ``bwmon bench all``: bwmon, the bare receiver and StatsD.

Three receivers on CPU 0 — a real ``bwmon serve``, the bare receiver (``cli.bench.ceiling``:
drain loop + ``decode_message``) and StatsD (``cli.bench.statsd``) — fed in turn by one sender
on CPU 1 with the same participant-samples: bench ingest's replayed workload (20,000 full
``rtc`` frames of 200 meetings of 5, batched under 1,200 bytes) to bwmon and to the bare
receiver, the same samples as StatsD lines (batched under 1,200 bytes) to StatsD. For each,
bench ingest's lossless rate search gives the highest rate with loss under 0.1 %. The three
searches of a run take turns step by step (``interleaved_searches``), so that they span the
same stretch of time; ratios are taken pair by pair within one run.

The sender is one function for the three receivers (``send_paced``): ``emit --replay``'s
pacing (``ReplayPool``, a slice every 5 ms) of pre-built datagrams on one non-blocking socket,
waiting for room in its buffer rather than dropping, so that every unit counted as sent left
this process. The three receivers get the same receive buffer: what StatsD's Node.js socket can
get (``SO_RCVBUF``, clamped to ``net.core.rmem_max``), which the daemon and the bare receiver
are configured to (the daemon's default asks for 8 MiB).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from cli.bench.harness import (
    DAEMON_CPU,
    DATAGRAM_BUDGET,
    MAX_LOSS,
    ChildProcess,
    SearchResult,
    UdpStep,
    decode_ceiling,
    emit_options,
    loss_fraction,
    pinned_to_sender_cpu,
    rate_search,
)
from cli.bench.statsd import (
    STATSD_VERSION,
    StatsdProcess,
    StatsdUnavailable,
    pack_lines,
    prepare,
    running_statsd,
    sample_lines,
)
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import (
    SLICE_S,
    ReplayPool,
    replay_datagrams,
    replay_frames,
    replay_grows,
    send_when_room,
)
from collector.config import IngestConfig
from protocol import RtcSample

TARGET_RATIO_VS_STATSD = 10.0
TARGET_RATIO_TO_CEILING = 0.5


@dataclass(frozen=True, slots=True)
class ComparePlan:
    runs: int
    step_s: float
    start_frames_per_s: float  # bwmon and the bare receiver
    start_samples_per_s: float  # StatsD
    refine_steps: int
    ceiling_s: float  # how long the decoder's ceiling is measured


COMPARE_FULL = ComparePlan(
    runs=3,
    step_s=2.0,
    start_frames_per_s=40_000,
    start_samples_per_s=2_000,
    refine_steps=4,
    ceiling_s=2.0,
)
COMPARE_QUICK = ComparePlan(
    runs=1,
    step_s=0.3,
    start_frames_per_s=40_000,
    start_samples_per_s=2_000,
    refine_steps=1,
    ceiling_s=0.5,
)


# -- the sender ------------------------------------------------------------------------------


class Sent(msgspec.Struct):
    units: int  # frames, or StatsD lines
    datagrams: int
    elapsed_s: float


async def send_paced(port: int, pool: ReplayPool, rate: float, seconds: float) -> Sent:
    """``rate`` units per second (the pool's datagrams say how many each holds) to
    127.0.0.1:``port`` for ``seconds``, paced as ``emit --replay`` paces (``ReplayPool``, one
    slice every ``SLICE_S``), going on where the pool's last send stopped (its sequence
    numbers keep growing from step to step); a full socket buffer is waited for, never
    dropped."""
    pool.restart(rate)
    sent = Sent(0, 0, 0.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        start = trio.current_time()
        deadline, tick = start + seconds, start
        while (now := trio.current_time()) < deadline:
            for data, count in pool.due(now - start):
                if await send_when_room(sock, data):
                    sent.units += count
                    sent.datagrams += 1
            tick = max(tick + SLICE_S, now)
            await trio.sleep_until(tick)
        sent.elapsed_s = round(trio.current_time() - start, 3)
    return sent


def settled(read: Callable[[], int], timeout_s: float = 10.0) -> int:
    """``read()`` once the count stopped moving (the receiver read what was sent to it)."""
    last = read()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now == last:
            return now
        last = now
    return last


def paced_step(
    count: Callable[[], int],
    port: int,
    pool: ReplayPool,
    rate: float,
    seconds: float,
    units_per_item: float = 1.0,
) -> UdpStep:
    """One step of a rate search: ``rate`` items/s (frames or participant-samples) for
    ``seconds``; ``count()`` is the receiver's total of units received so far."""
    before = settled(count)
    sent = trio.run(send_paced, port, pool, rate * units_per_item, seconds)
    accepted_units = settled(count) - before
    sent_items = round(sent.units / units_per_item)
    accepted = round(accepted_units / units_per_item)
    return UdpStep(
        offered_frames_per_s=round(rate),
        sent_frames=sent_items,
        accepted_frames=accepted,
        accepted_frames_per_s=round(accepted / seconds, 1),
        loss_fraction=loss_fraction(sent.units, accepted_units),
        kernel_drops=0,
    )


# -- the receivers ---------------------------------------------------------------------------


class BareReceiver(ChildProcess):
    """The bare receiver child (``cli.bench.ceiling``): one command line in, one JSON line out."""

    def __init__(self, receive_buffer_bytes: int, cpu: int | None, log: Path) -> None:
        command = [sys.executable, "-m", "cli.bench.ceiling"]
        command += ["--receive-buffer", str(receive_buffer_bytes), "--deadline", "900"]
        super().__init__(command, cpu, log)
        try:
            address = self.ask("port")
        except BaseException:
            self.stop()
            raise
        self.port: int = address["port"]
        self.receive_buffer_bytes: int = address["receive_buffer_bytes"]

    def frames(self) -> int:
        count: int = self.ask("count")["frames"]
        return count


@contextmanager
def bare_receiver(receive_buffer_bytes: int, cpu: int | None, log: Path) -> Iterator[BareReceiver]:
    receiver = BareReceiver(receive_buffer_bytes, cpu, log)
    try:
        yield receiver
    finally:
        receiver.stop()


def statsd_receive_buffer() -> int:
    """What a socket without CAP_NET_ADMIN gets for the daemon's 8 MiB: ``rmem_max`` caps it."""
    wanted = IngestConfig().udp_receive_buffer_bytes
    try:
        with open("/proc/sys/net/core/rmem_max", encoding="ascii") as rmem_max:
            return min(wanted, int(rmem_max.read()))
    except (OSError, ValueError):
        return wanted


# -- ingest side by side ---------------------------------------------------------------------


class Search(msgspec.Struct):
    receiver: str  # bwmon | bare | statsd
    unit: str  # what the rates count: rtc frames, or participant-samples (StatsD)
    rate: float  # the best lossless accepted rate, 0 if even the first step lost
    loss_fraction: float
    sender_bound: bool  # the sender got out less than 95 % of the offered rate at the best
    steps: list[UdpStep]


class CompareRun(msgspec.Struct):
    bwmon: Search
    bare: Search
    statsd: Search | None
    ratio_to_ceiling: float | None
    ratio_vs_statsd: float | None


class CompareResult(msgspec.Struct):
    runs: list[CompareRun]
    frames_per_datagram: float  # bwmon and the bare receiver
    datagram_bytes: float
    statsd_lines_per_sample: float
    statsd_samples_per_datagram: float
    statsd_datagram_bytes: float
    statsd_version: str | None
    statsd_skipped: str | None
    receive_buffer_bytes: dict[str, int]  # per receiver, what the kernel gave
    decode_frames_per_s: float  # decode_message alone in this process, no sockets
    step_s: float
    pinned: bool
    warmup: dict[str, UdpStep]  # per receiver, the step that is not counted


def _search(name: str, unit: str, result: SearchResult, step_s: float) -> Search:
    best, steps = result
    bound = best is not None and best.sent_frames < 0.95 * best.offered_frames_per_s * step_s
    return Search(
        receiver=name,
        unit=unit,
        rate=best.accepted_frames_per_s if best else 0.0,
        loss_fraction=best.loss_fraction if best else 1.0,
        sender_bound=bound,
        steps=steps,
    )


def interleaved_searches(
    steps: dict[str, Callable[[float], UdpStep]], starts: dict[str, float], refine_steps: int
) -> dict[str, SearchResult]:
    """One ``rate_search`` per receiver, taking turns step by step in the order of ``steps``:
    the searches span the same stretch of time, so that a change of the machine's speed
    (other load) falls on every receiver of the pair alike."""
    searches = {name: rate_search(starts[name], refine_steps) for name in steps}
    pending = {name: next(search) for name, search in searches.items()}
    results: dict[str, SearchResult] = {}
    while pending:
        for name in list(pending):
            try:
                pending[name] = searches[name].send(steps[name](pending[name]))
            except StopIteration as done:
                results[name] = done.value
                del pending[name]
    return results


def _start(plan_start: float, previous: Search | None) -> float:
    """Later runs start at half the previous run's best offered rate (fewer doubling steps)."""
    steps = previous.steps if previous is not None else []
    best = max((s.offered_frames_per_s for s in steps if s.loss_fraction < MAX_LOSS), default=0)
    return max(plan_start, best / 2)


def run_compare(quick: bool, install_statsd: bool, workdir: Path) -> CompareResult:
    plan = COMPARE_QUICK if quick else COMPARE_FULL
    buffer = statsd_receive_buffer()
    skipped: str | None = None
    try:
        stats_js = prepare(install_statsd)
    except StatsdUnavailable as exc:
        stats_js, skipped = None, str(exc)
    with pinned_to_sender_cpu() as pinned, ExitStack() as stack:
        cpu = DAEMON_CPU if pinned else None
        config = workdir / "collector.toml"
        config.write_text(
            f"[ingest]\nudp_receive_buffer_bytes = {buffer}\n"
            f"[storage]\nbackend = 'none'\nstate_dir = '{workdir}'\n"
        )
        daemon = stack.enter_context(
            running_daemon(workdir / "bench-daemon.log", ["--config", str(config)], cpu=cpu)
        )
        bare = stack.enter_context(bare_receiver(buffer, cpu, workdir / "bare.log"))
        statsd: StatsdProcess | None = None
        if stats_js is not None:
            try:
                statsd = stack.enter_context(running_statsd(stats_js, workdir, buffer, cpu))
            except StatsdUnavailable as exc:
                skipped = str(exc)
        return _compare(plan, daemon, bare, statsd, skipped, buffer, pinned)


def _daemon_frames(daemon: DaemonProcess) -> Callable[[], int]:
    def count() -> int:
        accepted: int = daemon.health()["ingest"]["udp"]["frames_accepted"]
        return accepted

    return count


def _compare(
    plan: ComparePlan,
    daemon: DaemonProcess,
    bare: BareReceiver,
    statsd: StatsdProcess | None,
    skipped: str | None,
    buffer: int,
    pinned: bool,
) -> CompareResult:
    options = emit_options(daemon, 0, 0, budget=DATAGRAM_BUDGET)
    datagrams = replay_datagrams(options)
    frames = [f for f in replay_frames(options) if isinstance(f, RtcSample)]
    samples = sample_lines(frames)
    statsd_datagrams = pack_lines(samples, DATAGRAM_BUDGET)
    lines_per_sample = sum(len(s) for s in samples) / len(samples)
    ceiling = decode_ceiling(datagrams, plan.ceiling_s)
    step_s = plan.step_s
    runs: list[CompareRun] = []
    # receiver -> (unit, step at a rate, the plan's first rate)
    # One pool per receiver for the whole comparison: bwmon sees every frame as a new sample.
    grow = replay_grows(options)
    bwmon_pool = ReplayPool(datagrams, 0.0, grow)
    bare_pool = ReplayPool(datagrams, 0.0, grow)
    receivers: dict[str, tuple[str, Callable[[float], UdpStep], float]] = {
        "bwmon": (
            "rtc frames/s",
            lambda r: paced_step(_daemon_frames(daemon), daemon.udp_port, bwmon_pool, r, step_s),
            plan.start_frames_per_s,
        ),
        "bare": (
            "rtc frames/s",
            lambda r: paced_step(bare.frames, bare.port, bare_pool, r, step_s),
            plan.start_frames_per_s,
        ),
    }
    if statsd is not None:
        count_lines = statsd.received_lines
        statsd_pool = ReplayPool(statsd_datagrams, 0.0)
        receivers["statsd"] = (
            "participant-samples/s",
            lambda r: paced_step(
                count_lines, statsd.port, statsd_pool, r, step_s, lines_per_sample
            ),
            plan.start_samples_per_s,
        )
    # A first step at each receiver's first rate, not counted: the streams (StatsD's keys) of
    # the workload exist before anything is measured.
    warmup = {name: step(first) for name, (_, step, first) in receivers.items()}
    for i in range(plan.runs):
        # Alternate the order of the turns too, so that no receiver always goes first.
        order = ["bwmon", "bare", "statsd"] if i % 2 == 0 else ["statsd", "bare", "bwmon"]
        names = [n for n in order if n in receivers]
        starts = {n: _start(receivers[n][2], getattr(runs[-1], n) if runs else None) for n in names}
        results = interleaved_searches(
            {n: receivers[n][1] for n in names}, starts, plan.refine_steps
        )
        found = {n: _search(n, receivers[n][0], results[n], step_s) for n in names}
        b, c, s = found["bwmon"], found["bare"], found.get("statsd")
        runs.append(
            CompareRun(
                bwmon=b,
                bare=c,
                statsd=s,
                ratio_to_ceiling=round(b.rate / c.rate, 4) if c.rate else None,
                ratio_vs_statsd=round(b.rate / s.rate, 3) if s is not None and s.rate else None,
            )
        )
    frame_count = sum(n for _, n in datagrams)
    statsd_buffer = {"statsd": statsd.receive_buffer_bytes} if statsd is not None else {}
    return CompareResult(
        runs=runs,
        frames_per_datagram=round(frame_count / len(datagrams), 2),
        datagram_bytes=round(sum(len(d) for d, _ in datagrams) / len(datagrams), 1),
        statsd_lines_per_sample=round(lines_per_sample, 2),
        statsd_samples_per_datagram=round(len(samples) / len(statsd_datagrams), 3),
        statsd_datagram_bytes=round(
            sum(len(d) for d, _ in statsd_datagrams) / len(statsd_datagrams), 1
        ),
        statsd_version=STATSD_VERSION if statsd is not None else None,
        statsd_skipped=skipped if statsd is None else None,
        receive_buffer_bytes={
            "requested": buffer,
            "bwmon": _daemon_buffer(daemon, buffer),
            "bare": bare.receive_buffer_bytes,
            **statsd_buffer,
        },
        decode_frames_per_s=round(ceiling, 1),
        step_s=step_s,
        pinned=pinned,
        warmup=warmup,
    )


def _daemon_buffer(daemon: DaemonProcess, requested: int) -> int:
    """The daemon's effective receive buffer, from its log (``udp_receive_buffer_clamped``
    if the kernel gave less), else what it asked for."""
    for event in daemon.log_events():
        if event.get("event") == "udp_receive_buffer_clamped":
            effective: int = event.get("effective", requested)
            return effective
    return requested
