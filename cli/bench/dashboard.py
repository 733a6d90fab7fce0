"""``bwmon bench dashboard``: the admin dashboard (``collector/http/ui/``) in the system
Chromium, against a real daemon watching 5,000 live meetings (docs/BENCHMARKS.md).

- **The daemon.** ``bwmon serve`` on free loopback ports, storing into a throwaway
  ``bwmon_bench_<random>`` database of the MariaDB/MySQL server (dropped at the end) and
  fanning out through Redis (a private ``redis-server`` of this run on a free port, or
  ``redis_url`` with a key prefix of this run's own).
- **The load.** ``bwmon emit``, a child process: 5,000 meetings of 2 participants, each
  participant a sample a second, for the whole run; the daemon's fan-out turns that into one
  delta a second of the ``meetings`` topic (its publish interval) that changes every meeting.
- **The page** at ``/``, in one tab for the whole run, measured by a script that runs before
  the page's own (``INIT_JS``: a ``longtask`` PerformanceObserver, and a check each animation
  frame for the first table row with a meeting in it):

  1. *first meaningful render*: from navigation to the first frame with a meeting's row
     visible (``performance.now()`` counts from the navigation's start);
  2. *scroll*: the table scrolled to its end a screen a frame; rows in the DOM counted after
     every step, against what the viewport shows plus the table's overscan; the last meeting's
     row shown at the end;
  3. *search*: a meeting id typed into the search field; its row shown;
  4. *soak*: the page left on the table's top under live updates for ``minutes``; long tasks
     (over 50 ms) counted over its first minute; the JS heap read after a forced garbage
     collection (CDP ``HeapProfiler.collectGarbage``, ``Runtime.getHeapUsage``) at the end of
     that minute and at the end; the rows in the DOM counted every few seconds.

- **The size** of the page's own JS and CSS (every file under ``collector/http/ui/`` but
  ``vendor/``), minified: JS by terser (as ``bwmon bench client``), CSS by esbuild, each a
  pinned npm version installed into the user's cache.

A stage that cannot run (no page yet, no npm) is reported with why, never a figure it did not
measure.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import typer

from cli.bench.chromium import launch_chromium
from cli.bench.client import TerserUnavailable, minify
from cli.bench.harness import (
    NpmUnavailable,
    child,
    median,
    meets,
    npm_package,
    throwaway_database,
)
from cli.daemon_process import DaemonProcess, running_daemon
from protocol.errors import BwmonError

if TYPE_CHECKING:
    from playwright.sync_api import CDPSession, Page

MEETINGS = 5_000
PARTICIPANTS = 2  # per meeting
EMIT_LOSS = 0.004
EMIT_JITTER_MS = 8.0
TARGET_FIRST_RENDER_MS = 1_000.0
TARGET_LONGTASK_MS = 50.0  # no task longer than this in the first minute of live updates
LONGTASK_WINDOW_S = 60.0
TARGET_HEAP_GROWTH = 0.10  # heap at the end within 10 % of the heap after the first minute
TARGET_OWN_BYTES = 100_000  # the page's own JS and CSS, minified
ESBUILD_VERSION = "0.28.2"
ROW_SAMPLE_S = 5.0
TRACE_CATEGORIES = ["toplevel"]  # the tasks of each thread, with their CPU time
TASK_EVENTS = ("ThreadControllerImpl::RunTask", "RunTask")
SETTLE_S = 5.0  # after every meeting is live: the first publishes of 5,000 new meetings
# The browser is killed if it still runs this long past the soak's minutes (first render,
# scroll and search take well under a minute): a call it never answers fails the run
# (ChromiumStalled) instead of hanging it.
BROWSER_MARGIN_S = 300.0

UI_DIR = Path(__file__).resolve().parents[2] / "collector" / "http" / "ui"

# The page's table (collector/http/ui/table.js), as the measurements find it: its scrolling box,
# the rows it holds in the DOM (shown or pooled), a meeting's id on its row, the search field.
SCROLLER = ".vbody"
ROW = ".vbody .vrow"
SHOWN_ROW = ".vbody .vrow:not([hidden])"
SEARCH = "#search"
SNAPSHOT_START = '{"t":"snapshot","topic":"meetings"'  # the daemon's JSON, keys in order
# Rows drawn beyond each edge of the viewport: the table's data-overscan, else table.js's own.
DEFAULT_OVERSCAN = 6

# Runs in the page before any of its scripts.
INIT_JS = """
(() => {
  const bench = (window.__bench = { longtasks: [], firstRow: null, ws: {} });
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) bench.longtasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });
  // When the page's WebSocket was made, opened, and got the meetings' snapshot: a listener
  // added in the constructor runs before the page's own onmessage.
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      bench.ws.created ??= performance.now();
      this.addEventListener("open", () => (bench.ws.open ??= performance.now()));
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string" && event.data.startsWith(%(snapshot)s)) {
          bench.ws.snapshot ??= performance.now();
        }
      });
    }
  };
  const shown = (row) => {
    const r = row.getBoundingClientRect();
    return r.height > 0 && r.bottom > 0 && r.top < innerHeight && row.textContent.trim() !== "";
  };
  const look = () => {
    for (const row of document.querySelectorAll(%(row)s)) {
      if (row.dataset.id && shown(row)) {
        bench.firstRow = performance.now();
        return;
      }
    }
    requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
})();
"""

# The table scrolled to its end, a screen per step, two frames per step (the table renders in
# one); rows in the DOM counted after each against what the viewport shows plus the overscan
# on both sides. Then the bottom row: its place (aria-rowindex of aria-rowcount), whether the
# viewport shows it.
SCROLL_JS = """
async ({ row, shownRow, scroller, defaultOverscan, deadlineMs }) => {
  const box = document.querySelector(scroller);
  if (!box) return { error: `no ${scroller} in the page` };
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const top = (el) => el.getBoundingClientRect().top;
  const overscan = Number(box.dataset.overscan ?? defaultOverscan);
  const samples = [];
  const deadline = performance.now() + deadlineMs;
  const atEnd = () => box.scrollTop + box.clientHeight >= box.scrollHeight - 1;
  box.scrollTop = 0;
  await frame();
  await frame();
  for (;;) {
    const height = document.querySelector(shownRow)?.getBoundingClientRect().height || 0;
    const visible = height ? Math.ceil(box.clientHeight / height) + 1 : 0;
    samples.push([document.querySelectorAll(row).length, visible + 2 * overscan]);
    if (atEnd() || performance.now() > deadline) break;
    box.scrollTop += box.clientHeight;
    await frame();
    await frame();
  }
  const rows = [...document.querySelectorAll(shownRow)];
  const last = rows.reduce((a, b) => (a === null || top(b) > top(a) ? b : a), null);
  const view = box.getBoundingClientRect();
  const rect = last?.getBoundingClientRect();
  return {
    samples,
    overscan,
    reachedEnd: atEnd(),
    lastMeeting: last?.dataset.id ?? null,
    lastIndex: Number(last?.getAttribute("aria-rowindex") ?? NaN),
    rowCount: Number(box.getAttribute("aria-rowcount") ?? NaN),
    lastShown: !!rect && rect.height > 0 && rect.bottom <= view.bottom + 1 && rect.top >= view.top,
  };
}
"""

ROWS_JS = "(row) => document.querySelectorAll(row).length"

# What the page shows when a searched meeting's row does not: to say why.
SEARCH_STATE_JS = """
({ row, search }) => ({
  search: document.querySelector(search)?.value,
  scrollTop: document.querySelector(".vbody")?.scrollTop,
  rowCount: document.querySelector(".vbody")?.getAttribute("aria-rowcount"),
  rows: [...document.querySelectorAll(row)]
    .slice(0, 5)
    .map((r) => [r.dataset.id, Math.round(r.getBoundingClientRect().top)]),
})
"""

# Where the first render's time went, each a time from the navigation's start (ms).
BREAKDOWN_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const scripts = performance
    .getEntriesByType("resource")
    .filter((e) => e.startTime < window.__bench.firstRow && /[.](js|css)$/.test(e.name));
  const round = (v) => (v == null ? null : Math.round(v));
  return {
    html: round(nav?.responseEnd),
    scripts_and_css: round(Math.max(0, ...scripts.map((e) => e.responseEnd))),
    websocket_created: round(window.__bench.ws.created),
    websocket_open: round(window.__bench.ws.open),
    snapshot_received: round(window.__bench.ws.snapshot),
    first_row: round(window.__bench.firstRow),
  };
}
"""

ROW_SHOWN_JS = """
({ row, meeting }) => {
  for (const el of document.querySelectorAll(row)) {
    if (el.dataset.id !== meeting) continue;
    const r = el.getBoundingClientRect();
    if (r.height > 0 && r.bottom > 0 && r.top < innerHeight) return true;
  }
  return false;
}
"""


class DashboardFailed(BwmonError):
    """The run could not measure: no page, no daemon, no Redis, a stage that failed; why."""


class ScrollFigures(msgspec.Struct):
    steps: int
    max_rows_in_dom: int
    max_allowed_rows: int  # the rows the viewport shows plus the overscan on both sides
    overscan: int
    rows_within_bound: bool
    reached_end: bool
    last_meeting: str | None
    last_row_index: int | None  # aria-rowindex of the bottom row, when the table says it
    row_count: int | None  # aria-rowcount of the table, when it says it
    last_row_shown: bool


class SoakFigures(msgspec.Struct):
    minutes: float
    longtasks_first_minute: int
    longest_task_first_minute_ms: float
    longtasks_whole_run: int
    longest_task_whole_run_ms: float
    websocket_messages_first_minute: int
    # From a Chromium trace of the soak's last minute (of the whole soak when it is shorter
    # than 2 minutes), the "toplevel" tasks of the page's main thread: their CPU time against
    # their wall-clock time, which a busy machine inflates. The first minute is not traced:
    # tracing costs the page time, and its long tasks are the target.
    traced_s: float
    traced_longtasks: int  # the longtask observer's entries in the traced span
    traced_main_thread_tasks: int
    traced_main_thread_cpu_ms: float
    traced_longest_task_wall_ms: float
    traced_most_cpu_in_a_task_ms: float
    traced_tasks_over_50_ms_cpu: int
    heap_after_1_min_bytes: int
    heap_at_end_bytes: int
    heap_growth: float  # (end - after 1 min) / after 1 min
    max_rows_in_dom: int
    dom_nodes_at_end: int


class OwnSize(msgspec.Struct):
    files: dict[str, int]  # path under ui/ -> minified bytes
    source_bytes: int
    minified_bytes: int | None
    minifiers: str | None
    minify_skipped: str | None


class DashboardResult(msgspec.Struct):
    meetings: int
    participants_per_meeting: int
    browser: str | None
    first_render_ms: float | None
    first_render_breakdown_ms: dict[str, int | None]  # html, scripts_and_css, websocket_*...
    target_first_render_ms: float
    scroll: ScrollFigures | None
    search_meeting: str | None
    search_shown_ms: float | None  # from the last keystroke to the meeting's row shown
    soak: SoakFigures | None
    target_longtask_ms: float
    target_heap_growth: float
    size: OwnSize
    target_own_bytes: int
    daemon_fanout: dict[str, Any]  # /healthz at the end: publishes, last publish, loop lag
    # GET /api/meetings?limit=1 before the page opens, median of 3: the daemon reading the
    # `meetings` state a snapshot holds (from Redis: every daemon's parts, merged).
    api_meetings_ms: float
    verdicts: dict[str, bool | None]  # per target: None when it was not measured
    skipped: str | None  # why the page was not measured
    failures: dict[str, str]  # a stage that failed (first_render, scroll, search, soak): why


# -- the size ---------------------------------------------------------------------------------


def esbuild() -> Path:
    try:
        return npm_package("esbuild", ESBUILD_VERSION, "bin/esbuild")
    except NpmUnavailable as exc:
        raise TerserUnavailable(f"{exc}: the CSS is not minified") from None


def minify_css(text: bytes) -> bytes:
    command = ["node", str(esbuild()), "--minify", "--loader=css", "--log-level=error"]
    try:
        done = subprocess.run(command, input=text, capture_output=True, timeout=60, check=True)
    except subprocess.CalledProcessError as exc:
        raise TerserUnavailable(f"esbuild failed: {exc.stderr.decode(errors='replace')}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise TerserUnavailable(f"esbuild failed: {exc}") from None
    return done.stdout


def own_files(ui_dir: Path = UI_DIR) -> list[Path]:
    """The page's own scripts and style sheets: everything under ``ui/`` but ``vendor/``."""
    return sorted(
        path
        for path in ui_dir.rglob("*")
        if path.suffix in (".js", ".css") and "vendor" not in path.relative_to(ui_dir).parts
    )


def own_size(ui_dir: Path = UI_DIR) -> OwnSize:
    files = own_files(ui_dir)
    source = sum(path.stat().st_size for path in files)
    sizes: dict[str, int] = {}
    try:
        for path in files:
            text = path.read_bytes()
            minified = minify(text) if path.suffix == ".js" else minify_css(text)
            sizes[str(path.relative_to(ui_dir))] = len(minified)
    except TerserUnavailable as exc:
        return OwnSize({}, source, None, None, str(exc))
    return OwnSize(
        sizes, source, sum(sizes.values()), f"terser (JS), esbuild {ESBUILD_VERSION} (CSS)", None
    )


# -- the daemon, Redis and the load ----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A ``redis-server`` of this run on a free loopback port, keeping nothing on disk; yields
    its URL."""
    if shutil.which("redis-server") is None:
        raise DashboardFailed("redis-server not found: install Redis or give --redis-url")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    with child(subprocess.Popen(command, stdout=subprocess.DEVNULL)):
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DashboardFailed(f"redis-server on port {port} did not answer")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def daemon_config(tmp: Path, server: dict[str, Any], database: str, redis_url: str) -> Path:
    config = tmp / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\n"
        f"mysql_host = {json.dumps(server['host'])}\nmysql_port = {server['port']}\n"
        f"mysql_user = {json.dumps(server['user'])}\n"
        f"mysql_password = {json.dumps(server['password'])}\n"
        f"mysql_database = '{database}'\nstate_dir = {json.dumps(str(tmp))}\n"
        f"[fanout]\nredis_url = {json.dumps(redis_url)}\n"
        f"redis_key_prefix = 'bwmon-bench-{secrets.token_hex(4)}'\n"
    )
    return config


def emitting(daemon: DaemonProcess, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    """``bwmon emit``: ``MEETINGS`` meetings of ``PARTICIPANTS``, a sample a second each."""
    command = [sys.executable, "-m", "cli.main", "emit", "--host", "127.0.0.1"]
    command += ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    command += ["--meetings", str(MEETINGS), "--participants", str(PARTICIPANTS)]
    command += ["--interval", "1", "--duration", str(seconds), "--seed", "26"]
    # Below the default alert rules' thresholds (1 % loss, 30 ms jitter) with room for the
    # profile's bad moments: some alerts raise and clear, not a storm of every participant's.
    command += ["--loss", str(EMIT_LOSS), "--jitter-ms", str(EMIT_JITTER_MS)]
    with log.open("wb") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def live_meetings(daemon: DaemonProcess) -> int:
    """The meetings a subscriber's snapshot holds now (the fan-out's state, not only what the
    daemon aggregates: a new meeting is there after its first publish)."""
    url = f"http://127.0.0.1:{daemon.http_port}/api/meetings?limit=1"
    with urllib.request.urlopen(url, timeout=10) as response:
        total: int = json.load(response)["total"]
    return total


def wait_for_meetings(daemon: DaemonProcess, emit: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while live_meetings(daemon) < MEETINGS:
        if emit.poll() is not None:
            raise DashboardFailed(f"bwmon emit exited: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise DashboardFailed(f"{live_meetings(daemon)} of {MEETINGS} meetings live after 90 s")
        time.sleep(0.5)
    time.sleep(SETTLE_S)


def api_meetings_ms(daemon: DaemonProcess) -> float:
    times = []
    for _ in range(3):
        began = time.perf_counter()
        live_meetings(daemon)
        times.append((time.perf_counter() - began) * 1000)
    return round(median(times), 1)


def fanout_figures(
    before: dict[str, Any], health: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """What the daemon's fan-out did while the page was measured: the page gets at most one
    delta of a topic per publish."""
    fanout = health.get("fanout", {})
    publishes = (fanout.get("publishes") or 0) - (before.get("fanout", {}).get("publishes") or 0)
    return {
        "build": health.get("build"),
        "publishes": publishes,
        "publishes_per_s": round(publishes / max(seconds, 1.0), 2),
        "last_publish_ms": fanout.get("last_publish_ms"),
        "loop_lag_max_s": health.get("loop", {}).get("lag_max_s"),
        "alerts_active": health.get("aggregate", {}).get("alerts_active"),
    }


def page_answers(url: str) -> str | None:
    """None if the daemon serves a page at ``url``, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"


# -- the page ---------------------------------------------------------------------------------


def heap_after_gc(cdp: CDPSession, passes: int = 5) -> int:
    """The JS heap in use after full collections, repeated until a pass frees nothing more
    (objects freed by a finalizer or a weak reference go only in a later pass)."""
    used = -1
    for _ in range(passes):
        cdp.send("HeapProfiler.collectGarbage")
        now: int = cdp.send("Runtime.getHeapUsage")["usedSize"]
        if now == used:
            break
        used = now
    return used


def wait_until(page: Page, condition: str, arg: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``condition(arg)`` holds in the page (polled each frame)."""
    started = time.monotonic()
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout_s * 1000, polling="raf")
    except Exception as exc:  # playwright's TimeoutError: the stage failed, the run goes on
        raise DashboardFailed(f"{what} not within {timeout_s} s: {exc}") from None
    return time.monotonic() - started


def measure_scroll(page: Page) -> ScrollFigures:
    answer = page.evaluate(
        SCROLL_JS,
        {
            "row": ROW,
            "shownRow": SHOWN_ROW,
            "scroller": SCROLLER,
            "defaultOverscan": DEFAULT_OVERSCAN,
            "deadlineMs": 60_000,
        },
    )
    if "error" in answer:
        raise DashboardFailed(f"scroll: {answer['error']}")
    samples = answer["samples"]
    most = max(samples, key=lambda s: s[0])
    index, count = answer["lastIndex"], answer["rowCount"]
    return ScrollFigures(
        steps=len(samples),
        max_rows_in_dom=most[0],
        max_allowed_rows=max(bound for _, bound in samples),
        overscan=int(answer["overscan"]),
        rows_within_bound=all(rows <= bound for rows, bound in samples),
        reached_end=bool(answer["reachedEnd"]),
        last_meeting=answer["lastMeeting"],
        last_row_index=int(index) if isinstance(index, int | float) and index == index else None,
        row_count=int(count) if isinstance(count, int | float) and count == count else None,
        last_row_shown=bool(answer["lastShown"]),
    )


def measure_search(page: Page, meeting: str) -> float:
    field = page.locator(SEARCH).first
    field.fill("")
    field.type(meeting, delay=0)
    try:
        shown = wait_until(
            page, ROW_SHOWN_JS, {"row": SHOWN_ROW, "meeting": meeting}, 10, "the row"
        )
    except DashboardFailed as exc:
        state = page.evaluate(SEARCH_STATE_JS, {"row": SHOWN_ROW, "search": SEARCH})
        raise DashboardFailed(f"{exc}; the page then: {state}") from None
    field.fill("")
    return shown


def measure_soak(
    page: Page,
    cdp: CDPSession,
    minutes: float,
    messages: list[float],
    first_minute_over: Callable[[], None] | None = None,
) -> SoakFigures:
    page.evaluate(f"document.querySelector({json.dumps(SCROLLER)})?.scrollTo(0, 0)")
    browser = page.context.browser
    assert browser is not None
    soak_s = minutes * 60
    trace_from_s = soak_s - 60 if soak_s >= 2 * LONGTASK_WINDOW_S else 0.0
    started = page.evaluate("performance.now()")
    window_end = started + LONGTASK_WINDOW_S * 1000
    began = time.monotonic()
    max_rows = 0
    heap_1: int | None = None
    traced_from: float | None = None
    while (elapsed := time.monotonic() - began) < soak_s:
        if heap_1 is None and elapsed >= LONGTASK_WINDOW_S:
            first_minute = page.evaluate("window.__bench.longtasks.slice()")
            heap_1 = heap_after_gc(cdp)
            if first_minute_over is not None:
                first_minute_over()
        if traced_from is None and elapsed >= trace_from_s:
            browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
            traced_from = page.evaluate("performance.now()")
        max_rows = max(max_rows, page.evaluate(ROWS_JS, ROW))
        page.wait_for_timeout(ROW_SAMPLE_S * 1000)  # Playwright's events (WebSocket) run here
    traced_to = page.evaluate("performance.now()")
    tasks = main_thread_tasks(browser.stop_tracing()) if traced_from is not None else []
    if heap_1 is None:  # a soak shorter than the window: the window is the soak
        first_minute = page.evaluate("window.__bench.longtasks.slice()")
        heap_1 = heap_after_gc(cdp)
    heap_end = heap_after_gc(cdp)
    whole = page.evaluate("window.__bench.longtasks.slice()")
    in_window = [d for t, d in first_minute if started <= t <= window_end]
    in_run = [d for t, d in whole if t >= started]
    in_trace = [d for t, d in whole if (traced_from or traced_to) <= t <= traced_to]
    window_messages = [t for t in messages if began <= t <= began + LONGTASK_WINDOW_S]
    return SoakFigures(
        minutes=round(minutes, 2),
        longtasks_first_minute=len(in_window),
        longest_task_first_minute_ms=round(max(in_window, default=0.0), 1),
        longtasks_whole_run=len(in_run),
        longest_task_whole_run_ms=round(max(in_run, default=0.0), 1),
        websocket_messages_first_minute=len(window_messages),
        traced_s=round((traced_to - (traced_from or traced_to)) / 1000, 1),
        traced_longtasks=len(in_trace),
        traced_main_thread_tasks=len(tasks),
        traced_main_thread_cpu_ms=round(sum(cpu for _, cpu in tasks), 1),
        traced_longest_task_wall_ms=round(max((wall for wall, _ in tasks), default=0.0), 1),
        traced_most_cpu_in_a_task_ms=round(max((cpu for _, cpu in tasks), default=0.0), 1),
        traced_tasks_over_50_ms_cpu=sum(cpu > TARGET_LONGTASK_MS for _, cpu in tasks),
        heap_after_1_min_bytes=heap_1,
        heap_at_end_bytes=heap_end,
        heap_growth=round((heap_end - heap_1) / heap_1, 4),
        max_rows_in_dom=max_rows,
        dom_nodes_at_end=page.evaluate("document.getElementsByTagName('*').length"),
    )


def main_thread_tasks(trace: bytes) -> list[tuple[float, float]]:
    """Each task of the page's main thread (``CrRendererMain``) in a Chromium trace: its wall
    and its CPU (thread) time, in ms."""
    loaded = json.loads(trace)
    events = loaded["traceEvents"] if isinstance(loaded, dict) else loaded
    mains = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "thread_name"
        and e.get("args", {}).get("name") == "CrRendererMain"
    }
    return [
        (e["dur"] / 1000, e.get("tdur", e["dur"]) / 1000)
        for e in events
        if e.get("ph") == "X" and e.get("name") in TASK_EVENTS and (e["pid"], e["tid"]) in mains
    ]


def some_meeting(daemon: DaemonProcess) -> str:
    """A meeting from the middle of the live list, to search for."""
    url = f"http://127.0.0.1:{daemon.http_port}/api/meetings?limit=1&offset={MEETINGS // 2}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    ids: list[str] = body["ids"]
    if not ids:
        raise DashboardFailed("/api/meetings gave no meeting")
    return ids[0]


def run_dashboard(
    server: dict[str, Any],
    redis_url: str = "",
    minutes: float = 5.0,
    first_minute_over: Callable[[], None] | None = None,
) -> DashboardResult:
    """The whole benchmark; ``first_minute_over`` is called once the soak's first minute (its
    long-task window) has been measured, while the page stays live for the heap's reading."""
    size = own_size()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bwmon-bench-")))
        database = stack.enter_context(throwaway_database(server, DashboardFailed))
        redis = redis_url or stack.enter_context(private_redis())
        config = daemon_config(tmp, server, database, redis)
        daemon = stack.enter_context(running_daemon(tmp / "daemon.log", ["--config", str(config)]))
        emit_log = tmp / "emit.log"
        emit = stack.enter_context(child(emitting(daemon, minutes * 60 + 180, emit_log)))
        wait_for_meetings(daemon, emit, emit_log)
        url = f"http://127.0.0.1:{daemon.http_port}/"
        result = DashboardResult(
            meetings=live_meetings(daemon),
            participants_per_meeting=PARTICIPANTS,
            browser=None,
            first_render_ms=None,
            first_render_breakdown_ms={},
            target_first_render_ms=TARGET_FIRST_RENDER_MS,
            scroll=None,
            search_meeting=None,
            search_shown_ms=None,
            soak=None,
            target_longtask_ms=TARGET_LONGTASK_MS,
            target_heap_growth=TARGET_HEAP_GROWTH,
            size=size,
            target_own_bytes=TARGET_OWN_BYTES,
            daemon_fanout={},
            api_meetings_ms=api_meetings_ms(daemon),
            verdicts={},
            skipped=page_answers(url),
            failures={},
        )
        started, before = time.monotonic(), daemon.health()
        if result.skipped is None:
            measure_page(stack, daemon, url, minutes, result, first_minute_over)
        result.daemon_fanout = fanout_figures(before, daemon.health(), time.monotonic() - started)
    result.verdicts = verdicts(result)
    return result


def measure_page(
    stack: contextlib.ExitStack,
    daemon: DaemonProcess,
    url: str,
    minutes: float,
    result: DashboardResult,
    first_minute_over: Callable[[], None] | None,
) -> None:
    browser = stack.enter_context(launch_chromium(deadline_s=minutes * 60 + BROWSER_MARGIN_S))
    result.browser = browser.version
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_init_script(
        INIT_JS % {"row": json.dumps(SHOWN_ROW), "snapshot": json.dumps(SNAPSHOT_START)}
    )
    page = context.new_page()
    messages: list[float] = []
    page.on(
        "websocket", lambda ws: ws.on("framereceived", lambda _: messages.append(time.monotonic()))
    )
    cdp = context.new_cdp_session(page)
    page.goto(url)
    with stage(result, "first_render"):
        wait_until(page, "() => window.__bench.firstRow !== null", None, 10, "a meeting's row")
        result.first_render_ms = round(page.evaluate("window.__bench.firstRow"), 1)
        result.first_render_breakdown_ms = page.evaluate(BREAKDOWN_JS)
    with stage(result, "scroll"):
        result.scroll = measure_scroll(page)
    with stage(result, "search"):
        result.search_meeting = some_meeting(daemon)
        result.search_shown_ms = round(measure_search(page, result.search_meeting) * 1000, 1)
    with stage(result, "soak"):
        result.soak = measure_soak(page, cdp, minutes, messages, first_minute_over)


@contextlib.contextmanager
def stage(result: DashboardResult, name: str) -> Iterator[None]:
    """A stage of the page's measurements: its failure is recorded, and the next runs."""
    try:
        yield
    except DashboardFailed as exc:
        result.failures[name] = str(exc)


def verdicts(result: DashboardResult) -> dict[str, bool | None]:
    scroll, soak, size = result.scroll, result.soak, result.size
    return {
        "first_render": None
        if result.first_render_ms is None
        else result.first_render_ms <= TARGET_FIRST_RENDER_MS,
        "rows_within_bound": None
        if scroll is None
        else scroll.rows_within_bound
        and (soak is None or soak.max_rows_in_dom <= scroll.max_allowed_rows),
        "last_row_shown": None if scroll is None else scroll.reached_end and scroll.last_row_shown,
        "search": None if result.search_meeting is None else result.search_shown_ms is not None,
        "no_longtask": None if soak is None else soak.longtasks_first_minute == 0,
        "heap": None if soak is None else soak.heap_growth <= TARGET_HEAP_GROWTH,
        "size": None if size.minified_bytes is None else size.minified_bytes <= TARGET_OWN_BYTES,
    }


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else meets(ok)


def print_summary(result: DashboardResult) -> None:
    v = result.verdicts
    typer.echo(
        f"dashboard: {result.meetings:,} live meetings of {result.participants_per_meeting}, "
        f"browser {result.browser or '-'}"
    )
    if result.skipped:
        typer.echo(f"page not measured: {result.skipped}")
    for name, why in result.failures.items():
        typer.echo(f"{name} FAILED: {why}")
    typer.echo(
        f"first meaningful render: {result.first_render_ms} ms; target <= "
        f"{result.target_first_render_ms:.0f} ms: {_verdict(v['first_render'])}; from the "
        "navigation's start (ms): "
        + ", ".join(f"{k} {t}" for k, t in result.first_render_breakdown_ms.items())
    )
    if result.scroll is not None:
        s = result.scroll
        typer.echo(
            f"scroll to the end in {s.steps} steps: at most {s.max_rows_in_dom} rows in the DOM, "
            f"bound {s.max_allowed_rows} (visible + 2 x overscan {s.overscan}): "
            f"{_verdict(v['rows_within_bound'])}; last meeting {s.last_meeting} (row "
            f"{s.last_row_index} of {s.row_count}) shown: {_verdict(v['last_row_shown'])}"
        )
    typer.echo(
        f"search: meeting {result.search_meeting} shown after {result.search_shown_ms} ms: "
        f"{_verdict(v['search'])}"
    )
    if result.soak is not None:
        k = result.soak
        typer.echo(
            f"first minute of live updates ({k.websocket_messages_first_minute} WebSocket "
            f"messages): {k.longtasks_first_minute} long tasks, longest "
            f"{k.longest_task_first_minute_ms} ms; target none over "
            f"{result.target_longtask_ms:.0f} ms: {_verdict(v['no_longtask'])} (whole run: "
            f"{k.longtasks_whole_run}, longest {k.longest_task_whole_run_ms} ms)"
        )
        typer.echo(
            f"traced {k.traced_s} s at the end: {k.traced_longtasks} long tasks; "
            f"{k.traced_main_thread_tasks} main-thread tasks, {k.traced_main_thread_cpu_ms} ms "
            f"CPU in all; the longest {k.traced_longest_task_wall_ms} ms wall-clock, the most "
            f"CPU in one task {k.traced_most_cpu_in_a_task_ms} ms; "
            f"{k.traced_tasks_over_50_ms_cpu} tasks over 50 ms of CPU"
        )
        typer.echo(
            f"JS heap after GC: {k.heap_after_1_min_bytes / 1e6:.1f} MB after 1 min, "
            f"{k.heap_at_end_bytes / 1e6:.1f} MB after {k.minutes} min ({k.heap_growth:+.1%}); "
            f"target within {result.target_heap_growth:.0%}: {_verdict(v['heap'])}; "
            f"{k.max_rows_in_dom} rows in the DOM at most, {k.dom_nodes_at_end} elements at the end"
        )
    f = result.daemon_fanout
    typer.echo(
        f"daemon ({f.get('build')}): {f.get('publishes')} publishes "
        f"({f.get('publishes_per_s')}/s), the last {f.get('last_publish_ms')} ms; event "
        f"loop lag up to {f.get('loop_lag_max_s')} s; {f.get('alerts_active')} alerts open; "
        f"GET /api/meetings?limit=1 took {result.api_meetings_ms} ms before the page opened"
    )
    size = result.size
    if size.minified_bytes is None:
        typer.echo(
            f"page's own JS and CSS: {size.source_bytes:,} B, not minified: {size.minify_skipped}"
        )
    else:
        typer.echo(
            f"page's own JS and CSS: {size.minified_bytes:,} B minified ({size.minifiers}; "
            f"source {size.source_bytes:,} B); target <= {result.target_own_bytes:,} B: "
            f"{_verdict(v['size'])}"
        )
