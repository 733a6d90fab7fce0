"""``bwmon top``: the daemon's own health, read from ``/healthz`` every second.

Two parts, as in ``bwmon tail``:

* ``TopModel`` turns successive ``/healthz`` bodies into a ``TopSample``: rates from the
  counters' differences between two polls (frames/s by transport, rejections/s, kernel drops/s,
  rows written/s), and the gauges as they are (storage backlog and spool, subscribers, loop
  lag); ``render_top`` draws a sample as lines fitted to a width. Both pure;
* ``run_top``: poll, then draw on the terminal (``cli.terminal``) or print NDJSON / plain
  frames, until ``q``, Ctrl-C, ``--count`` or ``--duration``.

With ``--json`` or ``--count``, a daemon that does not answer for ``timeout_s`` ends the command
(``TopError``, exit 1); the console retries and says so on screen.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

import msgspec
import trio

from cli import console
from cli.console import Column, byte_count, byterate, clip
from cli.tail import wants_color
from cli.terminal import Terminal, resize_signals
from protocol.errors import BwmonError

TRANSPORTS: Final = ("udp", "websocket", "http")
POLL_S: Final = 1.0
REQUEST_TIMEOUT_S: Final = 2.0
PLAIN_WIDTH: Final = 200  # frames printed when stdout is not a terminal
_encoder: Final = msgspec.json.Encoder()


class TopError(BwmonError):
    """Ends ``bwmon top`` with exit status 1."""


@dataclass(frozen=True, slots=True)
class TopOptions:
    host: str = "127.0.0.1"
    http_port: int = 8470
    as_json: bool = False
    count: int | None = None  # stop after this many samples
    duration_s: float | None = None
    timeout_s: float | None = None  # fail when nothing answers this long (None: retry)
    interactive: bool = False
    interval_s: float = POLL_S

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}/healthz"


# -- the figures, without I/O ----------------------------------------------------------------


class TransportRates(msgspec.Struct, kw_only=True, gc=False):
    frames_per_s: float | None
    rejected_per_s: float | None
    messages_per_s: float | None
    bytes_per_s: float | None
    frames_accepted: int
    frames_rejected: int


class Rejection(msgspec.Struct, kw_only=True, gc=False):
    total: int
    per_s: float | None


class StorageFigures(msgspec.Struct, kw_only=True, gc=False):
    backend: str
    rows_written_per_s: float | None = None
    pending_rows: int | None = None
    spooled_batches: int | None = None
    spool_bytes: int | None = None
    rows_dropped: int | None = None
    last_flush_s: float | None = None
    consecutive_failures: int | None = None
    error: str | None = None  # the last flush error, or the probe's


class TopSample(msgspec.Struct, kw_only=True, gc=False):
    """One poll of ``/healthz``; a rate is None in the first sample (no difference yet)."""

    at: float  # s since the Unix epoch
    interval_s: float | None  # since the previous sample
    status: str
    version: str
    build: str
    uptime_s: float
    transports: dict[str, TransportRates]
    rejected_by_reason: dict[str, Rejection]  # ingest's reasons, all transports summed
    refused_at_caps: dict[str, int]  # the engine's caps
    kernel_drops: int | None
    kernel_drops_per_s: float | None
    queue_batches: int
    queue_capacity_batches: int
    meetings: int
    participants: int
    http_routes: int
    alerts_open: int
    last_tick_age_s: float | None
    storage: StorageFigures
    channel: str
    subscribers: int
    sessions: int
    last_publish_ms: float
    loop_lag_s: float
    loop_lag_max_s: float
    http_connections_open: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class TopModel:
    """Successive ``/healthz`` bodies in, ``TopSample``s out. A counter that went down (the
    daemon restarted) starts its rates over."""

    def __init__(self) -> None:
        self._previous: tuple[float, Mapping[str, Any]] | None = None

    def receive(self, health: Mapping[str, Any], now: float, wall: float) -> TopSample:
        """``now``: a monotonic clock, for the rates; ``wall``: the time to report."""
        previous = self._previous
        self._previous = (now, health)
        dt = None if previous is None else now - previous[0]
        uptime = _float(health.get("uptime_s"))
        restarted = (
            previous is not None
            and uptime is not None
            and uptime < (_float(previous[1].get("uptime_s")) or 0.0)
        )
        if restarted:
            dt = None  # another daemon now: no difference to take
        before = previous[1] if previous is not None and dt else {}

        def rate(path: tuple[str, ...]) -> float | None:
            value = _dig(health, path)
            old = _dig(before, path)
            if dt is None or dt <= 0 or not isinstance(value, int) or not isinstance(old, int):
                return None
            return max(0, value - old) / dt

        ingest = health.get("ingest", {})
        transports = {}
        reasons: dict[str, Rejection] = {}
        for name in TRANSPORTS:
            part = ingest.get(name, {})
            path = ("ingest", name)
            transports[name] = TransportRates(
                frames_per_s=rate((*path, "frames_accepted")),
                rejected_per_s=rate((*path, "frames_rejected")),
                messages_per_s=rate((*path, "messages")),
                bytes_per_s=rate((*path, "bytes")),
                frames_accepted=_int(part.get("frames_accepted")),
                frames_rejected=_int(part.get("frames_rejected")),
            )
            for reason, total in (part.get("rejected_by_reason") or {}).items():
                r = rate((*path, "rejected_by_reason", reason))
                old = reasons.get(reason)
                if old is None:
                    reasons[reason] = Rejection(total=_int(total), per_s=r)
                else:
                    summed = None if old.per_s is None or r is None else old.per_s + r
                    reasons[reason] = Rejection(total=old.total + _int(total), per_s=summed)
        udp = ingest.get("udp", {})
        drops = udp.get("kernel_drops")
        aggregate = health.get("aggregate", {})
        consumer = health.get("consumer", {})
        fanout = health.get("fanout", {})
        loop = health.get("loop", {})
        return TopSample(
            at=wall,
            interval_s=dt,
            status=str(health.get("status", "?")),
            version=str(health.get("version", "?")),
            build=str(health.get("build", "?")),
            uptime_s=_float(health.get("uptime_s")) or 0.0,
            transports=transports,
            rejected_by_reason=dict(sorted(reasons.items())),
            refused_at_caps={
                k: _int(v) for k, v in (aggregate.get("refused_by_reason") or {}).items()
            },
            kernel_drops=drops if isinstance(drops, int) else None,
            kernel_drops_per_s=rate(("ingest", "udp", "kernel_drops")),
            queue_batches=_int(ingest.get("queue_batches")),
            queue_capacity_batches=_int(ingest.get("queue_capacity_batches")),
            meetings=_int(aggregate.get("meetings")),
            participants=_int(aggregate.get("participants")),
            http_routes=_int(aggregate.get("http_routes")),
            alerts_open=_int(aggregate.get("alerts_active")),
            last_tick_age_s=_float(consumer.get("last_tick_age_s")),
            storage=_storage(health.get("storage", {}), rate),
            channel=str(fanout.get("channel", "?")),
            subscribers=_int(fanout.get("subscribers")),
            sessions=_int(fanout.get("sessions")),
            last_publish_ms=_float(fanout.get("last_publish_ms")) or 0.0,
            loop_lag_s=_float(loop.get("lag_s")) or 0.0,
            loop_lag_max_s=_float(loop.get("lag_max_s")) or 0.0,
            http_connections_open=_int(health.get("http", {}).get("connections_open")),
        )


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _storage(storage: Mapping[str, Any], rate: Any) -> StorageFigures:
    backend = str(storage.get("backend", "?"))
    if backend == "none":
        return StorageFigures(backend=backend)
    return StorageFigures(
        backend=backend,
        rows_written_per_s=rate(("storage", "rows_written")),
        pending_rows=_int(storage.get("pending_rows")),
        spooled_batches=_int(storage.get("spooled_batches")),
        spool_bytes=_int(storage.get("spool_bytes")),
        rows_dropped=_int(storage.get("rows_dropped")),
        last_flush_s=_float(storage.get("last_flush_s")),
        consecutive_failures=_int(storage.get("consecutive_failures")),
        error=storage.get("last_error") or storage.get("probe_error"),
    )


# -- rendering, pure -------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 999.5:
        return console._scaled(value, ("", "k", "M", "G")).replace(" ", "")
    return f"{value:.1f}" if value < 99.95 else f"{value:.0f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _cells(text: str) -> console.Cell:
    return (text, None)


_INGEST: Final = (
    Column("TRANSPORT", lambda i, _f: _cells(i), 0),
    Column("FRAMES/S", lambda _i, f: _cells(_rate(f["frames_per_s"])), 0, right=True),
    Column("REJECTED/S", lambda _i, f: _cells(_rate(f["rejected_per_s"])), 1, right=True),
    Column("MESSAGES/S", lambda _i, f: _cells(_rate(f["messages_per_s"])), 4, right=True),
    Column("IN", lambda _i, f: _cells(byterate(f["bytes_per_s"])), 3, right=True),
    Column("ACCEPTED", lambda _i, f: _cells(str(f["frames_accepted"])), 5, right=True),
    Column("REJECTED", lambda _i, f: _cells(str(f["frames_rejected"])), 2, right=True),
)
_REJECTIONS: Final = (
    Column("REJECTED BY REASON", lambda i, _f: _cells(i), 0, shrink=8),
    Column("TOTAL", lambda _i, f: _cells(str(f["total"])), 0, right=True),
    Column("PER S", lambda _i, f: _cells(_rate(f["per_s"])), 1, right=True),
)


def _items(items: list[str], width: int) -> str:
    """Items separated by two spaces, as many as fit whole; the first is cut if it must."""
    line = ""
    for item in items:
        candidate = f"{line}  {item}" if line else item
        if console.cells(candidate) > width:
            break
        line = candidate
    return line or clip(items[0] if items else "", width)


def render_top(
    sample: TopSample | None,
    width: int,
    height: int,
    *,
    where: str,
    ago_s: float | None,
    problem: str | None = None,
    color: bool = False,
    keys: bool = True,
) -> list[str]:
    """The screen for ``sample``: at most ``height`` lines of at most ``width`` characters.
    ``problem``: why the last poll failed (shown instead of the clock)."""
    width, height = max(1, width), max(1, height)
    if sample is None:
        title = f"bwmon top  {where}  " + (problem or "connecting…")
        lines = [clip(title, width)]
    else:
        fresh = f"unreachable: {problem}; retrying" if problem else console.ago(ago_s)
        title = _items(
            [
                f"bwmon top  {where}",
                sample.status,
                fresh,
                f"up {_uptime(sample.uptime_s)}",
                f"v{sample.version}",
                sample.build,
            ],
            width,
        )
        if problem and fresh not in title:
            title = clip(f"bwmon top  {where}  {fresh}", width)
        painted = (
            f"\x1b[1;33m{title}\x1b[0m" if color and (problem or sample.status != "ok") else title
        )
        lines = [painted, *_body(sample, width)]
    body_height = height - 1 if keys else height
    lines = lines[:body_height]
    if keys:
        lines += [""] * (body_height - len(lines))
        lines.append(clip("q quit", width - 1))
    return lines


def _body(s: TopSample, width: int) -> list[str]:
    rows = [(name, msgspec.structs.asdict(s.transports[name])) for name in TRANSPORTS]
    header, table = console.table_lines(_INGEST, rows, width)
    drops = "kernel drops -" if s.kernel_drops is None else f"kernel drops {s.kernel_drops}"
    if s.kernel_drops_per_s is not None:
        drops += f" ({_rate(s.kernel_drops_per_s)}/s)"
    lines = [
        "",
        header,
        *table,
        _items([drops, f"queue {s.queue_batches}/{s.queue_capacity_batches} batches"], width),
    ]
    st = s.storage
    if st.backend == "none":
        storage = ["storage none"]
    else:
        storage = [
            f"storage {st.backend}",
            f"{_rate(st.rows_written_per_s)} rows/s written",
            f"pending {st.pending_rows} rows",
            f"spool {st.spooled_batches} batches {byte_count(st.spool_bytes)}",
            f"last flush {_ms(st.last_flush_s)}",
            f"failures {st.consecutive_failures}",
            f"dropped {st.rows_dropped}",
        ]
        if st.error:
            storage.append(f"error: {st.error}")
    tick = "-" if s.last_tick_age_s is None else f"{s.last_tick_age_s:.1f} s ago"
    lines += [
        _items(storage, width),
        _items(
            [
                f"fanout {s.channel}",
                f"{s.subscribers} subscribers",
                f"{s.sessions} sessions",
                f"publish {s.last_publish_ms:.1f} ms",
                f"{s.http_connections_open} HTTP connections",
            ],
            width,
        ),
        _items(
            [
                f"loop lag {_ms(s.loop_lag_s)}",
                f"max {_ms(s.loop_lag_max_s)} (1 min)",
                f"last tick {tick}",
            ],
            width,
        ),
        _items(
            [
                f"engine {s.meetings} meetings",
                f"{s.participants} participants",
                f"{s.http_routes} HTTP routes",
                f"{s.alerts_open} alerts open",
            ],
            width,
        ),
    ]
    reasons = {k: msgspec.structs.asdict(v) for k, v in s.rejected_by_reason.items()}
    for cap, total in s.refused_at_caps.items():
        reasons[f"cap: {cap}"] = {"total": total, "per_s": None}
    if reasons:
        ordered = sorted(reasons.items(), key=lambda kv: (-(kv[1]["per_s"] or 0), -kv[1]["total"]))
        header, table = console.table_lines(_REJECTIONS, ordered, width)
        lines += ["", header, *table]
    else:
        lines += ["", "no frame rejected"]
    return lines


def sample_line(sample: TopSample) -> str:
    """One NDJSON line (without its newline) for ``--json``."""
    return _encoder.encode(sample).decode()


# -- polling and drawing ---------------------------------------------------------------------


def _fetch(url: str) -> dict[str, Any]:
    """``/healthz``'s body; a 503 (stalled) has one too."""
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class _Top:
    def __init__(self, options: TopOptions, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.model = TopModel()
        self.sample: TopSample | None = None
        self.sampled_at: float | None = None  # trio time
        self.problem: str | None = None
        self.samples = 0
        self.frames = 0
        self.screen = Terminal(out) if options.interactive else None
        self.color = options.interactive and wants_color(out)
        self.failure: TopError | None = None
        self.output_closed = False
        self.where = f"{options.host}:{options.http_port}"

    async def run(self) -> None:
        with self.screen.raw() if self.screen is not None else contextlib.nullcontext():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._on_signals, nursery.cancel_scope)
                if self.options.duration_s is not None:
                    nursery.start_soon(self._stop_after, self.options.duration_s, nursery)
                if self.screen is not None:
                    nursery.start_soon(self._keys, nursery.cancel_scope)
                    nursery.start_soon(self._resizes)
                    nursery.start_soon(self._tick)
                await self._poll_loop()
                nursery.cancel_scope.cancel()
        if self.failure is not None:
            raise self.failure

    async def _stop_after(self, seconds: float, nursery: trio.Nursery) -> None:
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()

    async def _on_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()
                return

    async def _poll_loop(self) -> None:
        quiet_since = trio.current_time()
        while True:
            started = trio.current_time()
            try:
                health = await trio.to_thread.run_sync(
                    _fetch, self.options.url, abandon_on_cancel=True
                )
            except (OSError, ValueError, urllib.error.URLError) as exc:
                self.problem = _reason(exc)
                timeout = self.options.timeout_s
                if timeout is not None and trio.current_time() - quiet_since >= timeout:
                    self.failure = TopError(
                        f"no answer from {self.options.url} for {timeout:g} s ({self.problem})"
                    )
                    return
                if self.screen is None and self.options.timeout_s is None:
                    self.err.write(f"bwmon top: unreachable: {self.problem}; retrying\n")
                    self.err.flush()
            else:
                quiet_since = trio.current_time()
                self.problem = None
                self.sample = self.model.receive(health, trio.current_time(), time.time())
                self.sampled_at = trio.current_time()
                self.samples += 1
                self._show()
                if self.output_closed:
                    return
                if self.options.count is not None and self.samples >= self.options.count:
                    return
            self._draw()
            await trio.sleep_until(started + self.options.interval_s)

    def _show(self) -> None:
        """A sample on stdout when not drawing a console."""
        if self.screen is not None or self.sample is None:
            return
        if self.options.as_json:
            text = sample_line(self.sample) + "\n"
        else:
            lines = render_top(
                self.sample, PLAIN_WIDTH, 1000, where=self.where, ago_s=0.0, keys=False
            )
            frame = "\n".join(line for line in lines).rstrip("\n")
            text = f"\n{frame}\n" if self.frames else f"{frame}\n"
            self.frames += 1
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            self.output_closed = True

    def _draw(self) -> None:
        if self.screen is None:
            return
        width, height = self.screen.size()
        ago = None if self.sampled_at is None else trio.current_time() - self.sampled_at
        self.screen.draw(
            render_top(
                self.sample,
                width,
                height,
                where=self.where,
                ago_s=ago,
                problem=self.problem,
                color=self.color,
            )
        )

    async def _keys(self, scope: trio.CancelScope) -> None:
        assert self.screen is not None
        while (keys := await self.screen.read_keys()) is not None:
            if "q" in keys:
                scope.cancel()
                return
            self._draw()

    async def _resizes(self) -> None:
        with resize_signals() as signals:
            async for _ in signals:
                self._draw()

    async def _tick(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._draw()


async def run_top(
    options: TopOptions, out: TextIO | None = None, err: TextIO | None = None
) -> None:
    """Poll and show until ``options`` says stop, ``q``, or Ctrl-C. Raises ``TopError``."""
    await _Top(options, out or sys.stdout, err or sys.stderr).run()
