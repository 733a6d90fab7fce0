"""What the aggregation engine can be told: windows, lifecycle timeouts, caps, relay price.

The ``[aggregate]`` section of ``collector.toml`` is this Struct (``collector.config`` embeds
it), so the engine depends on no config code and the config has one definition of each key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0, le=86_400)]


class AggregateSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    bucket_s: Annotated[float, Meta(ge=0.1, le=60)] = 1.0
    window_buckets: Annotated[int, Meta(ge=2, le=3600)] = 60
    minute_grace_s: Annotated[float, Meta(ge=0, le=30)] = 2.0
    participant_timeout_s: Seconds = 30.0
    meeting_end_after_s: Seconds = 60.0
    max_meetings: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    max_participants_per_meeting: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    max_connections_per_participant: Annotated[int, Meta(ge=1, le=1_000)] = 8
    max_http_routes: Annotated[int, Meta(ge=1, le=1_000_000)] = 1_000
    max_http_instances_per_route: Annotated[int, Meta(ge=1, le=1_000_000)] = 256
    max_http_instances: Annotated[int, Meta(ge=1, le=10_000_000)] = 20_000
    # At least a minute and the longest grace: an idle route's last minute is closed by then.
    http_idle_s: Annotated[float, Meta(ge=90, le=604_800)] = 600.0
    relay_price_per_gb: Annotated[float, Meta(ge=0, le=1_000)] = 0.09
    expected_video_bps: Annotated[float, Meta(gt=0, le=1e10)] = 1_500_000.0
    expected_fps: Annotated[float, Meta(gt=0, le=1000)] = 30.0
