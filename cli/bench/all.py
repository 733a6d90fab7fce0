"""``bwmon bench all``: every benchmark in one run, side by side with StatsD and the ceiling.

It runs, one after the other, on loopback only, every child process stopped at the end
whatever happens (docs/BENCHMARKS.md):

- ``aggregate``, ``storage`` and ``fanout``: the benchmarks of the same names, called in this
  process (``run_aggregate``, ``run_storage``, ``run_fanout``), their results kept whole;
- **ingest, side by side** (``cli.bench.compare``): a real ``bwmon serve``, the bare receiver
  and StatsD, each searched for its highest rate with loss under 0.1 %, the searches taking
  turns; ratios taken pair by pair within one run;
- **end to end** (``cli.bench.e2e``): frames over UDP into a daemon writing minute rows to
  MariaDB, with a subscriber timing the frames to it.

Each figure is the median, min and max over the runs. Targets are printed with a pass/fail
verdict; none is ever lowered to pass.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from cli.bench.aggregate import AggregateResult, run_aggregate
from cli.bench.compare import (
    TARGET_RATIO_TO_CEILING,
    TARGET_RATIO_VS_STATSD,
    CompareResult,
    run_compare,
)
from cli.bench.e2e import (
    LATENCY_MARGIN_MS,
    TARGET_E2E_FRAMES_PER_S,
    E2eResult,
    E2eUnavailable,
    run_e2e,
)
from cli.bench.fanout import FanoutResult, run_fanout
from cli.bench.harness import ClientFailed, cpu_count, median
from cli.bench.ingest import TARGET_UDP_FRAMES_PER_S
from cli.bench.statsd import StatsdUnavailable
from cli.bench.storage import StorageResult, run_storage
from cli.daemon_process import DaemonFailed
from collector.storage.sinks import StorageError
from protocol.build import compiled_modules


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
        cpus=cpu_count(),
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
