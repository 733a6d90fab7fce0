"""End to end for ``bwmon bench all``: frames in over UDP → aggregated → minute rows in
MariaDB and deltas at a subscriber, with the daemon as deployed (storage ``mysql``).

One run on one machine, loopback only, bounded in time:

- a throwaway database ``bwmon_bench_<random>`` on the MariaDB/MySQL server, dropped at the end
  whatever happens; a real ``bwmon serve`` child pinned to CPU 0 writing to it (the daemon's
  default flush interval and publish interval);
- one probe process (``cli.bench.e2e_probe``, on the sender's CPU) subscribed to
  ``meetings``; every 50 ms it sends one ``rtc`` frame of a meeting that does not exist yet
  over UDP to the daemon, and times it until a delta holding that meeting reaches it
  (**frame-to-subscriber latency**: the whole path through the daemon); it also times each
  delta from the daemon's publish tick (the publish-to-subscriber part alone);
- per run: bench ingest's lossless rate search (``lossless_search``: the replayed workload of
  ``emit --replay``, batched under 1,200 bytes, from the benchmark process on CPU 1; loss =
  frames emit sent that the daemon did not count as accepted, the probes left out), then a
  longer sustained window at the best rate found (again at 0.85 times the rate if it lost
  0.1 % or more, up to 4 windows): its accepted rate, if its loss stayed under 0.1 %, is the
  run's figure, and the probes' latencies are taken in it;
- at the end: the daemon's peak RSS (``VmHWM`` in ``/proc/<pid>/status``), a clean stop (the
  final flush writes the open minutes), and the rows the database holds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio

from cli.bench.e2e_probe import ProbeReport, ProbeWindow
from cli.bench.harness import (
    DAEMON_CPU,
    DATAGRAM_BUDGET,
    MAX_LOSS,
    ChildProcess,
    UdpStep,
    emit_options,
    kernel_drops,
    lossless_search,
    mysql_query,
    pinned_to_sender_cpu,
    step_result,
    throwaway_database,
)
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import emit
from collector.config import FanoutConfig
from protocol.errors import BwmonError

TARGET_E2E_FRAMES_PER_S = 100_000
LATENCY_MARGIN_MS = 250.0  # the latency target is the publish interval plus this
SUSTAIN_ATTEMPTS = 4
SUSTAIN_BACKOFF = 0.85


@dataclass(frozen=True, slots=True)
class E2ePlan:
    runs: int
    step_s: float
    start_rate: float
    refine_steps: int
    sustain_s: float


E2E_FULL = E2ePlan(runs=3, step_s=2.0, start_rate=40_000, refine_steps=4, sustain_s=5.0)
E2E_QUICK = E2ePlan(runs=1, step_s=0.3, start_rate=80_000, refine_steps=0, sustain_s=1.5)


class ProbeProcess(ChildProcess):
    """The probe child (``python -m cli.bench.e2e_probe``): one line in, one JSON line out."""

    def __init__(self, daemon: DaemonProcess, log: Path, deadline_s: float) -> None:
        command = [sys.executable, "-m", "cli.bench.e2e_probe"]
        command += ["--http-port", str(daemon.http_port)]
        command += ["--udp-port", str(daemon.udp_port), "--deadline", str(deadline_s)]
        super().__init__(command, None, log)


# -- results ---------------------------------------------------------------------------------


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


class E2eUnavailable(BwmonError):
    """The database could not be created: the end-to-end benchmark cannot run."""


def e2e_step(daemon: DaemonProcess, probe: ProbeProcess, rate: float, seconds: float) -> UdpStep:
    """bench ingest's ``udp_step``, with the probes sending while emit sends (their frames
    left out of the accepted count)."""
    before = daemon.settled_health()["ingest"]["udp"]
    probes_before = probe.ask("count")["probes_sent"]
    probe.ask("probe on")
    try:
        report = trio.run(emit, emit_options(daemon, rate, seconds, budget=DATAGRAM_BUDGET))
    finally:
        probe.ask("probe off")
    after = daemon.settled_health()["ingest"]["udp"]
    probes = probe.ask("count")["probes_sent"] - probes_before
    sent = report.frames_sent
    accepted = after["frames_accepted"] - before["frames_accepted"] - probes
    return step_result(rate, seconds, sent, accepted, kernel_drops(before, after))


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
    ((rows, streams, minutes, samples),) = mysql_query(
        server,
        "SELECT COUNT(*), COUNT(DISTINCT meeting, participant, connection), "
        "COUNT(DISTINCT minute), COALESCE(SUM(samples), 0) FROM rtc_minute",
        database,
    )
    ((probes,),) = mysql_query(
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
    with (
        pinned_to_sender_cpu() as pinned,
        tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp,
        throwaway_database(server, E2eUnavailable) as database,
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
