"""``bwmon bench``: benchmarks that print one JSON object each (see docs/BENCHMARKS.md).

``bench ingest`` measures, in one run on one machine:

- the decoder's ceiling: ``decode_message`` alone on the benchmark's datagrams, in this
  process, on one core — no sockets, no event loop;
- UDP: a real ``bwmon serve`` child pinned to one CPU, fed by a sender pinned to another, at
  rising offered rates; the highest rate whose loss (frames sent but not counted as accepted by
  the daemon's ``/healthz``) stays under 0.1 % is ``udp_frames_per_s``;
- WebSocket: one session sending pre-encoded batches as fast as the daemon takes them
  (backpressure, no loss), up to the last ack.

Ratios measured in the same run, not absolute figures, are what compare across machines.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio
import typer
from trio_websocket import ConnectionClosed, open_websocket_url

from cli.daemon_process import DaemonProcess, running_daemon
from cli.synthetic import Profile, make_participants
from collector.config import IngestConfig
from protocol import Frame, Hello, Limits, decode_message, encode_msgpack
from protocol.emitter import pack
from protocol.session import Ack, SessionMessage

app = typer.Typer(help="Benchmarks; each prints JSON with --json.", no_args_is_help=True)

TARGET_UDP_FRAMES_PER_S = 150_000
MAX_LOSS = 0.001
DAEMON_CPU = 0
SENDER_CPU = 1
MAX_OFFERED_FRAMES_PER_S = 2_000_000


class UdpStep(msgspec.Struct):
    offered_frames_per_s: float
    sent_frames: int
    accepted_frames: int
    accepted_frames_per_s: float
    loss_fraction: float
    kernel_drops: int
    queue_full_frames: int


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


def workload(frames: int) -> list[Frame]:
    """Realistic full ``rtc`` frames: 200 meetings of 5 participants, sampled in turn."""
    participants = make_participants(200, 5, Profile(seed=7))
    now_ms = time.time() * 1000
    return [participants[i % len(participants)].sample(now_ms + i, 1.0) for i in range(frames)]


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


def _udp_counters(daemon: DaemonProcess) -> dict[str, Any]:
    udp: dict[str, Any] = daemon.health()["ingest"]["udp"]
    return udp


def _settled_udp_counters(daemon: DaemonProcess) -> dict[str, Any]:
    """The daemon's UDP counters once it has read everything still in its socket buffer."""
    last = _udp_counters(daemon)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _udp_counters(daemon)
        if now["messages"] == last["messages"]:
            return now
        last = now
    return last


def send_udp(
    sock: socket.socket, datagrams: list[tuple[bytes, int]], rate: float, seconds: float
) -> int:
    """Send datagrams paced to ``rate`` frames/s for ``seconds``; return the frames sent."""
    sent = 0
    i = 0
    n = len(datagrams)
    send = sock.send
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = rate * elapsed
        while sent < due:
            data, count = datagrams[i]
            send(data)
            sent += count
            i = i + 1 if i + 1 < n else 0
    return sent


def udp_step(
    daemon: DaemonProcess,
    sock: socket.socket,
    datagrams: list[tuple[bytes, int]],
    rate: float,
    seconds: float,
) -> UdpStep:
    before = _settled_udp_counters(daemon)
    sent = send_udp(sock, datagrams, rate, seconds)
    after = _settled_udp_counters(daemon)
    accepted = after["frames_accepted"] - before["frames_accepted"]
    return UdpStep(
        offered_frames_per_s=round(rate),
        sent_frames=sent,
        accepted_frames=accepted,
        accepted_frames_per_s=round(accepted / seconds, 1),
        loss_fraction=round(max(0.0, 1 - accepted / sent), 6) if sent else 0.0,
        kernel_drops=(after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0),
        queue_full_frames=after["queue_full_frames"] - before["queue_full_frames"],
    )


def udp_search(
    daemon: DaemonProcess,
    datagrams: list[tuple[bytes, int]],
    seconds: float,
    start_rate: float,
    refine_steps: int,
) -> tuple[UdpStep | None, list[UdpStep]]:
    """Double the offered rate until loss reaches ``MAX_LOSS``, then bisect; return the best
    lossless step (None if even the first rate lost frames) and every step."""
    steps: list[UdpStep] = []
    best: UdpStep | None = None
    failed_rate: float | None = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect(("127.0.0.1", daemon.udp_port))
        rate = start_rate
        while rate <= MAX_OFFERED_FRAMES_PER_S:
            step = udp_step(daemon, sock, datagrams, rate, seconds)
            steps.append(step)
            if step.loss_fraction >= MAX_LOSS:
                failed_rate = rate
                break
            best = step
            rate *= 2
        low = best.offered_frames_per_s if best else 0.0
        for _ in range(refine_steps if failed_rate else 0):
            assert failed_rate is not None
            rate = (low + failed_rate) / 2
            step = udp_step(daemon, sock, datagrams, rate, seconds)
            steps.append(step)
            if step.loss_fraction < MAX_LOSS:
                best, low = step, rate
            else:
                failed_rate = rate
    return best, steps


def loss_at(
    daemon: DaemonProcess, datagrams: list[tuple[bytes, int]], rate: float, seconds: float
) -> UdpStep:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect(("127.0.0.1", daemon.udp_port))
        return udp_step(daemon, sock, datagrams, rate, seconds)


async def ws_throughput(port: int, messages: list[bytes], seconds: float) -> float:
    """Send pre-encoded batch messages over one session for ``seconds``; return the frames per
    second the daemon acknowledged as accepted, timed to the last ack."""
    _replies = msgspec.msgpack.Decoder(SessionMessage)
    last_ack: Ack | None = None
    acked = trio.Event()
    sent_messages = 0
    done_sending = False

    async with open_websocket_url(f"ws://127.0.0.1:{port}/ingest", message_queue_size=64) as ws:
        await ws.send_message(encode_msgpack(Hello(boot="bench", kind="emitter", agent="bench")))
        await ws.get_message()  # welcome

        async def read_acks() -> None:
            nonlocal last_ack
            with contextlib.suppress(ConnectionClosed):
                while True:
                    message = await ws.get_message()
                    reply = _replies.decode(
                        message.encode() if isinstance(message, str) else message
                    )
                    if isinstance(reply, Ack):
                        last_ack = reply
                        if done_sending and reply.msg == sent_messages:
                            acked.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_acks)
            started = trio.current_time()
            i = 0
            while trio.current_time() - started < seconds:
                await ws.send_message(messages[i])
                sent_messages += 1
                i = (i + 1) % len(messages)
            done_sending = True
            if last_ack is not None and last_ack.msg == sent_messages:
                acked.set()
            with trio.move_on_after(10):
                await acked.wait()
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    return last_ack.accepted / elapsed if last_ack else 0.0


def udp_run(
    daemon: DaemonProcess, datagrams: list[tuple[bytes, int]], ceiling_s: float, quick: bool
) -> UdpResult:
    """The lossless rate search on these datagrams, the loss at the target, and the decoder's
    ceiling on the same datagrams."""
    step_s = 0.5 if quick else 2.0
    ceiling = decode_ceiling(datagrams, ceiling_s)
    best, steps = udp_search(
        daemon,
        datagrams,
        step_s,
        start_rate=20_000 if quick else 40_000,
        refine_steps=1 if quick else 3,
    )
    at_target = next(
        (s for s in steps if s.offered_frames_per_s == TARGET_UDP_FRAMES_PER_S), None
    ) or loss_at(daemon, datagrams, TARGET_UDP_FRAMES_PER_S, step_s)
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
    frames = workload(5_000 if quick else 20_000)
    encoded = [encode_msgpack(f) for f in frames]
    # Batched under 1,200 bytes as the reference emitter does (application servers), and one
    # frame per datagram (what a browser's page sends each second).
    batched = list(pack(encoded))
    single = [(data, 1) for data in encoded]
    ws_messages = [encode_msgpack(frames[i : i + 50]) for i in range(0, len(frames), 50)]
    ceiling_s = 0.5 if quick else 2.0
    original = os.sched_getaffinity(0) if pinned else None
    try:
        if pinned:
            os.sched_setaffinity(0, {SENDER_CPU})
        with running_daemon(log_dir / "bench-daemon.log", cpu=DAEMON_CPU if pinned else None) as d:
            udp = udp_run(d, batched, ceiling_s, quick)
            unbatched = udp_run(d, single, ceiling_s, quick)
            ws_rate = trio.run(ws_throughput, d.http_port, ws_messages, ceiling_s)
    finally:
        if original is not None:
            os.sched_setaffinity(0, original)
    return IngestResult(
        target_udp_frames_per_s=TARGET_UDP_FRAMES_PER_S,
        meets_target=udp.loss_at_target < MAX_LOSS,
        udp_frames_per_s=udp.frames_per_s,
        udp_loss_fraction=udp.loss_fraction,
        ws_frames_per_s=round(ws_rate, 1),
        decode_ceiling_frames_per_s=udp.decode_ceiling_frames_per_s,
        ratio_to_ceiling=udp.ratio_to_ceiling,
        ws_ratio_to_ceiling=(
            round(ws_rate / udp.decode_ceiling_frames_per_s, 3)
            if udp.decode_ceiling_frames_per_s
            else 0.0
        ),
        unbatched_meets_target=unbatched.loss_at_target < MAX_LOSS,
        cpus=cpus,
        pinned=pinned,
        udp=udp,
        udp_unbatched=unbatched,
    )


@app.command("ingest")
def ingest(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quick: Annotated[
        bool, typer.Option(help="short steps: a smoke run, not a measurement")
    ] = False,
) -> None:
    """Frames/s over UDP and WebSocket into a real daemon, against the decoder's ceiling."""
    with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
        result = run_ingest(quick, Path(tmp))
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
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
