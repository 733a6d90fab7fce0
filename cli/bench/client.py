"""``bwmon bench client``: the browser client's cost per tick per peer connection, measured in
the system Chromium, and the size of its module minified and gzipped (docs/BENCHMARKS.md).

- **The page.** Served by a small HTTP server of this process on a free loopback port, from
  memory (this module's page) and the repository (``clients/browser/bwmon.js``), with the
  headers that make it cross-origin isolated: ``performance.now()`` then ticks in 5 µs, not
  the 100 µs of an ordinary page, finer than the figures it measures. A page on loopback may
  open the daemon's WebSocket (Chromium blocks a page of another address space from reaching
  loopback) and is a secure context (``getUserMedia``).
- **The calls.** ``connections`` loopback calls in that page, each a pair of peer connections
  sending each other the fake camera and microphone (320 x 240 at 15 frames/s); one end of each
  is the monitored connection.
- **Two ways of measuring, in the same run.** ``functions``: a loop of the page asks, per
  tick, every connection for its ``getStats()`` at once, as the monitor does, then calls the
  module's exported ``rtcFields`` and ``localView`` and makes the frame's JSON, and times each
  part; a second report of each connection, only walked (each object's ``type`` read), gives
  the floor any client pays for reading a report.
  ``monitor``: ``createMonitor`` with a real daemon on loopback, every connection added, the
  cost of each tick read from ``monitor.stats()``; when the module cannot do that (yet),
  ``monitor_skipped`` says why.
- **The figures.** Per tick per peer connection (a tick's cost over ``connections``), after
  warm-up ticks: the median and p99 of the client's own work (``own``: getStats excluded) and
  of the whole tick (``with_getstats``: the wait for getStats included). The target is the
  own work's median with 4 connections, of the monitor when it ran, else of the functions.
- **The size.** terser (npm, a pinned version installed once into the user's cache, never
  into the repository) minifies the module as an ES module; gzip at level 9 packs that. Without
  Node.js or npm, or when the install fails, ``minify_skipped`` says why and no minified figure
  is printed.

What it must never do: report a figure it did not measure; a stage that could not run is
printed as skipped with its reason.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import itertools
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import typer

from cli.bench.chromium import launch_chromium, serving_http
from cli.bench.harness import NpmUnavailable, median, meets, npm_package, percentile
from cli.daemon_process import running_daemon
from protocol.errors import BwmonError

if TYPE_CHECKING:
    from playwright.sync_api import Page

TARGET_OWN_MEDIAN_MS = 1.0  # per tick per peer connection, getStats excluded, 4 connections
TARGET_MINIFIED_BYTES = 15_000
TARGET_GZIPPED_BYTES = 6_000
CONNECTIONS = 4
TERSER_VERSION = "5.51.4"

MODULE = Path(__file__).resolve().parents[2] / "clients" / "browser" / "bwmon.js"
ISOLATED = {  # cross-origin isolation: performance.now() in 5 µs steps
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
}

PAGE_HTML = """<!doctype html>
<meta charset="utf-8">
<title>bwmon bench client</title>
<script type="module">
import * as bench from "./bench.js";
window.bench = bench;
</script>
"""

# The page's measuring code. Every wait has a deadline, so that a stuck browser ends the run.
PAGE_JS = """
import * as bwmon from "./bwmon.js";

const calls = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function connected(pc) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === "connected") resolve();
      if (pc.connectionState === "failed") reject(new Error("a loopback call failed"));
    };
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

// One call: `pc` (monitored) offers, `peer` answers; both send the same fake tracks.
async function call(stream) {
  const pc = new RTCPeerConnection();
  const peer = new RTCPeerConnection();
  pc.onicecandidate = (e) => e.candidate && peer.addIceCandidate(e.candidate);
  peer.onicecandidate = (e) => e.candidate && pc.addIceCandidate(e.candidate);
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription();
  await peer.setRemoteDescription(pc.localDescription);
  for (const track of stream.getTracks()) peer.addTrack(track, stream);
  await peer.setLocalDescription();
  await pc.setRemoteDescription(peer.localDescription);
  await Promise.all([connected(pc), connected(peer)]);
  return { pc, peer };
}

// Resolves once every monitored connection receives both audio and video, so that the reports
// measured are those of a call in progress.
async function flowing(pc) {
  for (;;) {
    const kinds = new Set();
    for (const s of (await pc.getStats()).values()) {
      if (s.type === "inbound-rtp" && s.bytesReceived > 0) kinds.add(s.kind);
    }
    if (kinds.size === 2) return;
    await sleep(100);
  }
}

function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// Errors come back as values: Python turns them into a message, not a traceback.
async function answer(work) {
  try {
    return await work();
  } catch (error) {
    return { error: String(error?.message ?? error) };
  }
}

export function setup(connections) {
  return answer(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 320, height: 240, frameRate: 15 },
    });
    for (let i = 0; i < connections; i++) {
      calls.push(await within(20_000, "a loopback call connected", call(stream)));
    }
    await within(20_000, "media flowing both ways", Promise.all(calls.map((c) => flowing(c.pc))));
    return { isolated: self.crossOriginIsolated };
  });
}

// The exported functions, as the monitor calls them: per tick, every connection's getStats()
// at once, then per report rtcFields, localView and the frame's JSON, each timed; then a
// second report of each connection only walked. Costs per tick per connection, in ms.
export const measureFunctions = (ticks, warmup, intervalMs, deadlineMs) => answer(async () => {
  const deadline = performance.now() + deadlineMs;
  const state = calls.map(({ pc }, i) => ({ pc, c: `c${i}`, fields: null, score: null }));
  const n = state.length;
  const own = [], whole = [], walks = [], parts = { rtcFields: [], localView: [], json: [] };
  for (let tick = 0; tick < warmup + ticks && performance.now() < deadline; tick++) {
    let mapped = 0, viewed = 0, encoded = 0, walked = 0;
    const began = performance.now();
    const reports = await Promise.all(state.map((s) => s.pc.getStats()));
    const waited = performance.now() - began;
    state.forEach((s, i) => {
      const got = performance.now();
      const fields = bwmon.rtcFields(reports[i]);
      const map = performance.now();
      const view = bwmon.localView(s.fields, fields, s.score);
      const viewEnd = performance.now();
      JSON.stringify({ t: "rtc", m: "bench", p: "page", c: s.c, q: tick, ...fields });
      encoded += performance.now() - viewEnd;
      viewed += viewEnd - map;
      mapped += map - got;
      s.fields = fields;
      s.score = view?.score ?? null;
    });
    // The floor any client pays: reading what is in a report at all.
    for (const again of await Promise.all(state.map((s) => s.pc.getStats()))) {
      const walkBegan = performance.now();
      again.forEach((stats) => stats.type);
      walked += performance.now() - walkBegan;
    }
    if (tick >= warmup) {
      const worked = mapped + viewed + encoded;
      own.push(worked / n);
      whole.push((waited + worked) / n);
      parts.rtcFields.push(mapped / n);
      parts.localView.push(viewed / n);
      parts.json.push(encoded / n);
      walks.push(walked / n);
    }
    await sleep(intervalMs);
  }
  const statsPerReport = (await state[0].pc.getStats()).size;
  return { own, whole, parts, walks, statsPerReport };
});

// createMonitor on the same calls, sending to the daemon at `url`. A tick calls onSample once,
// so each read of monitor.stats() there gives one tick's costs. Any failure is a reason to
// skip this measurement, not the run.
export async function measureMonitor(url, ticks, warmup, intervalMs, deadlineMs) {
  let monitor;
  try {
    monitor = bwmon.createMonitor({ url, meeting: "bench", participant: "page", intervalMs });
    calls.forEach(({ pc }, i) => monitor.add(pc, { connection: `c${i}` }));
    const own = [], whole = [];
    let samples = 0;
    const measured = new Promise((resolve, reject) => {
      const unsubscribe = monitor.onSample(() => {
        const { getStatsMs, workMs, connections } = monitor.stats();
        if (typeof workMs !== "number" || typeof getStatsMs !== "number") {
          reject(new Error("monitor.stats() gives no getStatsMs and workMs"));
        } else if (++samples > warmup) {
          own.push(workMs / connections);
          whole.push((getStatsMs + workMs) / connections);
        }
        if (own.length === ticks) {
          unsubscribe();
          resolve();
        }
      });
    });
    await within(deadlineMs, `${warmup + ticks} ticks of the monitor`, measured);
    return { own, whole, stats: monitor.stats() };
  } catch (error) {
    return { skipped: `createMonitor: ${error?.message ?? error}` };
  } finally {
    await monitor?.close();
  }
}
"""


# -- the results -----------------------------------------------------------------------------


class TickCost(msgspec.Struct):
    """One way of measuring: costs per tick per peer connection, in ms."""

    ticks: int
    own_median_ms: float  # the client's own work: getStats excluded
    own_p99_ms: float
    with_getstats_median_ms: float  # the whole tick: the wait for getStats included
    with_getstats_p99_ms: float


class SectionSize(msgspec.Struct):
    source_bytes: int
    minified_bytes: int | None  # what the minified module loses without the section
    gzipped_bytes: int | None  # what the gzipped minified module loses without it


class ModuleSize(msgspec.Struct):
    target_minified_bytes: int
    target_gzipped_bytes: int
    meets_target: bool | None  # None: not minified, no verdict
    source_bytes: int
    source_gzipped_bytes: int
    minified_bytes: int | None
    gzipped_bytes: int | None  # the minified module, gzip -9
    minifier: str | None
    minify_skipped: str | None
    sections: dict[str, SectionSize]  # per `// ---- name: ... ----` section, "header" first


class ClientResult(msgspec.Struct):
    target_own_median_ms: float
    target_connections: int
    meets_target: bool
    measured_through: str  # "monitor" or "functions": the figures the verdict is on
    own_median_ms: float
    own_p99_ms: float
    with_getstats_median_ms: float
    with_getstats_p99_ms: float
    connections: int
    stats_per_report: int  # objects in a monitored connection's last report of the run
    interval_ms: int
    warmup_ticks: int
    cross_origin_isolated: bool  # performance.now() in 5 µs steps, not 100 µs
    browser: str
    functions: TickCost
    functions_median_ms_by_part: dict[str, float]  # rtcFields, localView, json: of own_median
    report_walk_median_ms: float  # reading each object's type of a report, per connection
    monitor: TickCost | None
    monitor_skipped: str | None
    monitor_stats: dict[str, Any] | None  # monitor.stats() at the end: frames sent, acked...
    size: ModuleSize


# -- the module's size -----------------------------------------------------------------------


class PageFailed(BwmonError):
    """The benchmark's page could not set up its calls or measure: the page's own message."""


class TerserUnavailable(BwmonError):
    """terser cannot run here: why."""


def prepare_terser() -> Path:
    """terser's command-line script, installed into the cache the first time."""
    try:
        return npm_package("terser", TERSER_VERSION, "bin/terser")
    except NpmUnavailable as exc:
        raise TerserUnavailable(f"{exc}: the module is not minified") from None


def minify(text: bytes) -> bytes:
    """A module minified by terser as an ES module (compressed, names mangled)."""
    terser = prepare_terser()
    command = ["node", str(terser), "--module", "--compress", "--mangle"]
    try:
        done = subprocess.run(command, input=text, capture_output=True, timeout=60, check=True)
    except subprocess.CalledProcessError as exc:
        raise TerserUnavailable(f"terser failed: {exc.stderr.decode(errors='replace')}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise TerserUnavailable(f"terser failed: {exc}") from None
    return done.stdout


def gzipped_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


SECTION = re.compile(rb"^// ---- (\w+): .* ----$", re.MULTILINE)


def sections(text: bytes) -> dict[str, tuple[int, int]]:
    """Where each section of the module (its marker comments) begins and ends; what comes
    before the first is ``header``."""
    marks = [(m.start(), m.group(1).decode()) for m in SECTION.finditer(text)]
    bounds = [(0, "header"), *marks, (len(text), "")]
    return {name: (start, end) for (start, name), (end, _) in itertools.pairwise(bounds)}


def section_sizes(text: bytes, minified: bytes | None) -> dict[str, SectionSize]:
    """Each section's source bytes and, when the module minifies, what the minified and the
    gzipped module lose without it: where a size over its target comes from."""
    sizes = {}
    for name, (start, end) in sections(text).items():
        size = SectionSize(source_bytes=end - start, minified_bytes=None, gzipped_bytes=None)
        if minified is not None:
            without = minify(text[:start] + text[end:])
            size.minified_bytes = len(minified) - len(without)
            size.gzipped_bytes = gzipped_size(minified) - gzipped_size(without)
        sizes[name] = size
    return sizes


def module_size(source: Path = MODULE) -> ModuleSize:
    text = source.read_bytes()
    minified: bytes | None = None
    skipped = None
    try:
        minified = minify(text)
        by_section = section_sizes(text, minified)
    except TerserUnavailable as exc:
        minified, skipped = None, str(exc)
        by_section = section_sizes(text, None)
    gzipped = gzipped_size(minified) if minified is not None else None
    return ModuleSize(
        target_minified_bytes=TARGET_MINIFIED_BYTES,
        target_gzipped_bytes=TARGET_GZIPPED_BYTES,
        meets_target=None
        if minified is None or gzipped is None
        else len(minified) <= TARGET_MINIFIED_BYTES and gzipped <= TARGET_GZIPPED_BYTES,
        source_bytes=len(text),
        source_gzipped_bytes=gzipped_size(text),
        minified_bytes=None if minified is None else len(minified),
        gzipped_bytes=gzipped,
        minifier=None if minified is None else f"terser {TERSER_VERSION}",
        minify_skipped=skipped,
        sections=by_section,
    )


# -- the cost per tick -----------------------------------------------------------------------


def tick_cost(own: list[float], whole: list[float]) -> TickCost:
    own_sorted, whole_sorted = sorted(own), sorted(whole)
    return TickCost(
        ticks=len(own),
        own_median_ms=round(median(own), 4),
        own_p99_ms=round(percentile(own_sorted, 0.99), 4),
        with_getstats_median_ms=round(median(whole), 4),
        with_getstats_p99_ms=round(percentile(whole_sorted, 0.99), 4),
    )


class PageHandler(http.server.BaseHTTPRequestHandler):
    """The page, its script and the module, from memory and the repository; nothing else."""

    def do_GET(self) -> None:
        bodies = {
            "/bench.html": ("text/html", PAGE_HTML.encode()),
            "/bench.js": ("text/javascript", PAGE_JS.encode()),
            "/bwmon.js": ("text/javascript", MODULE.read_bytes()),
        }
        content_type, body = bodies.get(self.path, ("text/plain", b"not found"))
        self.send_response(200 if self.path in bodies else 404)
        for name, value in (ISOLATED | {"content-type": content_type}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the benchmark prints its figures, not the page's requests


@contextlib.contextmanager
def serving_page() -> Iterator[str]:
    """The page's server on a free loopback port, stopped on exit; yields the page's URL."""
    with serving_http(PageHandler, "bench-page") as base:
        yield f"{base}/bench.html"


def in_page(page: Page, function: str, *args: Any) -> Any:
    """``bench.<function>(*args)`` in the page; its error, if it answers one, raised."""
    answer = page.evaluate(f"args => bench.{function}(...args)", list(args))
    if isinstance(answer, dict) and "error" in answer:
        raise PageFailed(f"{function}: {answer['error']}")
    return answer


def daemon_config(tmp: Path) -> str:
    """The daemon the monitor sends to: loopback, no storage (the page's cost is measured)."""
    config = tmp / "collector.toml"
    config.write_text(f"[storage]\nbackend = 'none'\nstate_dir = '{tmp}'\n")
    return str(config)


def run_client(quick: bool, connections: int = CONNECTIONS) -> ClientResult:
    ticks, warmup, interval_ms = (20, 5, 50) if quick else (200, 20, 50)
    deadline_ms = 60_000 if quick else 180_000
    size = module_size()
    with (
        tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp,
        running_daemon(
            Path(tmp) / "bench-daemon.log", ["--config", daemon_config(Path(tmp))]
        ) as daemon,
        serving_page() as page_url,
        launch_chromium() as browser,
    ):
        page = browser.new_page()
        page.goto(page_url)
        page.wait_for_function("window.bench !== undefined", timeout=10_000)
        calls = in_page(page, "setup", connections)
        measured = in_page(page, "measureFunctions", ticks, warmup, interval_ms, deadline_ms)
        functions = tick_cost(measured["own"], measured["whole"])
        by_part = {part: round(median(ms), 4) for part, ms in measured["parts"].items()}
        walk = round(median(measured["walks"]), 4)
        stats_per_report = measured["statsPerReport"]
        url = f"http://127.0.0.1:{daemon.http_port}"
        measured = in_page(page, "measureMonitor", url, ticks, warmup, interval_ms, deadline_ms)
        monitor = None if "skipped" in measured else tick_cost(measured["own"], measured["whole"])
        headline = monitor or functions
        return ClientResult(
            target_own_median_ms=TARGET_OWN_MEDIAN_MS,
            target_connections=CONNECTIONS,
            meets_target=connections == CONNECTIONS
            and headline.own_median_ms <= TARGET_OWN_MEDIAN_MS,
            measured_through="monitor" if monitor else "functions",
            own_median_ms=headline.own_median_ms,
            own_p99_ms=headline.own_p99_ms,
            with_getstats_median_ms=headline.with_getstats_median_ms,
            with_getstats_p99_ms=headline.with_getstats_p99_ms,
            connections=connections,
            stats_per_report=stats_per_report,
            interval_ms=interval_ms,
            warmup_ticks=warmup,
            cross_origin_isolated=bool(calls["isolated"]),
            browser=browser.version,
            functions=functions,
            functions_median_ms_by_part=by_part,
            report_walk_median_ms=walk,
            monitor=monitor,
            monitor_skipped=measured.get("skipped"),
            monitor_stats=measured.get("stats"),
            size=size,
        )


def print_size(size: ModuleSize) -> None:
    if size.minified_bytes is None:
        typer.echo(f"module: {size.source_bytes:,} B, not minified: {size.minify_skipped}")
        return
    typer.echo(
        f"module: {size.minified_bytes:,} B minified, {size.gzipped_bytes:,} B gzipped "
        f"({size.minifier}; source {size.source_bytes:,} B); targets "
        f"{size.target_minified_bytes:,} and {size.target_gzipped_bytes:,} B: "
        f"{meets(bool(size.meets_target))}"
    )
    typer.echo(
        "what each section adds, minified / gzipped: "
        + ", ".join(
            f"{name} {s.minified_bytes:,} / {s.gzipped_bytes:,} B"
            for name, s in size.sections.items()
            if s.minified_bytes is not None and s.gzipped_bytes is not None
        )
    )


def print_summary(result: ClientResult) -> None:
    typer.echo(
        f"client cost per tick per peer connection ({result.connections} connections, "
        f"through {result.measured_through}): own work median {result.own_median_ms} ms, "
        f"p99 {result.own_p99_ms} ms; with getStats median {result.with_getstats_median_ms} ms, "
        f"p99 {result.with_getstats_p99_ms} ms"
    )
    if result.monitor_skipped:
        typer.echo(f"monitor not measured: {result.monitor_skipped}")
    typer.echo(
        f"target own work median <= {result.target_own_median_ms} ms with "
        f"{result.target_connections} connections: {meets(result.meets_target)}"
    )
    print_size(result.size)
