"""``bwmon bench metrics``: what a Prometheus scrape of ``/metrics`` costs a loaded daemon.

One run on one machine, loopback only (docs/BENCHMARKS.md):

- a real ``bwmon serve`` child pinned to CPU 0, storage ``backend = "none"``, with 5,000 live
  meetings of 4 participants (20,000) kept live by ``emit --replay`` of 20,000 frames — one
  sample of every participant per round — pinned to CPU 1 (``aggregate.participant_timeout_s``
  raised to 120 s, so that nobody leaves while the benchmark switches phases);
- ingest with and without scraping, side by side (below);
- scrape time: ``GET /metrics`` timed from this process, ``SCRAPES`` times while the
  participants send at half the lossless rate found without scraping (a load the daemon keeps
  up with), median and p95;
- the daemon's CPU per scrape, from ``/proc/<pid>/stat``: its CPU seconds over a window of
  back-to-back scrapes, less its CPU rate over windows of equal length without scrapes (before
  and after), divided by the scrapes;
- ingest with and without scraping, side by side: two lossless rate searches (bench ingest's:
  double, then bisect; loss under 0.1 %) of the same workload taking turns step by step, each
  step ``STEP_S`` long; in the steps of the search "with", one scrape halfway through (a
  scrape every 5 s, as a Prometheus ``scrape_interval: 5s``). The cost is
  ``1 - with / without`` of the two lossless rates; the target is under 2 %.

``--quick`` is a smoke run (CI) with 1,000 meetings (4,000 participants), steps of 1 s and no
bisection: not a measurement.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import msgspec
import trio
import typer

from cli.bench.fanout import process_cpu_s, start_emit
from cli.bench.harness import (
    DAEMON_CPU,
    DATAGRAM_BUDGET,
    MAX_LOSS,
    UdpStep,
    cpu_count,
    emit_options,
    median,
    meets,
    percentile,
    pinned_to_sender_cpu,
    rate_search,
)
from cli.bench.ingest import udp_step
from cli.daemon_process import DaemonProcess, running_daemon
from cli.emit import EmitOptions

MEETINGS = 5_000
QUICK_MEETINGS = 1_000  # --quick: a smoke run
PARTICIPANTS = 4
SCRAPES = 30
SCRAPE_INTERVAL_S = 5.0
TARGET_COST = 0.02  # of the lossless ingest rate


class SearchSide(msgspec.Struct):
    scraping: bool
    lossless_frames_per_s: float  # the best lossless step's accepted rate
    steps: list[UdpStep]


class MetricsResult(msgspec.Struct):
    meetings: int
    participants: int  # live in the daemon when the measurements began
    scrape_load_frames_per_s: float  # the live load during the timed scrapes
    scrape_bytes: int
    scrape_ms_median: float
    scrape_ms_p95: float
    scrape_ms_max: float
    daemon_cpu_ms_per_scrape: float | None  # /proc: the daemon's CPU with and without scrapes
    render_cpu_ms_per_scrape: float  # the daemon's own count: the live part's steps only
    lossless_frames_per_s_without: float
    lossless_frames_per_s_with: float
    ingest_cost: float  # 1 - with / without (negative: within the noise)
    target_cost: float
    meets_target: bool
    cpu_cost_estimate: float  # the live part's CPU per scrape over SCRAPE_INTERVAL_S
    step_s: float
    cpus: int
    pinned: bool
    sides: list[SearchSide]


def workload(daemon: DaemonProcess, meetings: int, rate: float, seconds: float) -> EmitOptions:
    """The ``meetings`` of ``PARTICIPANTS``, one frame of each participant per round, replayed
    at ``rate`` frames/s."""
    return emit_options(
        daemon,
        rate,
        seconds,
        budget=DATAGRAM_BUDGET,
        meetings=meetings,
        participants=PARTICIPANTS,
        replay=meetings * PARTICIPANTS,
    )


def scrape(daemon: DaemonProcess) -> tuple[float, bytes]:
    """One ``GET /metrics``: seconds until the whole body was read, and the body."""
    started = time.perf_counter()
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return time.perf_counter() - started, body


def own_cost(body: bytes) -> tuple[float, float]:
    """The daemon's own count of the renders of the live part before this one, and their CPU
    seconds (``bwmon_metrics_renders_total``, ``bwmon_metrics_render_cpu_seconds_total``)."""
    found = dict(re.findall(rb"^(bwmon_metrics_render\w*_total) (\S+)$", body, re.MULTILINE))
    return (
        float(found[b"bwmon_metrics_renders_total"]),
        float(found[b"bwmon_metrics_render_cpu_seconds_total"]),
    )


async def scrape_phase(
    daemon: DaemonProcess, meetings: int, rate: float, scrapes: int, window_s: float
) -> dict[str, float]:
    """Under the live load (``rate`` frames/s): ``scrapes`` timed scrapes, then the CPU
    windows (quiet, scraping back to back, quiet)."""
    pid = daemon.process.pid
    seconds: list[float] = []
    body = b""
    first_cost = (0.0, 0.0)
    async with trio.open_nursery() as nursery:
        await start_emit(nursery, workload(daemon, meetings, rate, 3 * window_s + scrapes))
        await trio.sleep(1.0)
        for _ in range(scrapes):
            took, body = await trio.to_thread.run_sync(scrape, daemon)
            seconds.append(took)
            await trio.sleep(0.25)
            if len(seconds) == 1:
                first_cost = own_cost(body)
        last_cost = own_cost(body)

        async def cpu_window(scraping: bool) -> tuple[float, int]:
            before, started = process_cpu_s(pid), time.monotonic()
            count = 0
            while time.monotonic() - started < window_s:
                if scraping:
                    await trio.to_thread.run_sync(scrape, daemon)
                    count += 1
                else:
                    await trio.sleep(0.05)
            after = process_cpu_s(pid)
            elapsed = time.monotonic() - started
            cpu = (after - before) if after is not None and before is not None else float("nan")
            return cpu / elapsed, count

        quiet_before, _ = await cpu_window(False)
        busy, count = await cpu_window(True)
        quiet_after, _ = await cpu_window(False)
        nursery.cancel_scope.cancel()
    base = (quiet_before + quiet_after) / 2
    per_scrape = (busy - base) * window_s / count if count else float("nan")
    ordered = sorted(seconds)
    renders = last_cost[0] - first_cost[0]
    return {
        "render_cpu_ms": (last_cost[1] - first_cost[1]) / renders * 1000 if renders else 0.0,
        "bytes": len(body),
        "median_ms": median(ordered) * 1000,
        "p95_ms": percentile(ordered, 0.95) * 1000,
        "max_ms": ordered[-1] * 1000,
        "cpu_ms_per_scrape": per_scrape * 1000,
    }


def side_by_side(
    daemon: DaemonProcess, meetings: int, step_s: float, start_rate: float, refine_steps: int
) -> list[SearchSide]:
    """Two lossless searches taking turns, step by step: without scraping, then with one
    scrape halfway through each step."""
    searches = {
        False: rate_search(start_rate, refine_steps),
        True: rate_search(start_rate, refine_steps),
    }
    rates: dict[bool, float | None] = {k: next(s) for k, s in searches.items()}
    results: dict[bool, tuple[UdpStep | None, list[UdpStep]]] = {}
    while len(results) < 2:
        for scraping in (False, True):
            rate = rates.get(scraping)
            if rate is None:
                continue
            timer = threading.Timer(step_s / 2, scrape, (daemon,)) if scraping else None
            if timer is not None:
                timer.start()
            step = udp_step(daemon, workload(daemon, meetings, rate, step_s))
            if timer is not None:
                timer.join()
            try:
                rates[scraping] = searches[scraping].send(step)
            except StopIteration as done:
                results[scraping] = done.value
                rates[scraping] = None
    return [
        SearchSide(
            scraping=scraping,
            lossless_frames_per_s=best.accepted_frames_per_s if best else 0.0,
            steps=steps,
        )
        for scraping, (best, steps) in sorted(results.items())
    ]


def run_metrics(quick: bool, log_dir: Path) -> MetricsResult:
    cpus = cpu_count()
    step_s = 1.0 if quick else SCRAPE_INTERVAL_S
    meetings = QUICK_MEETINGS if quick else MEETINGS
    with pinned_to_sender_cpu() as pinned:
        config = log_dir / "collector.toml"
        config.write_text(
            f"[storage]\nbackend = 'none'\nstate_dir = '{log_dir}'\n"
            "[aggregate]\nparticipant_timeout_s = 120\n"
        )
        with running_daemon(
            log_dir / "bench-daemon.log",
            ["--config", str(config)],
            cpu=DAEMON_CPU if pinned else None,
        ) as daemon:
            # Everyone joins: a round a second, for 2 s.
            udp_step(daemon, workload(daemon, meetings, meetings * PARTICIPANTS, 2.0))
            participants = daemon.settled_health()["aggregate"]["participants"]
            sides = side_by_side(
                daemon,
                meetings,
                step_s,
                start_rate=10_000 if quick else 20_000,
                refine_steps=0 if quick else 6,
            )
            # Scrapes under half the lossless rate: a load the daemon keeps up with, so that
            # its CPU time tells what a scrape adds.
            live_rate = max(1_000.0, sides[0].lossless_frames_per_s / 2)
            timing = trio.run(
                scrape_phase,
                daemon,
                meetings,
                live_rate,
                3 if quick else SCRAPES,
                0.5 if quick else 3.0,
            )
    without, with_ = (side.lossless_frames_per_s for side in sides)
    cost = 1 - with_ / without if without else 1.0
    cpu_ms = timing["cpu_ms_per_scrape"]
    return MetricsResult(
        meetings=meetings,
        participants=participants,
        scrape_load_frames_per_s=round(live_rate),
        scrape_bytes=int(timing["bytes"]),
        scrape_ms_median=round(timing["median_ms"], 2),
        scrape_ms_p95=round(timing["p95_ms"], 2),
        scrape_ms_max=round(timing["max_ms"], 2),
        daemon_cpu_ms_per_scrape=round(cpu_ms, 2) if cpu_ms == cpu_ms else None,
        render_cpu_ms_per_scrape=round(timing["render_cpu_ms"], 2),
        lossless_frames_per_s_without=without,
        lossless_frames_per_s_with=with_,
        ingest_cost=round(cost, 4),
        target_cost=TARGET_COST,
        meets_target=cost < TARGET_COST and with_ > 0,
        cpu_cost_estimate=round(timing["render_cpu_ms"] / 1000 / SCRAPE_INTERVAL_S, 4),
        step_s=step_s,
        cpus=cpus,
        pinned=pinned,
        sides=sides,
    )


def print_summary(result: MetricsResult) -> None:
    typer.echo(
        f"/metrics with {result.meetings:,} meetings and {result.participants:,} live "
        f"participants (sending {result.scrape_load_frames_per_s:,.0f} frames/s): "
        f"{result.scrape_bytes:,} bytes; scrape {result.scrape_ms_median:.1f} ms "
        f"median, {result.scrape_ms_p95:.1f} ms p95, {result.scrape_ms_max:.1f} ms max; daemon "
        f"CPU {result.daemon_cpu_ms_per_scrape} ms per scrape (/proc), of which the live part "
        f"{result.render_cpu_ms_per_scrape} ms (its own count)"
    )
    typer.echo(
        f"lossless UDP ingest (loss < {MAX_LOSS:.1%}): {result.lossless_frames_per_s_without:,.0f}"
        f" frames/s without scraping, {result.lossless_frames_per_s_with:,.0f} with a scrape "
        f"every {result.step_s:g} s: cost {result.ingest_cost:.2%} (CPU estimate "
        f"{result.cpu_cost_estimate}); target < {result.target_cost:.0%}: "
        f"{meets(result.meets_target)}"
    )
