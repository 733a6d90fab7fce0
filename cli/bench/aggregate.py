"""``bwmon bench aggregate``: frames/s through decode + aggregation on one core, and memory
per live RTC stream.

No sockets, no event loop: the datagrams of ``streams`` participants (one sample each per
simulated second) are decoded and added to an ``Engine`` in this process, ticked every second
of the run's own time as the daemon ticks it, and against decoding alone on the same
datagrams (``ratio_to_ceiling``). A second pass ticks after every sample of every stream (the
worst case) and times the longest tick and its longest step (``Engine.tick_steps``, between
which the daemon lets ingest run). Memory per stream is what ``tracemalloc`` sees the engine
hold after two samples and a tick of each stream.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import msgspec
import typer

from cli.bench.harness import daemon_udp_limits, meets
from cli.synthetic import Profile, make_participants
from collector.aggregate.engine import Engine
from collector.aggregate.settings import AggregateSettings
from protocol import decode_message, encode_msgpack
from protocol.emitter import pack

TARGET_AGGREGATE_FRAMES_PER_S = 100_000
TARGET_BYTES_PER_STREAM = 4096


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
    limits = daemon_udp_limits()
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
    limits = daemon_udp_limits()
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
    limits = daemon_udp_limits()
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


def print_summary(result: AggregateResult) -> None:
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
        f"{result.target_bytes_per_stream:,} B per stream: {meets(result.meets_target)}"
    )
