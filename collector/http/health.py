"""``/healthz``, ``/readyz`` and ``/metrics``: what the daemon's services report, served.

Every service reports its own part as a Struct (``health()``); ``DaemonHealth`` puts them
together under the keys of ``/healthz`` (docs/API.md), which is that Struct encoded, and
``/metrics`` renders the same Struct in the Prometheus text format (``collector.http.metrics``).
``HealthRoutes`` holds no state of its own: it asks the daemon for a ``DaemonHealth`` or a
``Readiness`` on each request and decides only the status code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from msgspec import UNSET, UnsetType

from collector.aggregate.health import AggregateHealth
from collector.consumer import ConsumerHealth
from collector.fanout.health import FanoutHealth
from collector.http.metrics import CONTENT_TYPE, render_metrics
from collector.http.server import HttpCounters, HttpRoute, Request, Response
from collector.ingest.health import IngestHealth, LimitsHealth
from collector.notifications.health import NotifyHealth
from collector.runtime.loops import LoopHealth
from collector.storage.health import NoStorageHealth, StorageHealth


class HttpHealth(msgspec.Struct, kw_only=True, gc=False):
    """``http``: the TCP port's connections and responses (``HttpServer.counters``)."""

    connections_open: int
    connections_total: int
    connections_refused: int
    connections_refused_per_source: int
    connections_evicted: int
    connections_operator: int
    head_timeouts: int
    connection_errors: int
    response_errors: int
    requests_by_status: dict[str, int]

    @classmethod
    def of(cls, counters: HttpCounters) -> HttpHealth:
        return cls(
            connections_open=counters.connections_open,
            connections_total=counters.connections_total,
            connections_refused=counters.connections_refused,
            connections_refused_per_source=counters.connections_refused_per_source,
            connections_evicted=counters.connections_evicted,
            connections_operator=counters.connections_operator,
            head_timeouts=counters.head_timeouts,
            connection_errors=counters.connection_errors,
            response_errors=counters.response_errors,
            requests_by_status={
                str(code): n for code, n in sorted(counters.requests_by_status.items())
            },
        )


class DaemonHealth(msgspec.Struct, kw_only=True, gc=False):
    """The body of ``/healthz``: one part per service, in this order."""

    status: str  # "ok"; "stalled" (with ``reasons``) once the aggregation ticker stops
    version: str
    # The build that runs: "compiled", "pure" (``build_reason`` says why) or "partial", and
    # the modules running as C extensions (empty: pure Python).
    build: str
    build_reason: str | None
    compiled: list[str]
    uptime_s: float
    ingest: IngestHealth
    loop: LoopHealth
    consumer: ConsumerHealth
    aggregate: AggregateHealth
    storage: StorageHealth | NoStorageHealth
    fanout: FanoutHealth
    http: HttpHealth
    limits: LimitsHealth
    notify: NotifyHealth = msgspec.field(default_factory=NotifyHealth)  # [[notify]] sinks
    reasons: list[str] | UnsetType = UNSET  # why the status is not "ok"


class Readiness(msgspec.Struct, kw_only=True, gc=False):
    """The body of ``/readyz``: ``ready`` (with the version and uptime), ``not ready`` (with
    ``reasons``) or ``draining``."""

    status: str
    reasons: list[str] | UnsetType = UNSET
    version: str | UnsetType = UNSET
    uptime_s: float | UnsetType = UNSET

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True, slots=True)
class HealthRoutes:
    """The three routes. ``stall_after_s``: a last tick older than this makes ``/healthz``
    answer 503 ``stalled`` (a supervisor should restart the daemon)."""

    health: Callable[[], DaemonHealth]
    readiness: Callable[[], Readiness]
    stall_after_s: float
    # The call-quality and HTTP-traffic part of /metrics (collector.http.live_metrics).
    live_metrics: Callable[[], Awaitable[str]] | None = None

    def routes(self) -> dict[str, HttpRoute]:
        return {"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics}

    def healthz(self, _request: Request) -> Response:
        """Liveness: 200 with every counter while the event loop answers (a stalled loop does
        not answer at all) and the aggregation ticker runs; 503 ``stalled`` when the last tick
        is older than ``stall_after_s``."""
        health = self.health()
        age = health.consumer.last_tick_age_s
        if age is not None and age > self.stall_after_s:
            health.status = "stalled"
            health.reasons = [f"aggregation: no tick for {age:g} s"]
            return Response.json(503, health)
        return Response.json(200, health)

    def readyz(self, _request: Request) -> Response:
        """Readiness, for a load balancer or an orchestrator: should traffic come here? 200
        when it should, else 503 (``Daemon.readiness`` says why)."""
        readiness = self.readiness()
        return Response.json(200 if readiness.ready else 503, readiness)

    async def metrics(self, _request: Request) -> Response:
        """Every counter of ``/healthz`` in the Prometheus text format, then the live state's
        call quality and HTTP traffic."""
        text = render_metrics(self.health())
        if self.live_metrics is not None:
            text += await self.live_metrics()
        return Response(200, text.encode(), CONTENT_TYPE)
