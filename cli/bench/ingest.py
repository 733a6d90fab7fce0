"""``bwmon bench ingest``: frames/s over UDP and WebSocket into a real daemon.

It measures, in one run on one machine:

- the decoder's ceiling: ``decode_message`` alone on the benchmark's datagrams, in this
  process, on one core — no sockets, no event loop;
- UDP: a real ``bwmon serve`` child pinned to one CPU, fed by ``emit`` (replaying pre-encoded
  frames) pinned to another, at rising offered rates; the highest rate whose loss (frames emit
  sent but the daemon's ``/healthz`` did not count as accepted) stays under 0.1 % is
  ``udp_frames_per_s``; batched under 1,200 bytes as application servers send, and one frame
  per datagram as a browser page sends;
- WebSocket: ``emit`` over one session, offered far more than the daemon takes (TCP
  backpressure, no loss); the daemon's accepted count over the sending window gives the rate.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import msgspec
import trio
import typer

from cli.bench.harness import (
    DAEMON_CPU,
    DATAGRAM_BUDGET,
    MAX_LOSS,
    MAX_OFFERED_FRAMES_PER_S,
    UdpStep,
    cpu_count,
    decode_ceiling,
    emit_options,
    kernel_drops,
    lossless_search,
    meets,
    pinned_to_sender_cpu,
    step_result,
)
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import EmitOptions, emit, replay_datagrams

TARGET_UDP_FRAMES_PER_S = 150_000


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


def udp_step(daemon: DaemonProcess, options: EmitOptions) -> UdpStep:
    before = daemon.settled_health()["ingest"]["udp"]
    report = trio.run(emit, options)
    after = daemon.settled_health()["ingest"]["udp"]
    sent = report.frames_sent
    accepted = after["frames_accepted"] - before["frames_accepted"]
    drops = kernel_drops(before, after)
    return step_result(options.rate or 0, options.duration_s, sent, accepted, drops)


def udp_search(
    daemon: DaemonProcess, budget: int, seconds: float, start_rate: float, refine_steps: int
) -> tuple[UdpStep | None, list[UdpStep]]:
    """Double the offered rate until loss reaches ``MAX_LOSS``, then bisect; return the best
    lossless step (None if even the first rate lost frames) and every step."""

    def step(rate: float) -> UdpStep:
        return udp_step(daemon, emit_options(daemon, rate, seconds, budget=budget))

    return lossless_search(step, start_rate, refine_steps)


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
    cpus = cpu_count()
    with pinned_to_sender_cpu() as pinned:
        config = log_dir / "collector.toml"
        config.write_text(f"[storage]\nstate_dir = '{log_dir}'\n")
        with running_daemon(
            log_dir / "bench-daemon.log",
            ["--config", str(config)],
            cpu=DAEMON_CPU if pinned else None,
        ) as d:
            # Batched under 1,200 bytes as emitters do (application servers), and one frame per
            # datagram (a budget smaller than any frame), as a browser page sends them.
            udp = udp_run(d, DATAGRAM_BUDGET, quick)
            unbatched = udp_run(d, 1, quick)
            ws_rate = trio.run(ws_throughput, d, 0.5 if quick else 2.0)
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


def print_summary(result: IngestResult) -> None:
    for name, udp in (
        ("UDP, batched", result.udp),
        ("UDP, one frame per datagram", result.udp_unbatched),
    ):
        typer.echo(
            f"{name}: {udp.frames_per_s:,.0f} rtc frames/s with loss {udp.loss_fraction:.4%} "
            f"({udp.ratio_to_ceiling:.2f} of the decoder's {udp.decode_ceiling_frames_per_s:,.0f}"
            f"/s; {udp.frames_per_datagram} frames per {udp.datagram_bytes:.0f}-byte datagram); "
            f"target {result.target_udp_frames_per_s:,}/s at loss < {MAX_LOSS:.1%}: "
            f"{meets(udp.loss_at_target < MAX_LOSS)} (loss at target {udp.loss_at_target:.4%})"
        )
    typer.echo(
        f"WebSocket: {result.ws_frames_per_s:,.0f} frames/s "
        f"({result.ws_ratio_to_ceiling:.2f} of the decoder's ceiling)"
    )
