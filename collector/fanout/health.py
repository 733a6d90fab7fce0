"""What fan-out reports in ``/healthz`` (``fanout``) and ``/metrics``: the publisher's counters,
the subscriber sessions' and, with Redis, the channel's."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class PublisherHealth(msgspec.Struct, kw_only=True, gc=False):
    """``Publisher.health``."""

    publishes: int
    deltas: int
    unavailable: int  # publishes the channel refused
    epoch_changes: int
    last_publish_ms: float
    prepared: int
    parts_timeouts: int  # prepared snapshots sent without some daemon's part


class SubscribersHealth(msgspec.Struct, kw_only=True, gc=False):
    """The subscriber sessions' counters (``Fanout.health``)."""

    subscribers: int
    sessions: int
    refused: int
    deltas_delivered: int
    deltas_sent: int
    deltas_written_now: int
    snapshots_sent: int
    resumed: int
    queues_replaced: int
    heartbeat_timeouts: int
    bad_messages: int
    refused_unauthorized: int
    refused_forbidden: int
    tokens_expired: int


class RedisHealth(msgspec.Struct, kw_only=True, gc=False):
    """``fanout.redis``: the Redis channel's counters; behind the local fallback (as the
    daemon runs it), also the mode it serves in and how often it fell back."""

    mode: str | UnsetType = UNSET
    delivered: int
    epoch_changes: int
    bad_entries: int
    outages: int
    presumed_dead: int  # times this daemon's entities were removed as a dead one's
    daemons_reaped: int
    entities_reaped: int
    fallbacks: int | UnsetType = UNSET


class FanoutHealth(msgspec.Struct, kw_only=True, gc=False):
    """``fanout``: the channel and its epoch, then the publisher's and the sessions' counters
    (``PublisherHealth``, ``SubscribersHealth``: the same keys, inline), then Redis's."""

    channel: str  # "redis" or "local"
    epoch: str
    publishes: int
    deltas: int
    unavailable: int
    epoch_changes: int
    last_publish_ms: float
    prepared: int
    parts_timeouts: int
    subscribers: int
    sessions: int
    refused: int
    deltas_delivered: int
    deltas_sent: int
    deltas_written_now: int
    snapshots_sent: int
    resumed: int
    queues_replaced: int
    heartbeat_timeouts: int
    bad_messages: int
    refused_unauthorized: int
    refused_forbidden: int
    tokens_expired: int
    redis: RedisHealth | UnsetType = UNSET

    @classmethod
    def of(
        cls,
        channel: str,
        epoch: str,
        publisher: PublisherHealth,
        subscribers: SubscribersHealth | dict[str, Any],
        redis: RedisHealth | None,
    ) -> FanoutHealth:
        """``subscribers``: the Struct, or the sessions' counters as ``Fanout.health`` keeps
        them (a dict with the Struct's keys; another key fails here, not in a dashboard)."""
        if isinstance(subscribers, dict):
            subscribers = SubscribersHealth(**subscribers)
        return cls(
            channel=channel,
            epoch=epoch,
            **msgspec.structs.asdict(publisher),
            **msgspec.structs.asdict(subscribers),
            redis=UNSET if redis is None else redis,
        )
