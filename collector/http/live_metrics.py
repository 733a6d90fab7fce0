"""``/metrics``, second part: call quality and HTTP traffic of the live state (docs/METRICS.md).

What the daemon's own counters (``collector.http.metrics``) do not say: participants and
meetings per quality level, distributions of MOS, RTT, loss and jitter over live participants,
the bitrates they send and receive, how many relay through TURN and over which protocol, what
relaying cost, the alerts open by rule and severity, and the requests, bytes and latency of the
HTTP services (and of the routes the operator lists).

Labels come only from fixed sets (``level``, ``protocol``, ``status``, ``le``), from the rules
in force (``rule``, ``severity``) or from what the operator configured (``[metrics]``): a
service keeps its name in ``service`` while it is listed (``http_services``) or, with no list,
among the first ``max_http_services`` seen; any other counts under ``service="other"``. A route
has series of its own only when listed (``http_routes``), with its method among
``HTTP_METHODS`` (any other: ``other``). Meeting and participant ids are never labels.

Two kinds of values:

* **Now** (gauges, and the participant histograms, which are *gauge histograms*: their buckets
  count the live participants whose current value is at or under ``le``, so they go down as
  well as up — ``histogram_quantile`` applies as is, without ``rate``). They are computed at
  each scrape from the engine's live state in one pass over the participants
  (``collector.aggregate.census``, compiled), in steps between which ``render`` awaits a
  checkpoint so that ingest runs; the histograms are counted once at the end.
* **Since the start** (counters: relayed bytes and relay cost by protocol, HTTP requests,
  bytes and latency): the minute rows the engine closed (``take``, the daemon's drained
  output), the rows it closed and has not handed over yet, and the minutes still open. A
  counter never goes down (``_Monotonic``): a stream whose relay protocol changes within a
  minute moves that open minute's bytes to the new protocol, which the old one keeps counting.

It counts its own cost: renders and the CPU time of their steps (``bwmon_metrics_renders_total``,
``bwmon_metrics_render_cpu_seconds_total``). Never awaits anything but the checkpoints between
steps; never touches storage or sockets.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from collector.aggregate.census import PROTOCOLS, Census, census_steps
from collector.aggregate.http import BYTES_IN, BYTES_OUT, HIST, LATENCY_SUM, STATUS
from collector.aggregate.http import WIDTH as HTTP_WIDTH
from collector.aggregate.rtc import RING_FIELDS, RING_SCALE
from collector.http.metrics import Exposition
from protocol import HTTP_LATENCY_BOUNDS_MS

if TYPE_CHECKING:
    from collector.aggregate.engine import Engine, Output

RECENT_BUCKETS: Final = 5  # as the live view's current values (collector.fanout.topics)
PARTICIPANTS_PER_STEP: Final = 5_000
OTHER: Final = "other"
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Bucket upper bounds of the participant histograms, in the metric's base unit.
MOS_BOUNDS: Final = (1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4)
RTT_BOUNDS_S: Final = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0, 2.0)
LOSS_BOUNDS: Final = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
JITTER_BOUNDS_S: Final = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
LATENCY_BOUNDS_S: Final = tuple(ms / 1000 for ms in HTTP_LATENCY_BOUNDS_MS)

_SEND, _RECV = RING_FIELDS.index("send_bps"), RING_FIELDS.index("recv_bps")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """What the operator lets ``/metrics`` name (``[metrics]``, docs/CONFIG.md).

    ``http_services``: the services named in ``service`` (empty: the first
    ``max_http_services`` seen); ``http_routes``: (service, route) pairs with series of their
    own."""

    http_services: tuple[str, ...] = ()
    max_http_services: int = 20
    http_routes: tuple[tuple[str, str], ...] = ()


class _Histogram:
    """The values of one ring field (in the ring's steps, ``RING_SCALE``), counted per bucket
    at the end: appending to a list per participant and sorting once is far cheaper than a
    bisection per value."""

    __slots__ = ("bounds", "scale", "steps")

    def __init__(self, bounds: Sequence[float], scale: float, steps: list[int]) -> None:
        self.bounds = tuple(bounds)  # in the metric's unit
        self.scale = scale  # ring steps per metric unit
        self.steps = steps

    def cumulative(self) -> list[tuple[float, int]]:
        """(``le``, participants at or under it), ``+Inf`` last."""
        ordered = sorted(self.steps)
        out = [(b, bisect_right(ordered, round(b * self.scale))) for b in self.bounds]
        out.append((math.inf, len(ordered)))
        return out

    def total(self) -> float:
        return sum(self.steps) / self.scale


class _Monotonic:
    """The last value exposed per series of a counter: a counter never goes down."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: dict[tuple[str, ...], float] = {}

    def __call__(self, key: tuple[str, ...], value: float) -> float:
        kept = max(self.last.get(key, 0.0), value)
        self.last[key] = kept
        return kept


class LiveMetrics:
    """Call quality and HTTP traffic for ``/metrics``: ``take`` every drained engine output,
    ``render`` at each scrape."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        self._services: dict[str, str] = {}  # service → its label
        self._named = 0  # services with a label of their own
        self._listed_services = frozenset(self.settings.http_services)
        self._listed_routes = frozenset(self.settings.http_routes)
        self.relayed_closed: dict[str, float] = dict.fromkeys(PROTOCOLS, 0.0)
        # Per label set: requests, status classes, bytes, latency sum and histogram (the
        # accumulator layout of collector.aggregate.http).
        self.services_closed: dict[tuple[str, ...], array[float]] = {}
        self.routes_closed: dict[tuple[str, ...], array[float]] = {}
        self._monotonic = _Monotonic()
        # What rendering cost so far: renders and the CPU time of their steps (this thread's,
        # so that other processes and the waits between steps do not count).
        self.renders = 0
        self.render_cpu_s = 0.0

    # -- labels ---------------------------------------------------------------------------

    def service_label(self, service: str) -> str:
        """The ``service`` label of a service: its name while it may have one, else
        ``other``; a name once given is kept for the daemon's life."""
        label = self._services.get(service)
        if label is not None:
            return label
        if self._listed_services:
            label = service if service in self._listed_services else OTHER
        else:
            label = service if self._named < self.settings.max_http_services else OTHER
        if label != OTHER:
            self._named += 1
            self._services[service] = label
        elif len(self._services) < 10_000:  # bounded memory: past it, the same answer anew
            self._services[service] = label
        return label

    def route_labels(self, service: str, route: str, method: str) -> tuple[str, ...] | None:
        """``(service, route, method)`` labels of a listed route, else None."""
        if (service, route) not in self._listed_routes:
            return None
        return (service, route, method if method in HTTP_METHODS else OTHER)

    # -- what the engine closed -------------------------------------------------------------

    def take(self, output: Output) -> None:
        """Fold the minute rows of a drained engine output into the counters."""
        self._fold(output, self.relayed_closed, self.services_closed, self.routes_closed)

    def _fold(
        self,
        output: Output,
        relayed: dict[str, float],
        services: dict[tuple[str, ...], array[float]],
        routes: dict[tuple[str, ...], array[float]],
    ) -> None:
        for row in output.rtc_rows:
            if row.relayed_bytes and row.relay.startswith("turn-"):
                protocol = row.relay[5:]
                if protocol in relayed:
                    relayed[protocol] += row.relayed_bytes
        for http in output.http_rows:
            values = (
                http.requests,
                *http.status,
                http.bytes_in,
                http.bytes_out,
                http.latency_sum_ms,
                *http.latency_hist,
            )
            _add(services, (self.service_label(http.service),), values)
            labels = self.route_labels(http.service, http.route, http.method)
            if labels is not None:
                _add(routes, labels, values)

    # -- the scrape -------------------------------------------------------------------------

    async def render(self, engine: Engine, now: float) -> str:
        """The exposition of the engine's live state at daemon time ``now``; awaits a
        checkpoint between steps of ``PARTICIPANTS_PER_STEP`` participants."""
        cpu = time.thread_time()
        steps = census_steps(engine, now, RECENT_BUCKETS, PARTICIPANTS_PER_STEP)
        try:
            while True:
                next(steps)
                self.render_cpu_s += time.thread_time() - cpu
                await trio.lowlevel.checkpoint()  # let ingest run between steps
                cpu = time.thread_time()
        except StopIteration as done:
            census: Census = done.value
        # From here on, no await: the open minutes and the rows not yet drained are read at
        # one instant, so that no row is counted twice or missed.
        services: dict[tuple[str, ...], array[float]] = {
            k: array("d", v) for k, v in self.services_closed.items()
        }
        routes: dict[tuple[str, ...], array[float]] = {
            k: array("d", v) for k, v in self.routes_closed.items()
        }
        relayed = dict(self.relayed_closed)
        self._fold(engine.output, relayed, services, routes)
        for stream in engine.streams.values():
            if stream.relay != "direct":
                protocol = stream.relay[5:]
                if protocol in relayed:
                    relayed[protocol] += stream.relayed_open()
        for route in engine.routes.values():
            if route.minute_no < 0:
                continue
            _add(services, (self.service_label(route.service),), route.minute)
            labels = self.route_labels(route.service, route.route, route.method)
            if labels is not None:
                _add(routes, labels, route.minute)
        out = Exposition()
        self._quality(out, census)
        self._relay(out, census, relayed, engine.settings.relay_price_per_gb)
        self._alerts(out, engine)
        self._http(out, "service", ("service",), services)
        self._http(out, "route", ("service", "route", "method"), routes)
        out.counter(
            "metrics_renders",
            "Renders of this part of /metrics (call quality and HTTP traffic), before this one.",
            self.renders,
        )
        out.counter(
            "metrics_render_cpu_seconds",
            "CPU time the renders of this part of /metrics took, before this one.",
            self.render_cpu_s,
        )
        text = out.render()
        self.render_cpu_s += time.thread_time() - cpu
        self.renders += 1
        return text

    def _quality(self, out: Exposition, census: Census) -> None:
        for level, count in census.participants.items():
            out.gauge(
                "quality_participants",
                "Live participants by quality level (unknown: not measured yet).",
                count,
                level=level,
            )
        for level, count in census.meetings.items():
            out.gauge(
                "quality_meetings",
                "Live meetings by the quality level of their worst participant.",
                count,
                level=level,
            )
        out.gauge(
            "rtc_up_bytes_per_second",
            "Bytes per second the live participants send, summed (their last tick interval).",
            census.up_steps / RING_SCALE[_SEND] / 8,
        )
        out.gauge(
            "rtc_down_bytes_per_second",
            "Bytes per second the live participants receive, summed (their last tick interval).",
            census.down_steps / RING_SCALE[_RECV] / 8,
        )
        for name, help_, histogram in (
            (
                "participant_mos",
                "Audio MOS of the live participants now (1 to 4.5).",
                _Histogram(MOS_BOUNDS, 1000.0, census.mos_steps),
            ),
            (
                "participant_rtt_seconds",
                "Round-trip time of the live participants now.",
                _Histogram(RTT_BOUNDS_S, 1000.0, census.rtt_steps),
            ),
            (
                "participant_loss_ratio",
                "Packet loss of the live participants now (the worse direction, 0 to 1).",
                _Histogram(LOSS_BOUNDS, 10_000.0, census.loss_steps),
            ),
            (
                "participant_jitter_seconds",
                "Jitter of the live participants now.",
                _Histogram(JITTER_BOUNDS_S, 10_000.0, census.jitter_steps),
            ),
        ):
            out.histogram(
                f"bwmon_{name}",
                help_ + " A gauge histogram: buckets go down as well as up.",
                histogram.cumulative(),
                histogram.total(),
            )

    def _relay(
        self, out: Exposition, census: Census, relayed: Mapping[str, float], price_per_gb: float
    ) -> None:
        total = sum(census.participants.values())
        for protocol in PROTOCOLS:
            out.gauge(
                "participants_relayed",
                "Live participants relayed through TURN, by the protocol to the TURN server.",
                census.relayed[protocol],
                protocol=protocol,
            )
        for protocol in PROTOCOLS:
            out.gauge(
                "participants_relayed_ratio",
                "Share of the live participants relayed through TURN (0 to 1), by protocol.",
                census.relayed[protocol] / total if total else 0.0,
                protocol=protocol,
            )
        for protocol in PROTOCOLS:
            out.counter(
                "relayed_bytes",
                "Bytes relayed through TURN (both ways), by protocol.",
                self._monotonic(("relayed", protocol), relayed[protocol]),
                protocol=protocol,
            )
        for protocol in PROTOCOLS:
            out.counter(
                "relay_cost",
                "Cost of the bytes relayed through TURN at aggregate.relay_price_per_gb, in its "
                "currency, by protocol.",
                self._monotonic(("relayed", protocol), relayed[protocol]) / 1e9 * price_per_gb,
                protocol=protocol,
            )

    def _alerts(self, out: Exposition, engine: Engine) -> None:
        counts = {(rule.name, rule.severity): 0 for rule in engine.alerts.rules}
        for alert in engine.alerts.active():
            key = (alert.rule, alert.severity)
            counts[key] = counts.get(key, 0) + 1
        for (rule, severity), count in counts.items():
            out.gauge(
                "alerts_open",
                "Alerts raised and not cleared, by rule and severity.",
                count,
                rule=rule,
                severity=severity,
            )

    def _http(
        self,
        out: Exposition,
        level: str,
        names: tuple[str, ...],
        totals: Mapping[tuple[str, ...], array[float]],
    ) -> None:
        what = "service" if level == "service" else "listed route"
        for key, values in sorted(totals.items()):
            labels = dict(zip(names, key, strict=True))
            for k, status in enumerate(STATUS_CLASSES):
                out.counter(
                    f"http_{level}_requests",
                    f"Requests the {what} answered, by status class.",
                    self._monotonic((level, "req", status, *key), values[STATUS + k]),
                    **labels,
                    status=status,
                )
        for key, values in sorted(totals.items()):
            out.counter(
                f"http_{level}_received_bytes",
                f"Bytes of the requests the {what} received.",
                self._monotonic((level, "in", *key), values[BYTES_IN]),
                **dict(zip(names, key, strict=True)),
            )
        for key, values in sorted(totals.items()):
            out.counter(
                f"http_{level}_sent_bytes",
                f"Bytes of the responses the {what} sent.",
                self._monotonic((level, "out", *key), values[BYTES_OUT]),
                **dict(zip(names, key, strict=True)),
            )
        for key, values in sorted(totals.items()):
            running = 0.0
            buckets = []
            for k, bound in enumerate((*LATENCY_BOUNDS_S, math.inf)):
                running += values[HIST + k]
                buckets.append((bound, self._monotonic((level, "le", str(k), *key), running)))
            out.histogram(
                f"bwmon_http_{level}_request_duration_seconds",
                f"Latency of the requests the {what} answered (to the last byte sent).",
                buckets,
                self._monotonic((level, "sum", *key), values[LATENCY_SUM] / 1000),
                dict(zip(names, key, strict=True)),
            )


def _add(
    totals: dict[tuple[str, ...], array[float]], key: tuple[str, ...], values: Iterable[float]
) -> None:
    into = totals.get(key)
    if into is None:
        into = totals[key] = array("d", bytes(8 * HTTP_WIDTH))
    for k, value in enumerate(values):
        into[k] += value
