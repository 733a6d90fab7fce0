"""The probe process of the end-to-end benchmark (``python -m cli.bench.e2e_probe``).

Subscribed to ``meetings`` in MessagePack on the daemon's ``/subscribe``, following it with a
``TopicMirror``, it sends every ``PROBE_INTERVAL_S`` (while probing is on) one ``rtc`` frame of
a meeting that does not exist yet (``probe-<pid>-<n>``) over UDP to the daemon and notes the
time. **Frame-to-subscriber latency** = the time it reads the first delta (or snapshot) that
holds that meeting minus the time it sent the frame: one clock, one process, the whole path
(UDP, decode, aggregation, the next publish tick, the diff, the WebSocket). It also keeps each
delta's receipt time minus its ``at`` (the daemon's publish tick): the publish-to-subscriber
part alone. Both are labelled by the window the benchmark says the run is in.

It takes one command per line on stdin (``mark LABEL``, ``count``, ``report``,
``probe on|off``, ``quit``) and answers each with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from collections.abc import Iterable

import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from cli.bench.harness import answer, percentile, read_command
from protocol import RtcSample, encode_msgpack
from protocol.subscribe import (
    Delta,
    Snapshot,
    Subscribe,
    TopicMirror,
    server_msgpack_decoder,
)

PROBE_INTERVAL_S = 0.05
TOPIC = "meetings"
MAX_MESSAGE_BYTES = 64 << 20


class ProbeWindow(msgspec.Struct):
    """What the probe process saw while one label was on."""

    probes_sent: int = 0
    probes_seen: int = 0
    probe_latency_p50_ms: float | None = None
    probe_latency_p99_ms: float | None = None
    probe_latency_max_ms: float | None = None
    deltas: int = 0
    delta_latency_p50_ms: float | None = None  # receipt - the delta's ``at`` (publish tick)
    delta_latency_p99_ms: float | None = None


class ProbeReport(msgspec.Struct):
    connected: bool = False
    resyncs: int = 0
    probes_sent: int = 0
    windows: dict[str, ProbeWindow] = msgspec.field(default_factory=dict)
    error: str | None = None


class Probe:
    def __init__(self) -> None:
        self.label = "warmup"
        self.probing = False  # on only while the sender runs: the daemon settles between
        self.report = ProbeReport()
        self.pending: dict[str, tuple[float, str]] = {}  # meeting -> (sent, label)
        self.sent: dict[str, int] = {}
        self.latencies: dict[str, list[float]] = {}
        self.delta_latencies: dict[str, list[float]] = {}

    async def send_probes(self, udp_port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", udp_port))
            n = 0
            tick = trio.current_time()
            while True:
                # A probe process that was kept off its CPU does not catch up in a burst.
                tick = max(tick + PROBE_INTERVAL_S, trio.current_time())
                await trio.sleep_until(tick)
                if not self.probing:
                    continue
                n += 1
                meeting = f"probe-{os.getpid()}-{n}"
                sent = time.time()
                frame = RtcSample(
                    meeting=meeting,
                    participant="probe",
                    connection="probe",
                    seq=1,
                    client_ts=sent * 1000,
                    audio_bytes_sent=1000,
                    video_bytes_sent=10_000,
                    rtt_ms=20.0,
                )
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    sock.send(encode_msgpack(frame))
                    self.pending[meeting] = (sent, self.label)
                    self.sent[self.label] = self.sent.get(self.label, 0) + 1
                    self.report.probes_sent += 1

    def _seen(self, names: Iterable[str], received: float) -> None:
        for name in names:
            pending = self.pending.pop(name, None)
            if pending is not None:
                sent, label = pending
                self.latencies.setdefault(label, []).append(received - sent)

    async def read(self, http_port: int) -> None:
        url = f"ws://127.0.0.1:{http_port}/subscribe"
        async with open_websocket_url(url, max_message_size=MAX_MESSAGE_BYTES) as ws:
            self.report.connected = True
            mirror = TopicMirror(TOPIC)
            await ws.send_message(msgspec.msgpack.encode(Subscribe(topic=TOPIC)))
            while True:
                data = await ws.get_message()
                received = time.time()
                if isinstance(data, str):
                    continue
                message = server_msgpack_decoder.decode(data)
                if isinstance(message, Delta):
                    self.delta_latencies.setdefault(self.label, []).append(received - message.at)
                    again = mirror.receive(message)
                    if again is not None:
                        self.report.resyncs += 1
                        await ws.send_message(msgspec.msgpack.encode(again))
                    self._seen(message.changed, received)
                elif isinstance(message, Snapshot):
                    mirror.receive(message)
                    self._seen(message.entities, received)

    def windows(self) -> dict[str, ProbeWindow]:
        out = {}
        for label in self.sent.keys() | self.delta_latencies.keys():
            window = out[label] = ProbeWindow(probes_sent=self.sent.get(label, 0))
            if probes := sorted(self.latencies.get(label, ())):
                window.probes_seen = len(probes)
                window.probe_latency_p50_ms = round(1000 * percentile(probes, 0.50), 1)
                window.probe_latency_p99_ms = round(1000 * percentile(probes, 0.99), 1)
                window.probe_latency_max_ms = round(1000 * probes[-1], 1)
            if deltas := sorted(self.delta_latencies.get(label, ())):
                window.deltas = len(deltas)
                window.delta_latency_p50_ms = round(1000 * percentile(deltas, 0.50), 1)
                window.delta_latency_p99_ms = round(1000 * percentile(deltas, 0.99), 1)
        return out


async def probe_main(http_port: int, udp_port: int, deadline_s: float) -> None:
    probe = Probe()

    async def subscriber() -> None:
        try:
            await probe.read(http_port)
        except (HandshakeError, ConnectionClosed, OSError) as exc:
            probe.report.error = f"{type(exc).__name__}: {exc}"

    with trio.move_on_after(deadline_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            nursery.start_soon(probe.send_probes, udp_port)
            while line := await read_command():
                command, _, argument = line.partition(" ")
                if command == "mark":
                    probe.label = argument
                    answer({"label": argument})
                elif command == "probe":
                    probe.probing = argument == "on"
                    answer({"probing": probe.probing})
                elif command == "count":
                    answer({"probes_sent": probe.report.probes_sent})
                elif command == "report":
                    probe.report.windows = probe.windows()
                    answer(probe.report)
                elif command == "quit":
                    break
                else:
                    answer({"error": f"unknown command {command!r}"})
            nursery.cancel_scope.cancel()


def client_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bwmon bench all: the end-to-end probe")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=600, help="exit after this many s")
    args = parser.parse_args(argv)
    trio.run(probe_main, args.http_port, args.udp_port, args.deadline)


if __name__ == "__main__":
    client_main()
