"""``bwmon bench``: benchmarks that print one JSON object each (see docs/BENCHMARKS.md).

``bench ingest`` measures, in one run on one machine:

- the decoder's ceiling: ``decode_message`` alone on the benchmark's datagrams, in this
  process, on one core — no sockets, no event loop;
- UDP: a real ``bwmon serve`` child pinned to one CPU, fed by ``emit`` (replaying pre-encoded
  frames) pinned to another, at rising offered rates; the highest rate whose loss (frames emit
  sent but the daemon's ``/healthz`` did not count as accepted) stays under 0.1 % is
  ``udp_frames_per_s``;
- WebSocket: ``emit`` over one session, offered far more than the daemon takes (TCP
  backpressure, no loss); the daemon's accepted count over the sending window gives the rate.

``bench all`` (cli/bench_all.py) runs every benchmark in one run, with ingest side by side
with StatsD and a bare receiver; its searches share ``rate_search`` with ``bench ingest``.

Ratios measured in the same run, not absolute figures, are what compare across machines.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio
import typer

from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import EmitOptions, emit, replay_datagrams
from cli.synthetic import Profile, make_participants
from collector.aggregate.engine import Engine
from collector.aggregate.settings import AggregateSettings
from collector.config import IngestConfig
from protocol import Limits, decode_message, encode_msgpack
from protocol.emitter import pack

app = typer.Typer(help="Benchmarks; each prints JSON with --json.", no_args_is_help=True)

# The options every benchmark has; ``--quick`` makes a smoke run (CI), not a measurement.
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]
QuickFlag = Annotated[bool, typer.Option(help="a short smoke run, not a measurement")]


# The MariaDB/MySQL server of the benchmarks that need one (a throwaway database on it).
MysqlHost = Annotated[str, typer.Option(help="MariaDB/MySQL server")]
MysqlPort = Annotated[int, typer.Option()]
MysqlUser = Annotated[str, typer.Option(help="needs CREATE and DROP DATABASE")]
MysqlPassword = Annotated[str, typer.Option(envvar="BWMON_BENCH_MYSQL_PASSWORD")]


def mysql_server(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    return {"host": host, "port": port, "user": user, "password": password}


def print_json(result: msgspec.Struct) -> None:
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


TARGET_UDP_FRAMES_PER_S = 150_000
MAX_LOSS = 0.001
DAEMON_CPU = 0
SENDER_CPU = 1
MAX_OFFERED_FRAMES_PER_S = 2_000_000
REPLAY_FRAMES = 20_000


class UdpStep(msgspec.Struct):
    offered_frames_per_s: float
    sent_frames: int
    accepted_frames: int
    accepted_frames_per_s: float
    loss_fraction: float
    kernel_drops: int


class UdpResult(msgspec.Struct):
    frames_per_datagram: float
    datagram_bytes: float
    frames_per_s: float  # the highest accepted rate with loss under MAX_LOSS
    loss_fraction: float  # at that rate
    loss_at_target: float
    decode_ceiling_frames_per_s: float
    ratio_to_ceiling: float
    steps: list[UdpStep]


class IngestResult(msgspec.Struct):
    """The figures the issue names at the top level (batched UDP); the details below."""

    target_udp_frames_per_s: int
    meets_target: bool
    udp_frames_per_s: float
    udp_loss_fraction: float
    ws_frames_per_s: float
    decode_ceiling_frames_per_s: float
    ratio_to_ceiling: float
    ws_ratio_to_ceiling: float
    unbatched_meets_target: bool
    cpus: int
    pinned: bool
    udp: UdpResult
    udp_unbatched: UdpResult


def emit_options(daemon: DaemonProcess, rate: float, seconds: float, **kw: Any) -> EmitOptions:
    """``emit`` replaying 20,000 realistic full ``rtc`` frames of 200 meetings of 5."""
    defaults: dict[str, Any] = dict(
        host="127.0.0.1",
        udp_port=daemon.udp_port,
        http_port=daemon.http_port,
        meetings=200,
        participants=5,
        rate=rate,
        duration_s=seconds,
        http_routes=0,
        joins=False,
        replay=REPLAY_FRAMES,
        profile=Profile(seed=7),
    )
    return EmitOptions(**(defaults | kw))


def decode_ceiling(datagrams: list[tuple[bytes, int]], seconds: float) -> float:
    """Frames per second that ``decode_message`` alone reaches on these datagrams."""
    limits = _daemon_udp_limits()
    frames = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for data, _count in datagrams:
            frames += len(decode_message(data, limits).frames)
    return frames / (time.perf_counter() - started)


def _daemon_udp_limits() -> Limits:
    ingest = IngestConfig()
    return Limits(
        max_message_bytes=ingest.max_datagram_bytes,
        max_frames_per_message=ingest.max_frames_per_message,
    )


def udp_step(daemon: DaemonProcess, options: EmitOptions) -> UdpStep:
    before = daemon.settled_health()["ingest"]["udp"]
    report = trio.run(emit, options)
    after = daemon.settled_health()["ingest"]["udp"]
    sent = report.frames_sent
    accepted = after["frames_accepted"] - before["frames_accepted"]
    return UdpStep(
        offered_frames_per_s=round(options.rate or 0),
        sent_frames=sent,
        accepted_frames=accepted,
        accepted_frames_per_s=round(accepted / options.duration_s, 1),
        loss_fraction=round(max(0.0, 1 - accepted / sent), 6) if sent else 1.0,
        kernel_drops=(after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0),
    )


def udp_search(
    daemon: DaemonProcess, budget: int, seconds: float, start_rate: float, refine_steps: int
) -> tuple[UdpStep | None, list[UdpStep]]:
    """Double the offered rate until loss reaches ``MAX_LOSS``, then bisect; return the best
    lossless step (None if even the first rate lost frames) and every step."""

    def step(rate: float) -> UdpStep:
        return udp_step(daemon, emit_options(daemon, rate, seconds, budget=budget))

    return lossless_search(step, start_rate, refine_steps)


SearchResult = tuple[UdpStep | None, list[UdpStep]]


def rate_search(
    start_rate: float, refine_steps: int, max_rate: float = MAX_OFFERED_FRAMES_PER_S
) -> Generator[float, UdpStep, SearchResult]:
    """The lossless rate search, without I/O: yields each rate to offer and is sent back what
    the step at that rate measured. Double the offered rate until loss reaches ``MAX_LOSS``,
    then bisect ``refine_steps`` times; returns the best lossless step (None if even the first
    rate lost) and every step. Searches of several receivers can so take turns step by step."""
    steps: list[UdpStep] = []
    best: UdpStep | None = None
    failed_rate: float | None = None
    rate = start_rate
    while rate <= max_rate:
        result = yield rate
        steps.append(result)
        if result.loss_fraction >= MAX_LOSS:
            failed_rate = rate
            break
        best = result
        rate *= 2
    low = best.offered_frames_per_s if best else 0.0
    for _ in range(refine_steps if failed_rate else 0):
        assert failed_rate is not None
        rate = (low + failed_rate) / 2
        result = yield rate
        steps.append(result)
        if result.loss_fraction < MAX_LOSS:
            best, low = result, rate
        else:
            failed_rate = rate
    return best, steps


def lossless_search(
    step: Callable[[float], UdpStep],
    start_rate: float,
    refine_steps: int,
    max_rate: float = MAX_OFFERED_FRAMES_PER_S,
) -> SearchResult:
    """``rate_search`` for one receiver: ``step(rate)`` offers ``rate`` for one step and says
    what was sent and accepted."""
    search = rate_search(start_rate, refine_steps, max_rate)
    try:
        rate = next(search)
        while True:
            rate = search.send(step(rate))
    except StopIteration as done:
        result: SearchResult = done.value
        return result


async def ws_throughput(daemon: DaemonProcess, seconds: float) -> float:
    """Frames per second the daemon accepts from one ``emit`` WebSocket session offered far
    more than it can take, from its ``/healthz`` counts over the sending window."""

    def accepted() -> int:
        count: int = daemon.health()["ingest"]["websocket"]["frames_accepted"]
        return count

    options = emit_options(daemon, MAX_OFFERED_FRAMES_PER_S, seconds + 1.0, transport="ws")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(emit, options))  # the session is open
        await trio.sleep(0.5)  # the pipe is full
        before, started = await trio.to_thread.run_sync(accepted), trio.current_time()
        await trio.sleep(seconds)
        after, ended = await trio.to_thread.run_sync(accepted), trio.current_time()
    return (after - before) / (ended - started)


def udp_run(daemon: DaemonProcess, budget: int, quick: bool) -> UdpResult:
    """The lossless rate search with datagrams packed under ``budget`` bytes, the loss at the
    target, and the decoder's ceiling on the same datagrams."""
    step_s = 0.5 if quick else 2.0
    datagrams = replay_datagrams(emit_options(daemon, 0, 0, budget=budget))
    ceiling = decode_ceiling(datagrams, step_s)
    best, steps = udp_search(
        daemon,
        budget,
        step_s,
        start_rate=20_000 if quick else 40_000,
        refine_steps=1 if quick else 3,
    )
    at_target = next(
        (s for s in steps if s.offered_frames_per_s == TARGET_UDP_FRAMES_PER_S), None
    ) or udp_step(daemon, emit_options(daemon, TARGET_UDP_FRAMES_PER_S, step_s, budget=budget))
    if at_target not in steps:
        steps.append(at_target)
    rate = best.accepted_frames_per_s if best else 0.0
    frames = sum(count for _, count in datagrams)
    return UdpResult(
        frames_per_datagram=round(frames / len(datagrams), 2),
        datagram_bytes=round(sum(len(d) for d, _ in datagrams) / len(datagrams), 1),
        frames_per_s=rate,
        loss_fraction=best.loss_fraction if best else 1.0,
        loss_at_target=at_target.loss_fraction,
        decode_ceiling_frames_per_s=round(ceiling, 1),
        ratio_to_ceiling=round(rate / ceiling, 3) if ceiling else 0.0,
        steps=steps,
    )


def run_ingest(quick: bool, log_dir: Path) -> IngestResult:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    pinned = cpus >= 2 and {DAEMON_CPU, SENDER_CPU} <= os.sched_getaffinity(0)
    original = os.sched_getaffinity(0) if pinned else None
    try:
        if pinned:
            os.sched_setaffinity(0, {SENDER_CPU})
        config = log_dir / "collector.toml"
        config.write_text(f"[storage]\nstate_dir = '{log_dir}'\n")
        with running_daemon(
            log_dir / "bench-daemon.log",
            ["--config", str(config)],
            cpu=DAEMON_CPU if pinned else None,
        ) as d:
            # Batched under 1,200 bytes as emitters do (application servers), and one frame per
            # datagram (a budget smaller than any frame), as a browser page sends them.
            udp = udp_run(d, 1200, quick)
            unbatched = udp_run(d, 1, quick)
            ws_rate = trio.run(ws_throughput, d, 0.5 if quick else 2.0)
    finally:
        if original is not None:
            os.sched_setaffinity(0, original)
    ceiling = udp.decode_ceiling_frames_per_s
    return IngestResult(
        target_udp_frames_per_s=TARGET_UDP_FRAMES_PER_S,
        meets_target=udp.loss_at_target < MAX_LOSS,
        udp_frames_per_s=udp.frames_per_s,
        udp_loss_fraction=udp.loss_fraction,
        ws_frames_per_s=round(ws_rate, 1),
        decode_ceiling_frames_per_s=ceiling,
        ratio_to_ceiling=udp.ratio_to_ceiling,
        ws_ratio_to_ceiling=round(ws_rate / ceiling, 3) if ceiling else 0.0,
        unbatched_meets_target=unbatched.loss_at_target < MAX_LOSS,
        cpus=cpus,
        pinned=pinned,
        udp=udp,
        udp_unbatched=unbatched,
    )


@app.command("ingest")
def ingest(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Frames/s over UDP and WebSocket into a real daemon, against the decoder's ceiling."""
    with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
        result = run_ingest(quick, Path(tmp))
    if as_json:
        print_json(result)
        return
    for name, udp in (
        ("UDP, batched", result.udp),
        ("UDP, one frame per datagram", result.udp_unbatched),
    ):
        verdict = "meets" if udp.loss_at_target < MAX_LOSS else "MISSES"
        typer.echo(
            f"{name}: {udp.frames_per_s:,.0f} rtc frames/s with loss {udp.loss_fraction:.4%} "
            f"({udp.ratio_to_ceiling:.2f} of the decoder's {udp.decode_ceiling_frames_per_s:,.0f}"
            f"/s; {udp.frames_per_datagram} frames per {udp.datagram_bytes:.0f}-byte datagram); "
            f"target {result.target_udp_frames_per_s:,}/s at loss < {MAX_LOSS:.1%}: {verdict} "
            f"(loss at target {udp.loss_at_target:.4%})"
        )
    typer.echo(
        f"WebSocket: {result.ws_frames_per_s:,.0f} frames/s "
        f"({result.ws_ratio_to_ceiling:.2f} of the decoder's ceiling)"
    )


class AggregateResult(msgspec.Struct):
    target_frames_per_s: int
    target_bytes_per_stream: int
    meets_target: bool
    frames_per_s: float  # decode + aggregate, one core, ticked every second as the daemon does
    decode_frames_per_s: float  # decode only, the same datagrams, the same run
    ratio_to_ceiling: float
    one_sample_per_tick_frames_per_s: float  # worst case: a tick after every sample of all
    tick_ms: float  # the longest tick with every stream fresh
    tick_step_ms: float  # its longest step: how long a tick holds up the daemon's loop at once
    streams: int
    frames: int
    bytes_per_stream: dict[str, float]  # live RTC streams -> bytes per stream


TARGET_AGGREGATE_FRAMES_PER_S = 100_000
TARGET_BYTES_PER_STREAM = 4096


def _rounds(streams: int, rounds: int) -> list[list[tuple[bytes, int]]]:
    """``rounds`` seconds of samples of ``streams`` participants (one connection each, 5 per
    meeting): per round, the datagrams of one fresh sample of every stream."""
    participants = make_participants(max(1, streams // 5), 5, Profile(seed=11))[:streams]
    now_ms = time.time() * 1000
    return [
        list(pack(encode_msgpack(p.sample(now_ms + 1000 * r, 1.0)) for p in participants))
        for r in range(rounds)
    ]


def _bench_settings() -> AggregateSettings:
    return AggregateSettings(max_meetings=1_000_000, max_participants_per_meeting=100_000)


def decode_throughput(rounds: list[list[tuple[bytes, int]]]) -> float:
    limits = _daemon_udp_limits()
    frames = sum(count for round_ in rounds for _, count in round_)
    started = time.perf_counter()
    for round_ in rounds:
        for data, _ in round_:
            decode_message(data, limits)
    return frames / (time.perf_counter() - started)


def aggregate_throughput(
    rounds: list[list[tuple[bytes, int]]], per_round: bool
) -> tuple[float, float, float]:
    """Decode + aggregate frames/s over the datagrams, the longest tick and the longest step
    of a tick (``Engine.tick_steps``, between which the daemon lets ingest run), in ms.

    ``per_round``: a tick after each round (one sample of every stream per tick, the worst
    case); else a tick every second of the run's own time, as the daemon ticks.
    """
    limits = _daemon_udp_limits()
    frames = sum(count for round_ in rounds for _, count in round_)
    engine = Engine(_bench_settings())
    t0 = 1_800_000_000.0
    longest = longest_step = 0.0

    def tick(now: float) -> None:
        nonlocal longest, longest_step
        began = step_began = time.perf_counter()
        for _ in engine.tick_steps(now):
            step_ended = time.perf_counter()
            longest_step = max(longest_step, step_ended - step_began)
            step_began = step_ended
        longest_step = max(longest_step, time.perf_counter() - step_began)
        engine.drain()
        longest = max(longest, time.perf_counter() - began)

    started = time.perf_counter()
    next_tick = 1.0
    for r, round_ in enumerate(rounds):
        for data, _ in round_:
            elapsed = r if per_round else time.perf_counter() - started
            if not per_round and elapsed >= next_tick:
                tick(t0 + elapsed)
                next_tick += 1.0
            engine.add(decode_message(data, limits).frames, t0 + elapsed)
        if per_round:
            tick(t0 + r + 0.999)
    return frames / (time.perf_counter() - started), longest * 1000, longest_step * 1000


def bytes_per_stream(streams: int) -> float:
    """Memory the engine holds per live RTC stream, after two samples and a tick each."""
    rounds = _rounds(streams, 2)
    limits = _daemon_udp_limits()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(_bench_settings())
    for r, round_ in enumerate(rounds):
        for data, _ in round_:
            engine.add(decode_message(data, limits).frames, 1_800_000_000.0 + r)
        engine.tick(1_800_000_000.0 + r + 0.5)
    engine.drain()
    del rounds
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(engine.streams) == streams, engine.stats()
    return held / streams


def run_aggregate(quick: bool) -> AggregateResult:
    streams = 2_000 if quick else 10_000
    rounds = _rounds(streams, 10 if quick else 40)
    decode_rate = decode_throughput(rounds)
    rate, _, _ = aggregate_throughput(rounds, per_round=False)
    worst_rate, tick_ms, tick_step_ms = aggregate_throughput(rounds[:5], per_round=True)
    frames = sum(count for round_ in rounds for _, count in round_)
    del rounds
    sizes = (1_000, 5_000) if quick else (10_000, 50_000)
    memory = {str(n): round(bytes_per_stream(n), 1) for n in sizes}
    return AggregateResult(
        target_frames_per_s=TARGET_AGGREGATE_FRAMES_PER_S,
        target_bytes_per_stream=TARGET_BYTES_PER_STREAM,
        meets_target=rate >= TARGET_AGGREGATE_FRAMES_PER_S
        and max(memory.values()) <= TARGET_BYTES_PER_STREAM,
        frames_per_s=round(rate, 1),
        decode_frames_per_s=round(decode_rate, 1),
        ratio_to_ceiling=round(rate / decode_rate, 3),
        one_sample_per_tick_frames_per_s=round(worst_rate, 1),
        tick_ms=round(tick_ms, 1),
        tick_step_ms=round(tick_step_ms, 2),
        streams=streams,
        frames=frames,
        bytes_per_stream=memory,
    )


@app.command("aggregate")
def aggregate(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Frames/s through decode + aggregation on one core, and memory per live RTC stream."""
    result = run_aggregate(quick)
    if as_json:
        print_json(result)
        return
    verdict = "meets" if result.meets_target else "MISSES"
    typer.echo(
        f"decode + aggregate: {result.frames_per_s:,.0f} rtc frames/s over {result.streams:,} "
        f"streams ({result.ratio_to_ceiling:.2f} of decode alone, "
        f"{result.decode_frames_per_s:,.0f}/s); with a tick after every sample of every stream "
        f"{result.one_sample_per_tick_frames_per_s:,.0f}/s, longest tick {result.tick_ms} ms "
        f"(its longest step {result.tick_step_ms} ms); "
        "memory per stream: "
        + ", ".join(f"{v:,.0f} B at {int(k):,}" for k, v in result.bytes_per_stream.items())
    )
    typer.echo(
        f"targets {result.target_frames_per_s:,} frames/s and "
        f"{result.target_bytes_per_stream:,} B per stream: {verdict}"
    )


@app.command("fanout")
def fanout(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
) -> None:
    """Delta latency and size for 1,000 subscribers of 500 live meetings, and ingest with them."""
    # Imported here: cli.bench_fanout builds on this module (its flood is bench ingest's).
    from cli.bench_fanout import ClientFailed, print_summary, run_fanout
    from cli.daemon_process import DaemonFailed

    try:
        result = run_fanout(quick)
    except (ClientFailed, DaemonFailed) as exc:
        typer.echo(f"bwmon bench fanout: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        print_json(result)
        return
    print_summary(result)


@app.command("all")
def all_benchmarks(
    as_json: JsonFlag = False,
    quick: QuickFlag = False,
    mysql_host: MysqlHost = "127.0.0.1",
    mysql_port: MysqlPort = 3306,
    mysql_user: MysqlUser = "root",
    mysql_password: MysqlPassword = "",
) -> None:
    """Every benchmark in one run: ingest against StatsD and the bare receiver, end to end."""
    # Imported here: cli.bench_all builds on this module.
    from cli.bench_all import main_all

    main_all(as_json, quick, mysql_server(mysql_host, mysql_port, mysql_user, mysql_password))
