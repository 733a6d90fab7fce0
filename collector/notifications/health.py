"""``notify`` of ``/healthz``: one entry per ``[[notify]]`` sink (``/metrics`` renders them as
``bwmon_notify_*`` series labelled by sink and kind)."""

from __future__ import annotations

import msgspec


class SinkHealth(msgspec.Struct, kw_only=True, gc=False):
    name: str
    kind: str
    sent: int
    failed: int
    retried: int
    rejected: int
    dropped: int
    resent: int
    queue_depth: int
    queue_capacity: int
    firing: int  # alertmanager: the firing alerts it sends again (0 for the other kinds)
    last_error: str | None  # of the last failed attempt; None once one succeeds


class NotifyHealth(msgspec.Struct, kw_only=True, gc=False):
    sinks: list[SinkHealth] = msgspec.field(default_factory=list)
