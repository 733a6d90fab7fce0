"""What the engine hands out: minute rows, lifecycle events, meeting summaries.

msgspec Structs, kept apart from the engine's modules: those may be compiled with mypyc
(``setup.py``), which does not keep a Struct's class options (``frozen``, ``kw_only``, ``gc``).
"""

from __future__ import annotations

from typing import Literal

import msgspec

RelayState = str  # "direct" | "turn-udp" | "turn-tcp" | "turn-tls"


class RtcMinuteRow(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """Everything one RTC stream did in one minute; the unit of storage."""

    meeting: str
    participant: str
    connection: str
    minute: int  # Unix time of the minute's start, seconds
    segment: int  # when this stream state opened (ms): a rejoin in the same minute is another row
    samples: int
    gaps: int
    resets: int
    counters: dict[str, float]  # deltas of every cumulative counter over the minute
    rtt_ms_avg: float | None
    audio_jitter_ms_avg: float | None
    video_jitter_ms_avg: float | None
    mos_avg: float | None
    mos_min: float | None
    quality_avg: float | None
    quality_min: float | None
    relay: RelayState
    turn_server: str | None
    relayed_bytes: float
    # Video and path gauges over the minute; None: no sample of the minute carried the value.
    fps_in_avg: float | None = None
    fps_out_avg: float | None = None
    width_in: int | None = None  # resolutions: the last reported in the minute
    height_in: int | None = None
    width_out: int | None = None
    height_out: int | None = None
    bwe_bps_avg: float | None = None  # available outgoing bitrate (bandwidth estimate)
    remote_relayed: bool | None = None  # the peer was relayed, at the minute's last path


LifecycleKind = Literal[
    "meeting_started", "meeting_ended", "joined", "left", "relay_changed", "client_event"
]


class LifecycleEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    kind: LifecycleKind
    meeting: str
    participant: str | None = None
    connection: str | None = None
    at: float
    detail: str | None = None  # why (leave, silence, first_frame…), the relay state, the event


class MeetingSummary(msgspec.Struct, frozen=True, kw_only=True):
    meeting: str
    started_at: float
    ended_at: float
    peak_participants: int
    bytes_up: float
    bytes_down: float
    relayed_bytes: float
    relay_cost: float
    relayed_bytes_by_turn_server: dict[str, float]
    quality_avg: float | None
    quality_worst: float | None
    seconds_by_level: dict[str, float]
