"""``bwmon bench all``: every benchmark in one run, side by side with StatsD and the ceiling.

It runs, one after the other, on loopback only, every child process stopped at the end
whatever happens (docs/BENCHMARKS.md):

- ``aggregate``, ``storage`` and ``fanout``: the benchmarks of the same names, called in this
  process (``run_aggregate``, ``run_storage``, ``run_fanout``), their results kept whole;
- **ingest, side by side**: three receivers on CPU 0 — a real ``bwmon serve``, the bare
  receiver (``cli.bench_ceiling``: drain loop + ``decode_message``) and StatsD
  (``cli.bench_statsd``) — fed in turn by one sender on CPU 1 with the same
  participant-samples: bench ingest's replayed workload (20,000 full ``rtc`` frames of 200
  meetings of 5, batched under 1,200 bytes) to bwmon and to the bare receiver, the same
  samples as StatsD lines (batched under 1,200 bytes) to StatsD. For each, bench ingest's
  lossless rate search (``lossless_search``) gives the highest rate with loss under 0.1 %.
  The three searches of a run take turns step by step (``interleaved_searches``), so that
  they span the same stretch of time; ratios are taken pair by pair within one run, then the
  median, min and max over the runs;
- **end to end** (``cli.bench_e2e``): frames over UDP into a daemon writing minute rows to
  MariaDB, with a subscriber timing the frames to it.

The sender is one function for the three receivers (``send_paced``): ``emit --replay``'s
pacing (``ReplayPool``, a slice every 5 ms) of pre-built datagrams on one non-blocking socket,
waiting for room in its buffer rather than dropping, so that every unit counted as sent left
this process. The three receivers get the same receive buffer: what StatsD's Node.js socket can
get (``SO_RCVBUF``, clamped to ``net.core.rmem_max``), which the daemon and the bare receiver
are configured to (the daemon's default asks for 8 MiB).

Targets are printed with a pass/fail verdict; none is ever lowered to pass.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio

from cli.bench import (
    DAEMON_CPU,
    MAX_LOSS,
    SENDER_CPU,
    TARGET_UDP_FRAMES_PER_S,
    AggregateResult,
    SearchResult,
    UdpStep,
    decode_ceiling,
    emit_options,
    print_json,
    rate_search,
    run_aggregate,
)
from cli.bench_e2e import (
    LATENCY_MARGIN_MS,
    TARGET_E2E_FRAMES_PER_S,
    E2eResult,
    E2eUnavailable,
    run_e2e,
)
from cli.bench_fanout import ChildProcess, ClientFailed, FanoutResult, median, run_fanout
from cli.bench_statsd import (
    StatsdProcess,
    StatsdUnavailable,
    pack_lines,
    prepare,
    running_statsd,
    sample_lines,
)
from cli.bench_storage import StorageResult, run_storage
from cli.daemon_process import DaemonFailed, DaemonProcess, running_daemon
from cli.emit import SLICE_S, ReplayPool, replay_datagrams, replay_frames, replay_grows
from collector.config import IngestConfig
from collector.storage.sinks import StorageError
from protocol import RtcSample
from protocol.build import compiled_modules

TARGET_RATIO_VS_STATSD = 10.0
TARGET_RATIO_TO_CEILING = 0.5
BUDGET = 1200  # bytes per datagram, for every receiver


@dataclass(frozen=True, slots=True)
class ComparePlan:
    runs: int
    step_s: float
    start_frames_per_s: float  # bwmon and the bare receiver
    start_samples_per_s: float  # StatsD
    refine_steps: int


COMPARE_FULL = ComparePlan(
    runs=3, step_s=2.0, start_frames_per_s=40_000, start_samples_per_s=2_000, refine_steps=4
)
COMPARE_QUICK = ComparePlan(
    runs=1, step_s=0.3, start_frames_per_s=40_000, start_samples_per_s=2_000, refine_steps=1
)


class Figure(msgspec.Struct):
    median: float
    min: float
    max: float
    runs: list[float]


def figure(values: list[float | None], digits: int = 3) -> Figure | None:
    """Median, min and max over the runs that gave a value; None if none did."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Figure(
        median=round(median(present), digits),
        min=round(min(present), digits),
        max=round(max(present), digits),
        runs=[round(v, digits) for v in present],
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
                while True:
                    try:
                        sock.send(data)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    except ConnectionRefusedError:
                        break
                    sent.units += count
                    sent.datagrams += 1
                    break
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
        loss_fraction=(round(max(0.0, 1 - accepted_units / sent.units), 6) if sent.units else 1.0),
        kernel_drops=0,
    )


# -- the receivers ---------------------------------------------------------------------------


class BareReceiver(ChildProcess):
    """The bare receiver child (``cli.bench_ceiling``): one command line in, one JSON line out."""

    def __init__(self, receive_buffer_bytes: int, cpu: int | None, log: Path) -> None:
        command = [sys.executable, "-m", "cli.bench_ceiling"]
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
    pinned = {DAEMON_CPU, SENDER_CPU} <= os.sched_getaffinity(0)
    cpu = DAEMON_CPU if pinned else None
    original = os.sched_getaffinity(0) if pinned else None
    buffer = statsd_receive_buffer()
    skipped: str | None = None
    try:
        stats_js = prepare(install_statsd)
    except StatsdUnavailable as exc:
        stats_js, skipped = None, str(exc)
    try:
        if pinned:
            os.sched_setaffinity(0, {SENDER_CPU})
        config = workdir / "collector.toml"
        config.write_text(
            f"[ingest]\nudp_receive_buffer_bytes = {buffer}\n"
            f"[storage]\nbackend = 'none'\nstate_dir = '{workdir}'\n"
        )
        with ExitStack() as stack:
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
            result = _compare(plan, daemon, bare, statsd, skipped, buffer)
            result.pinned = pinned
            return result
    finally:
        if original is not None:
            os.sched_setaffinity(0, original)


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
) -> CompareResult:
    options = emit_options(daemon, 0, 0, budget=BUDGET)
    datagrams = replay_datagrams(options)
    frames = [f for f in replay_frames(options) if isinstance(f, RtcSample)]
    samples = sample_lines(frames)
    statsd_datagrams = pack_lines(samples, BUDGET)
    lines_per_sample = sum(len(s) for s in samples) / len(samples)
    ceiling = decode_ceiling(datagrams, 0.5 if quick_plan(plan) else 2.0)
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
        statsd_version="0.9.0" if statsd is not None else None,
        statsd_skipped=skipped if statsd is None else None,
        receive_buffer_bytes={
            "requested": buffer,
            "bwmon": _daemon_buffer(daemon, buffer),
            "bare": bare.receive_buffer_bytes,
            **statsd_buffer,
        },
        decode_frames_per_s=round(ceiling, 1),
        step_s=step_s,
        pinned=False,
        warmup=warmup,
    )


def quick_plan(plan: ComparePlan) -> bool:
    return plan == COMPARE_QUICK


def _daemon_buffer(daemon: DaemonProcess, requested: int) -> int:
    """The daemon's effective receive buffer, from its log (``udp_receive_buffer_clamped``
    if the kernel gave less), else what it asked for."""
    for event in daemon.log_events():
        if event.get("event") == "udp_receive_buffer_clamped":
            effective: int = event.get("effective", requested)
            return effective
    return requested


# -- everything ------------------------------------------------------------------------------


class Target(msgspec.Struct):
    name: str
    target: str
    measured: float | None  # the median over the runs; None if not measured
    passed: bool | None  # None: not measured (skipped, or the benchmark failed)


class AllResult(msgspec.Struct):
    """The figures the issue names at the top level, each the median (min, max) of the runs;
    every benchmark's own result below them."""

    quick: bool
    cpus: int
    compiled: list[str]  # modules the daemons ran compiled (setup.py, make compiled)
    elapsed_s: float
    meets_targets: bool  # every target measured and met
    targets: list[Target]
    ingest_frames_per_s: Figure | None  # bwmon, lossless, UDP batched
    bare_receiver_frames_per_s: Figure | None
    ratio_to_ceiling: Figure | None
    statsd_samples_per_s: Figure | None
    ratio_vs_statsd: Figure | None  # participant-samples/s at < 0.1 % loss, bwmon / StatsD
    statsd_skipped: str | None
    e2e_frames_per_s: Figure | None
    e2e_search_frames_per_s: Figure | None  # the searches' best (shorter) steps
    e2e_sustained_loss_fraction: Figure | None
    e2e_latency_p50_ms: Figure | None  # frame sent -> subscriber read the delta holding it
    e2e_latency_p99_ms: Figure | None
    e2e_delta_latency_p99_ms: Figure | None  # publish tick -> subscriber (the delta's ``at``)
    e2e_peak_rss_bytes: int | None
    e2e_latency_target_ms: float
    errors: dict[str, str]  # benchmark -> why it could not run
    section_s: dict[str, float]  # benchmark -> seconds it took
    ingest: CompareResult | None
    e2e: E2eResult | None
    aggregate: AggregateResult | None
    storage: StorageResult | None
    fanout: FanoutResult | None


def _target(name: str, target: str, value: Figure | None, ok: Callable[[float], bool]) -> Target:
    measured = value.median if value is not None else None
    return Target(name, target, measured, ok(measured) if measured is not None else None)


def run_all(quick: bool, server: dict[str, Any], install_statsd: bool) -> AllResult:
    started = time.monotonic()
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}

    @contextmanager
    def section(name: str, *failures: type[Exception]) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        except failures as exc:
            errors[name] = str(exc)
        finally:
            seconds[name] = round(time.monotonic() - began, 1)

    aggregate: AggregateResult | None = None
    storage: StorageResult | None = None
    fanout: FanoutResult | None = None
    ingest: CompareResult | None = None
    e2e: E2eResult | None = None
    with section("aggregate"):
        aggregate = run_aggregate(quick)
    with section("storage", StorageError):
        storage = run_storage(server, quick)
    with section("fanout", ClientFailed, DaemonFailed):
        fanout = run_fanout(quick)
    with (
        section("ingest", ClientFailed, DaemonFailed, StatsdUnavailable),
        tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp,
    ):
        ingest = run_compare(quick, install_statsd, Path(tmp))
    with section("e2e", ClientFailed, DaemonFailed, E2eUnavailable):
        e2e = run_e2e(server, quick)
    result = _result(quick, time.monotonic() - started, errors, ingest, e2e)
    result.aggregate, result.storage, result.fanout = aggregate, storage, fanout
    result.section_s = seconds
    return result


def _result(
    quick: bool,
    elapsed: float,
    errors: dict[str, str],
    ingest: CompareResult | None,
    e2e: E2eResult | None,
) -> AllResult:
    runs = ingest.runs if ingest is not None else []
    e2e_runs = e2e.runs if e2e is not None else []
    publish_ms = 1000 * (e2e.publish_interval_s if e2e is not None else 1.0)
    latency_target = publish_ms + LATENCY_MARGIN_MS
    ingest_rate = figure([r.bwmon.rate for r in runs], 1)
    to_ceiling = figure([r.ratio_to_ceiling for r in runs])
    vs_statsd = figure([r.ratio_vs_statsd for r in runs])
    e2e_rate = figure([r.frames_per_s for r in e2e_runs], 1)
    p99 = figure([r.probe_latency_p99_ms for r in e2e_runs], 1)
    skipped = ingest.statsd_skipped if ingest is not None else errors.get("ingest")
    targets = [
        _target(
            "lossless rtc ingest (frames/s)",
            f">= {TARGET_UDP_FRAMES_PER_S:,}",
            ingest_rate,
            lambda v: v >= TARGET_UDP_FRAMES_PER_S,
        ),
        _target(
            "end to end (frames/s)",
            f">= {TARGET_E2E_FRAMES_PER_S:,}",
            e2e_rate,
            lambda v: v >= TARGET_E2E_FRAMES_PER_S,
        ),
        _target(
            "ratio_vs_statsd",
            f">= {TARGET_RATIO_VS_STATSD:g}",
            vs_statsd,
            lambda v: v >= TARGET_RATIO_VS_STATSD,
        ),
        _target(
            "frame-to-subscriber latency p99 (ms)",
            f"<= {latency_target:g}",
            p99,
            lambda v: v <= latency_target,
        ),
        _target(
            "ratio_to_ceiling",
            f">= {TARGET_RATIO_TO_CEILING:g}",
            to_ceiling,
            lambda v: v >= TARGET_RATIO_TO_CEILING,
        ),
    ]
    return AllResult(
        quick=quick,
        cpus=len(os.sched_getaffinity(0)),
        compiled=compiled_modules(),
        elapsed_s=round(elapsed, 1),
        meets_targets=all(t.passed for t in targets),
        targets=targets,
        ingest_frames_per_s=ingest_rate,
        bare_receiver_frames_per_s=figure([r.bare.rate for r in runs], 1),
        ratio_to_ceiling=to_ceiling,
        statsd_samples_per_s=figure([r.statsd.rate if r.statsd else None for r in runs], 1),
        ratio_vs_statsd=vs_statsd,
        statsd_skipped=skipped,
        e2e_frames_per_s=e2e_rate,
        e2e_search_frames_per_s=figure([r.search_frames_per_s for r in e2e_runs], 1),
        e2e_sustained_loss_fraction=figure([r.sustained_loss_fraction for r in e2e_runs], 6),
        e2e_latency_p50_ms=figure([r.probe_latency_p50_ms for r in e2e_runs], 1),
        e2e_latency_p99_ms=p99,
        e2e_delta_latency_p99_ms=figure([r.delta_latency_p99_ms for r in e2e_runs], 1),
        e2e_peak_rss_bytes=e2e.peak_rss_bytes if e2e is not None else None,
        e2e_latency_target_ms=latency_target,
        errors=errors,
        section_s={},
        ingest=ingest,
        e2e=e2e,
        aggregate=None,
        storage=None,
        fanout=None,
    )


def _show(value: Figure | None, fmt: str = ",.0f") -> str:
    if value is None:
        return "-"
    return f"{value.median:{fmt}} ({value.min:{fmt}} - {value.max:{fmt}})"


def print_table(result: AllResult) -> None:
    """The figures as median (min - max) over the runs, the targets with their verdicts."""
    echo = sys.stdout.write
    runs = len(result.ingest.runs) if result.ingest is not None else 0
    echo(
        f"bwmon bench all{' --quick (a smoke run, not a measurement)' if result.quick else ''}: "
        f"{result.cpus} CPUs, {result.elapsed_s:g} s, "
        f"{'compiled' if result.compiled else 'pure Python'}; figures are median (min - max) "
        f"over {runs} runs\n\n"
    )
    rows = [
        ("lossless rtc ingest, bwmon (frames/s)", _show(result.ingest_frames_per_s)),
        ("bare receiver (frames/s)", _show(result.bare_receiver_frames_per_s)),
        ("ratio_to_ceiling", _show(result.ratio_to_ceiling, ".3f")),
        ("StatsD (participant-samples/s)", _show(result.statsd_samples_per_s)),
        ("ratio_vs_statsd", _show(result.ratio_vs_statsd, ".1f")),
        ("end to end, sustained lossless (frames/s)", _show(result.e2e_frames_per_s)),
        ("  its loss", _show(result.e2e_sustained_loss_fraction, ".4%")),
        ("  the search's best step (frames/s)", _show(result.e2e_search_frames_per_s)),
        ("frame-to-subscriber latency p50 (ms)", _show(result.e2e_latency_p50_ms)),
        ("frame-to-subscriber latency p99 (ms)", _show(result.e2e_latency_p99_ms)),
        ("publish-to-subscriber latency p99 (ms)", _show(result.e2e_delta_latency_p99_ms)),
        (
            "daemon peak RSS (MiB)",
            "-"
            if result.e2e_peak_rss_bytes is None
            else f"{result.e2e_peak_rss_bytes / (1 << 20):,.0f}",
        ),
    ]
    if result.aggregate is not None:
        rows.append(("aggregate (frames/s)", f"{result.aggregate.frames_per_s:,.0f}"))
    if result.storage is not None:
        rows.append(("storage, MySQL (rows/s)", f"{result.storage.rows_per_s:,.0f}"))
    if result.fanout is not None:
        rows.append(
            (
                "fan-out delta latency p99 (ms)",
                f"{result.fanout.delta_latency_p99_ms:,.0f}",
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        echo(f"{name.ljust(width)}  {value}\n")
    echo("\n")
    width = max(len(t.name) for t in result.targets)
    for t in result.targets:
        verdict = "skipped" if t.passed is None else ("pass" if t.passed else "FAIL")
        measured = (
            "-"
            if t.measured is None
            else (f"{t.measured:,.0f}" if t.measured >= 100 else f"{t.measured:.3g}")
        )
        echo(f"{t.name.ljust(width)}  {t.target:>12}  {measured:>10}  {verdict}\n")
    if result.statsd_skipped:
        echo(f"StatsD comparison skipped: {result.statsd_skipped}\n")
    for name, error in result.errors.items():
        echo(f"{name}: could not run: {error}\n")
    echo(f"all targets: {'met' if result.meets_targets else 'NOT met'}\n")


def main_all(as_json: bool, quick: bool, server: dict[str, Any]) -> None:
    # --quick never installs StatsD (npm takes longer than a smoke run should); it uses an
    # installed one and says why it skipped it otherwise.
    result = run_all(quick, server, install_statsd=not quick)
    if as_json:
        print_json(result)
    else:
        print_table(result)
