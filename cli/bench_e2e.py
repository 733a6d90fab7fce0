"""End to end for ``bwmon bench all``: frames in over UDP → aggregated → minute rows in
MariaDB and deltas at a subscriber, with the daemon as deployed (storage ``mysql``).

One run on one machine, loopback only, bounded in time:

- a throwaway database ``bwmon_bench_<random>`` on the MariaDB/MySQL server, dropped at the end
  whatever happens; a real ``bwmon serve`` child pinned to CPU 0 writing to it (the daemon's
  default flush interval and publish interval);
- one probe process (this module run as ``python -m cli.bench_e2e``, on the sender's CPU)
  subscribed to ``meetings`` in MessagePack, following it with a ``TopicMirror``; every
  ``PROBE_INTERVAL_S`` it sends one ``rtc`` frame of a meeting that does not exist yet
  (``probe-<n>``) over UDP to the daemon and notes the time. **Frame-to-subscriber latency**
  = the time it reads the first delta (or snapshot) that holds that meeting minus the time it
  sent the frame: one clock, one process, the whole path (UDP, decode, aggregation, the next
  publish tick, the diff, the WebSocket). It also keeps each delta's receipt time minus its
  ``at`` (the daemon's publish tick): the publish-to-subscriber part alone;
- per run: bench ingest's lossless rate search (``lossless_search``: the replayed workload of
  ``emit --replay``, batched under 1,200 bytes, from the benchmark process on CPU 1; loss =
  frames emit sent that the daemon did not count as accepted, the probes left out), then a
  longer sustained window at the best rate found (again at 0.85 times the rate if it lost
  0.1 % or more, up to 4 windows): its accepted rate, if its loss stayed under 0.1 %, is the
  run's figure, and the probes' latencies are taken in it;
- at the end: the daemon's peak RSS (``VmHWM`` in ``/proc/<pid>/status``), a clean stop (the
  final flush writes the open minutes), and the rows the database holds.

The probe process takes one command per line on stdin (``mark LABEL``, ``count``, ``report``,
``probe on|off``, ``quit``) and answers each with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import asyncmy.errors
import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from cli.bench import (
    DAEMON_CPU,
    MAX_LOSS,
    SENDER_CPU,
    UdpStep,
    emit_options,
    lossless_search,
)
from cli.bench_fanout import ChildProcess, percentile
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import emit
from collector.config import FanoutConfig
from protocol import RtcSample, encode_msgpack
from protocol.errors import BwmonError
from protocol.subscribe import (
    Delta,
    Snapshot,
    Subscribe,
    TopicMirror,
    server_msgpack_decoder,
)

TARGET_E2E_FRAMES_PER_S = 100_000
LATENCY_MARGIN_MS = 250.0  # the latency target is the publish interval plus this
PROBE_INTERVAL_S = 0.05
SUSTAIN_ATTEMPTS = 4
SUSTAIN_BACKOFF = 0.85
TOPIC = "meetings"
MAX_MESSAGE_BYTES = 64 << 20
DROP_DEADLINE_S = 10.0


@dataclass(frozen=True, slots=True)
class E2ePlan:
    runs: int
    step_s: float
    start_rate: float
    refine_steps: int
    sustain_s: float


E2E_FULL = E2ePlan(runs=3, step_s=2.0, start_rate=40_000, refine_steps=4, sustain_s=5.0)
E2E_QUICK = E2ePlan(runs=1, step_s=0.3, start_rate=80_000, refine_steps=0, sustain_s=1.5)


# -- the probe process -----------------------------------------------------------------------


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


def _answer(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


async def _command() -> str:
    line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip()


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
            while line := await _command():
                command, _, argument = line.partition(" ")
                if command == "mark":
                    probe.label = argument
                    _answer({"label": argument})
                elif command == "probe":
                    probe.probing = argument == "on"
                    _answer({"probing": probe.probing})
                elif command == "count":
                    _answer({"probes_sent": probe.report.probes_sent})
                elif command == "report":
                    probe.report.windows = probe.windows()
                    _answer(probe.report)
                elif command == "quit":
                    break
                else:
                    _answer({"error": f"unknown command {command!r}"})
            nursery.cancel_scope.cancel()


def client_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bwmon bench all: the end-to-end probe")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=600, help="exit after this many s")
    args = parser.parse_args(argv)
    trio.run(probe_main, args.http_port, args.udp_port, args.deadline)


class ProbeProcess(ChildProcess):
    """The probe child, driven like bench fanout's client: one line in, one JSON line out."""

    def __init__(self, daemon: DaemonProcess, log: Path, deadline_s: float) -> None:
        command = [sys.executable, "-m", "cli.bench_e2e", "--http-port", str(daemon.http_port)]
        command += ["--udp-port", str(daemon.udp_port), "--deadline", str(deadline_s)]
        super().__init__(command, None, log)


# -- the benchmark process -------------------------------------------------------------------


class E2eRun(msgspec.Struct):
    # Accepted over the sustained window if it lost under MAX_LOSS, else 0: the rate the
    # daemon held with loss under 0.1 % for ``sustained_s``.
    frames_per_s: float
    sustained_offered_frames_per_s: float  # the last window's
    sustained_loss_fraction: float
    sustained_s: float
    search_frames_per_s: float  # the search's best lossless step (shorter)
    search_loss_fraction: float
    probe_latency_p50_ms: float | None  # frame sent -> the delta holding it read
    probe_latency_p99_ms: float | None
    probe_latency_max_ms: float | None
    probes_sent: int
    probes_seen: int
    delta_latency_p50_ms: float | None  # the delta's publish tick -> read
    delta_latency_p99_ms: float | None
    steps: list[UdpStep]  # the search's
    sustained: list[UdpStep]  # the sustained windows, in order


class StoredRows(msgspec.Struct):
    rtc_minute_rows: int
    streams: int  # distinct (meeting, participant, connection) with rows
    replay_streams: int  # of the flood's 1,000 streams
    probe_streams: int
    minutes: int
    samples: int


class E2eResult(msgspec.Struct):
    runs: list[E2eRun]
    warmup: UdpStep  # the first step, not counted
    publish_interval_s: float
    peak_rss_bytes: int | None  # VmHWM of the daemon at the end
    stored: StoredRows | None
    storage_health: dict[str, Any]
    fanout_health: dict[str, Any]
    probe_resyncs: int
    probe_error: str | None
    database: str


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (``VmHWM``), None where ``/proc`` does not tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def _sql(server: dict[str, Any], sql: str, database: str | None = None) -> list[Any]:
    conn = await asyncmy.connect(db=database, **server)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
            return list(await cursor.fetchall())
    finally:
        conn.close()


def sql(server: dict[str, Any], statement: str, database: str | None = None) -> list[Any]:
    return asyncio.run(asyncio.wait_for(_sql(server, statement, database), DROP_DEADLINE_S))


class E2eUnavailable(BwmonError):
    """The database could not be created: the end-to-end benchmark cannot run."""


@contextlib.contextmanager
def throwaway_database(server: dict[str, Any]) -> Iterator[str]:
    name = f"bwmon_bench_{secrets.token_hex(6)}"
    try:
        sql(server, f"CREATE DATABASE {name}")
    except (OSError, TimeoutError, asyncmy.errors.Error) as exc:
        raise E2eUnavailable(f"mysql: cannot create {name}: {exc}") from exc
    try:
        yield name
    finally:
        with contextlib.suppress(OSError, TimeoutError, asyncmy.errors.Error):
            sql(server, f"DROP DATABASE IF EXISTS {name}")


def e2e_step(daemon: DaemonProcess, probe: ProbeProcess, rate: float, seconds: float) -> UdpStep:
    """bench ingest's ``udp_step``, with the probes sending while emit sends (their frames
    left out of the accepted count)."""
    before = daemon.settled_health()["ingest"]["udp"]
    probes_before = probe.ask("count")["probes_sent"]
    probe.ask("probe on")
    try:
        report = trio.run(emit, emit_options(daemon, rate, seconds, budget=1200))
    finally:
        probe.ask("probe off")
    after = daemon.settled_health()["ingest"]["udp"]
    probes = probe.ask("count")["probes_sent"] - probes_before
    sent = report.frames_sent
    accepted = after["frames_accepted"] - before["frames_accepted"] - probes
    return UdpStep(
        offered_frames_per_s=round(rate),
        sent_frames=sent,
        accepted_frames=accepted,
        accepted_frames_per_s=round(accepted / seconds, 1),
        loss_fraction=round(max(0.0, 1 - accepted / sent), 6) if sent else 1.0,
        kernel_drops=(after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0),
    )


def e2e_run(
    daemon: DaemonProcess, probe: ProbeProcess, plan: E2ePlan, index: int, start_rate: float
) -> E2eRun:
    """The search, then the sustained window at its best rate; if that window loses
    ``MAX_LOSS`` or more, again at ``SUSTAIN_BACKOFF`` times the rate, at most
    ``SUSTAIN_ATTEMPTS`` windows in all. The probes' latencies are the last window's."""
    probe.ask(f"mark search-{index}")
    best, steps = lossless_search(
        lambda rate: e2e_step(daemon, probe, rate, plan.step_s), start_rate, plan.refine_steps
    )
    rate = best.offered_frames_per_s if best else start_rate / 2
    attempts: list[UdpStep] = []
    label = ""
    for attempt in range(SUSTAIN_ATTEMPTS):
        label = f"sustained-{index}-{attempt}"
        probe.ask(f"mark {label}")
        attempts.append(e2e_step(daemon, probe, rate, plan.sustain_s))
        probe.ask("mark between")
        if attempts[-1].loss_fraction < MAX_LOSS:
            break
        rate = round(rate * SUSTAIN_BACKOFF, -3)
    time.sleep(1.5)  # the last probes of the window reach the subscriber
    window = msgspec.convert(probe.ask("report")["windows"].get(label, {}), ProbeWindow)
    sustained = attempts[-1]
    held = sustained.loss_fraction < MAX_LOSS
    return E2eRun(
        frames_per_s=sustained.accepted_frames_per_s if held else 0.0,
        sustained_offered_frames_per_s=sustained.offered_frames_per_s,
        sustained_loss_fraction=sustained.loss_fraction,
        sustained_s=plan.sustain_s,
        search_frames_per_s=best.accepted_frames_per_s if best else 0.0,
        search_loss_fraction=best.loss_fraction if best else 1.0,
        probe_latency_p50_ms=window.probe_latency_p50_ms,
        probe_latency_p99_ms=window.probe_latency_p99_ms,
        probe_latency_max_ms=window.probe_latency_max_ms,
        probes_sent=window.probes_sent,
        probes_seen=window.probes_seen,
        delta_latency_p50_ms=window.delta_latency_p50_ms,
        delta_latency_p99_ms=window.delta_latency_p99_ms,
        steps=steps,
        sustained=attempts,
    )


def stored_rows(server: dict[str, Any], database: str) -> StoredRows:
    ((rows, streams, minutes, samples),) = sql(
        server,
        "SELECT COUNT(*), COUNT(DISTINCT meeting, participant, connection), "
        "COUNT(DISTINCT minute), COALESCE(SUM(samples), 0) FROM rtc_minute",
        database,
    )
    ((probes,),) = sql(
        server,
        "SELECT COUNT(DISTINCT meeting, participant, connection) FROM rtc_minute "
        "WHERE meeting LIKE 'probe-%'",
        database,
    )
    return StoredRows(
        rtc_minute_rows=int(rows),
        streams=int(streams),
        replay_streams=int(streams) - int(probes),
        probe_streams=int(probes),
        minutes=int(minutes),
        samples=int(samples),
    )


def run_e2e(server: dict[str, Any], quick: bool) -> E2eResult:
    """The runs against one daemon writing to a throwaway database; pinned as bench ingest."""
    plan = E2E_QUICK if quick else E2E_FULL
    pinned = {DAEMON_CPU, SENDER_CPU} <= os.sched_getaffinity(0)
    original = os.sched_getaffinity(0) if pinned else None
    try:
        if pinned:
            os.sched_setaffinity(0, {SENDER_CPU})
        with (
            tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp,
            throwaway_database(server) as database,
        ):
            config = Path(tmp) / "collector.toml"
            config.write_text(
                "[storage]\nbackend = 'mysql'\n"
                f"mysql_host = '{server['host']}'\nmysql_port = {server['port']}\n"
                f"mysql_user = '{server['user']}'\nmysql_password = '{server['password']}'\n"
                f"mysql_database = '{database}'\nstate_dir = '{tmp}'\n"
            )
            with running_daemon(
                Path(tmp) / "bench-daemon.log",
                ["--config", str(config)],
                cpu=DAEMON_CPU if pinned else None,
            ) as daemon:
                probe = ProbeProcess(daemon, Path(tmp) / "probe.log", 600)
                try:
                    # Not counted: the flood's streams exist before anything is measured.
                    probe.ask("mark warmup")
                    warmup = e2e_step(daemon, probe, plan.start_rate, plan.step_s)
                    runs: list[E2eRun] = []
                    for i in range(plan.runs):
                        # Later runs start at half the previous best (fewer doubling steps).
                        start = plan.start_rate
                        if runs:
                            start = max(start, runs[-1].search_frames_per_s / 2)
                        runs.append(e2e_run(daemon, probe, plan, i, start))
                    report = msgspec.convert(probe.ask("report"), ProbeReport)
                finally:
                    probe.stop()
                rss = peak_rss_bytes(daemon.process.pid)
                health = daemon.health()
                daemon.stop(timeout_s=30)  # the final flush writes the open minutes
            stored = stored_rows(server, database)
    finally:
        if original is not None:
            os.sched_setaffinity(0, original)
    return E2eResult(
        runs=runs,
        warmup=warmup,
        publish_interval_s=FanoutConfig().publish_interval_s,
        peak_rss_bytes=rss,
        stored=stored,
        storage_health=health.get("storage", {}),
        fanout_health=health.get("fanout", {}),
        probe_resyncs=report.resyncs,
        probe_error=report.error,
        database=database,
    )


if __name__ == "__main__":
    client_main()
