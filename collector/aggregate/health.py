"""What the aggregation engine reports in ``/healthz`` (``aggregate``) and ``/metrics``.

A Struct here, not in ``engine.py``: mypyc compiles the engine, and a compiled module defines
no msgspec Struct (``protocol.build``).
"""

from __future__ import annotations

import msgspec

from collector.aggregate.engine import Engine


class AggregateHealth(msgspec.Struct, kw_only=True, gc=False):
    """The live state, the caps in force and what the engine refused or did not apply."""

    meetings: int
    participants: int
    rtc_streams: int
    http_routes: int
    http_instances: int
    http_routes_expired: int
    http_instances_expired: int
    max_http_routes: int
    max_http_instances_per_route: int
    max_http_instances: int
    http_idle_s: float
    frames: int
    refused_by_reason: dict[str, int]  # frames refused at a cap
    baseline_samples: dict[str, int]  # by kind: first samples taken as a baseline
    samples_not_applied: dict[str, dict[str, int]]  # by kind and reason
    alerts_active: int


def engine_health(engine: Engine) -> AggregateHealth:
    """The engine's ``stats()``, typed."""
    return AggregateHealth(**engine.stats())
