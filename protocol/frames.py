"""The client → daemon frames: one msgspec tagged union, the schema of the wire.

Every frame is a map whose ``t`` key names its kind (``hello``, ``rtc``, ``http``, ``event``).
Wire keys are short so that a full ``rtc`` sample stays under 512 bytes as MessagePack; the
Python attribute names are the readable ones. ``protocol/PROTOCOL.md`` documents every key.

Rules that keep old daemons and new clients (and the reverse) working, see PROTOCOL.md §9:
a field once published keeps its wire key, type and unit; new fields are always optional
(default ``None``); unknown keys are ignored by the decoder.

This module must import nothing but msgspec and the standard library: emitters install it
without trio or a database driver.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta, field

PROTOCOL_VERSION: Final = 1

# Spec-level limits: fixed by the protocol, the same on every daemon.
MAX_ID_CHARS: Final = 128
MAX_URL_CHARS: Final = 512
MAX_COUNTER: Final = 2**53 - 1  # exactly representable in JSON numbers everywhere
MAX_CLIENT_TS_MS: Final = 1e13  # ms since the Unix epoch, year 2286
MAX_MS: Final = 3_600_000.0  # one hour, for delays and durations reported as gauges
MAX_SECONDS: Final = 1e9  # cumulative seconds (jitter-buffer delay, freeze duration)
MAX_BPS: Final = 1e12
# Nesting every decoder must take (PROTOCOL.md §5.1), the outermost map or array being level 1.
# Guaranteed rather than checked: a deeper message fails only where it exhausts msgspec's
# recursion limit, which is the Python runtime's and depends on the caller's stack.
MAX_NESTING: Final = 256

# Identifiers: 1 to 128 characters, no whitespace and no control characters, so they are safe
# in logs, topic names and file names; in frames the length is checked by the Structs, the
# characters by codec._check_identifiers (PROTOCOL.md §4.1).
Id: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
Url: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_URL_CHARS)]
Text: TypeAlias = Annotated[str, Meta(max_length=MAX_ID_CHARS)]
Counter: TypeAlias = Annotated[int, Meta(ge=0, le=MAX_COUNTER)]
Seconds: TypeAlias = Annotated[float, Meta(ge=0, le=MAX_SECONDS)]
Millis: TypeAlias = Annotated[float, Meta(ge=0, le=MAX_MS)]
ClientTs: TypeAlias = Annotated[float, Meta(ge=0, le=MAX_CLIENT_TS_MS)]
Fps: TypeAlias = Annotated[float, Meta(ge=0, le=1000)]
Pixels: TypeAlias = Annotated[int, Meta(ge=0, le=65535)]
Bps: TypeAlias = Annotated[float, Meta(ge=0, le=MAX_BPS)]


def is_identifier(value: str) -> bool:
    """Whether ``value`` is an identifier (PROTOCOL.md §4.1): 1 to 128 code points, no space
    and no code point that ``str.isprintable`` refuses (Unicode Other: Cc, Cf, Cs, Co, Cn;
    Separator: Zs, Zl, Zp)."""
    return 0 < len(value) <= MAX_ID_CHARS and " " not in value and value.isprintable()


CandidateType: TypeAlias = Literal["host", "srflx", "prflx", "relay"]
RelayProtocol: TypeAlias = Literal["udp", "tcp", "tls"]
LimitationReason: TypeAlias = Literal["none", "cpu", "bandwidth", "other"]
ClientKind: TypeAlias = Literal["browser", "server", "emitter", "other"]
EventKind: TypeAlias = Literal["join", "leave", "ice", "reconnect", "mute", "unmute"]
DEFAULT_CLIENT_KIND: Final[ClientKind] = "other"

# Upper bounds (ms) of the cumulative HTTP latency histogram, fixed by the spec; the histogram
# has one more bucket for everything above the last bound.
HTTP_LATENCY_BOUNDS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
HTTP_LATENCY_BUCKETS: Final = len(HTTP_LATENCY_BOUNDS_MS) + 1
STATUS_CLASSES: Final = 5  # 1xx … 5xx


class Hello(msgspec.Struct, tag="hello", tag_field="t", omit_defaults=True, gc=False, frozen=True):
    """First frame of a WebSocket session (optional on UDP): who is sending."""

    boot: Id  # random nonce per process/page start: tells a restart from a counter reset
    v: Annotated[int, Meta(ge=1, le=1000)] | None = PROTOCOL_VERSION
    kind: ClientKind | None = DEFAULT_CLIENT_KIND
    agent: Text | None = None  # e.g. "bwmon-js/0.1"
    host: Text | None = None
    pid: Annotated[int, Meta(ge=0, le=2**31)] | None = None
    token: Annotated[str, Meta(max_length=4096)] | None = None  # never logged

    def __post_init__(self) -> None:
        # null on the wire means absent (PROTOCOL.md §3.2): v and kind take their defaults,
        # so a decoded hello never holds None in them.
        if self.v is None:
            msgspec.structs.force_setattr(self, "v", PROTOCOL_VERSION)
        if self.kind is None:
            msgspec.structs.force_setattr(self, "kind", DEFAULT_CLIENT_KIND)


class RtcSample(
    msgspec.Struct, tag="rtc", tag_field="t", omit_defaults=True, gc=False, frozen=True
):
    """One getStats sample of one participant's peer connection.

    Counters are cumulative since the connection started; gauges are current values.
    """

    # collector/aggregate/rtc.py reads a sample by position: the stream's key first, then the
    # counters in one run in its COUNTERS order (tests/aggregate/test_rtc_fields.py).
    meeting: Id = field(name="m")
    participant: Id = field(name="p")
    connection: Id = field(name="c")
    seq: Counter = field(name="q")
    client_ts: ClientTs = field(name="ts")
    # cumulative counters, outbound-rtp / inbound-rtp per kind
    audio_bytes_sent: Counter | None = field(default=None, name="aob")
    audio_packets_sent: Counter | None = field(default=None, name="aop")
    audio_bytes_received: Counter | None = field(default=None, name="aib")
    audio_packets_received: Counter | None = field(default=None, name="aip")
    audio_packets_lost: Counter | None = field(default=None, name="ail")
    audio_remote_packets_lost: Counter | None = field(default=None, name="arl")
    video_bytes_sent: Counter | None = field(default=None, name="vob")
    video_packets_sent: Counter | None = field(default=None, name="vop")
    video_bytes_received: Counter | None = field(default=None, name="vib")
    video_packets_received: Counter | None = field(default=None, name="vip")
    video_packets_lost: Counter | None = field(default=None, name="vil")
    video_remote_packets_lost: Counter | None = field(default=None, name="vrl")
    jitter_buffer_delay_s: Seconds | None = field(default=None, name="ajd")
    jitter_buffer_emitted: Counter | None = field(default=None, name="aje")
    concealed_samples: Counter | None = field(default=None, name="acs")
    silent_concealed_samples: Counter | None = field(default=None, name="ass")
    total_samples_received: Counter | None = field(default=None, name="ats")
    frames_decoded: Counter | None = field(default=None, name="vfd")
    frames_dropped: Counter | None = field(default=None, name="vfx")
    freeze_count: Counter | None = field(default=None, name="vzc")
    freeze_duration_s: Seconds | None = field(default=None, name="vzd")
    pair_bytes_sent: Counter | None = field(default=None, name="pbs")
    pair_bytes_received: Counter | None = field(default=None, name="pbr")
    # gauges
    rtt_ms: Millis | None = field(default=None, name="rtt")
    audio_jitter_ms: Millis | None = field(default=None, name="aj")
    video_jitter_ms: Millis | None = field(default=None, name="vj")
    fps_in: Fps | None = field(default=None, name="vfi")
    fps_out: Fps | None = field(default=None, name="vfo")
    width_in: Pixels | None = field(default=None, name="vwi")
    height_in: Pixels | None = field(default=None, name="vhi")
    width_out: Pixels | None = field(default=None, name="vwo")
    height_out: Pixels | None = field(default=None, name="vho")
    available_outgoing_bps: Bps | None = field(default=None, name="bwe")
    limitation: LimitationReason | None = field(default=None, name="qlr")
    audio_fec: bool | None = field(default=None, name="fec")
    # path of the selected candidate pair
    local_candidate: CandidateType | None = field(default=None, name="lct")
    remote_candidate: CandidateType | None = field(default=None, name="rct")
    relay_protocol: RelayProtocol | None = field(default=None, name="rp")
    turn_url: Url | None = field(default=None, name="turn")
    pair_id: Id | None = field(default=None, name="pair")
    # the emitter's boot nonce (as ``Hello.boot``): another boot of a known (m, p, c) is a new
    # stream; on WebSocket a frame without it takes the session hello's
    boot: Id | None = None


StatusCounts: TypeAlias = Annotated[
    list[Counter], Meta(min_length=STATUS_CLASSES, max_length=STATUS_CLASSES)
]
LatencyHistogram: TypeAlias = Annotated[
    list[Counter], Meta(min_length=HTTP_LATENCY_BUCKETS, max_length=HTTP_LATENCY_BUCKETS)
]


class HttpSample(
    msgspec.Struct, tag="http", tag_field="t", omit_defaults=True, gc=False, frozen=True
):
    """Cumulative request counters of one route of one server process."""

    service: Id = field(name="svc")
    instance: Id = field(name="inst")
    boot: Id
    route: Id
    method: Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[A-Z_]+$")] = field(
        name="meth"
    )
    seq: Counter = field(name="q")
    client_ts: ClientTs = field(name="ts")
    requests: Counter = field(name="req")
    status: StatusCounts = field(name="st")  # responses per class: 1xx, 2xx, 3xx, 4xx, 5xx
    bytes_in: Counter = field(name="bi")
    bytes_out: Counter = field(name="bo")
    latency_hist: LatencyHistogram = field(name="lh")  # per bucket, not cumulative across buckets
    latency_sum_ms: Annotated[float, Meta(ge=0, le=1e15)] = field(name="ls")


class Event(msgspec.Struct, tag="event", tag_field="t", omit_defaults=True, gc=False, frozen=True):
    """Something that happened to a participant: join, leave, ICE state change, reconnect."""

    meeting: Id = field(name="m")
    participant: Id = field(name="p")
    kind: EventKind = field(name="ev")
    client_ts: ClientTs = field(name="ts")
    connection: Id | None = field(default=None, name="c")
    value: Text | None = field(default=None, name="val")  # e.g. the new ICE state


Frame: TypeAlias = Hello | RtcSample | HttpSample | Event
FRAME_TYPES: Final = (Hello, RtcSample, HttpSample, Event)
