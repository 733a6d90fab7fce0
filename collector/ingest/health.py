"""What ingest reports in ``/healthz`` (``ingest`` and ``limits``) and ``/metrics``.

Structs, not dicts, so that the JSON keys are declared once and a renamed counter fails type
checking. They live here rather than beside ``TransportCounters``, which mypyc compiles and
which therefore defines no msgspec Struct (``protocol.build``).
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from collector.ingest.counters import TransportCounters


class TransportHealth(msgspec.Struct, kw_only=True, gc=False):
    """One transport's counters (``ingest.websocket``, ``ingest.http``, and the start of
    ``ingest.udp``)."""

    messages: int
    bytes: int
    frames_accepted: int
    frames_rejected: int
    rejected_by_reason: dict[str, int]

    @classmethod
    def of(cls, counters: TransportCounters) -> TransportHealth:
        return cls(
            messages=counters.messages,
            bytes=counters.bytes,
            frames_accepted=counters.frames_accepted,
            frames_rejected=counters.frames_rejected,
            rejected_by_reason=dict(sorted(counters.rejected_by_reason.items())),
        )


class TurnsHealth(msgspec.Struct, kw_only=True, gc=False):
    """The turns of the UDP loop (``UdpTurns.health``)."""

    turns: int
    turns_bounded: int
    turn_max_s: float
    turn_cpu_max_s: float


class UdpHealth(msgspec.Struct, kw_only=True, gc=False):
    """``ingest.udp``: the transport's counters (``TransportHealth``'s keys), the loop's turns
    (``TurnsHealth``'s) and the socket's figures once it is open (absent before)."""

    messages: int
    bytes: int
    frames_accepted: int
    frames_rejected: int
    rejected_by_reason: dict[str, int]
    turns: int
    turns_bounded: int
    turn_max_s: float
    turn_cpu_max_s: float
    kernel_drops: int | UnsetType | None = UNSET  # None: the platform does not tell
    receive_buffer_bytes: int | UnsetType = UNSET

    @classmethod
    def of(
        cls,
        counters: TransportCounters,
        turns: TurnsHealth,
        kernel_drops: int | UnsetType | None = UNSET,
        receive_buffer_bytes: int | UnsetType = UNSET,
    ) -> UdpHealth:
        return cls(
            **msgspec.structs.asdict(TransportHealth.of(counters)),
            **msgspec.structs.asdict(turns),
            kernel_drops=kernel_drops,
            receive_buffer_bytes=receive_buffer_bytes,
        )


class IngestHealth(msgspec.Struct, kw_only=True, gc=False):
    udp: UdpHealth
    websocket: TransportHealth
    http: TransportHealth  # POST /ingest
    queue_batches: int  # batches waiting for the engine (WebSocket sessions' queue)
    queue_capacity_batches: int


class LimitsHealth(msgspec.Struct, kw_only=True, gc=False):
    """``limits``: the source addresses the limiter tracks, and those it forgot to stay
    bounded (``SourceLimiter.health``)."""

    tracked_sources: int
    forgotten_sources: int
