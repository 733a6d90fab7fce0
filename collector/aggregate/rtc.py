"""One RTC stream — a participant's peer connection — from cumulative samples to intervals.

Each ``rtc`` frame carries cumulative counters (PROTOCOL.md §8). ``RtcStream.add`` turns them
into deltas with the rules of §8 and of the reference (``shared/reference/webrtc-quality.md``,
Deltas):

- the stream's first sample counts in full (every counter's delta from 0) when the stream's
  start is known: its ``q`` is 0, or it is the first of a new boot (``restart``); any other
  first sample is a *baseline* (no deltas; ``add_fields`` says ``BASELINE``): the stream began
  before the daemon saw it, and what it counted until then cannot be told from a continuation;
- a sequence number at or below the last one is a duplicate or arrived late: ignored whole
  (``DUPLICATE``);
- a gap in sequence numbers is recorded (``gaps``); the next sample's delta covers the missing
  ones, so nothing is lost and nothing is counted twice;
- a counter below its last value is a reset: that counter takes a new baseline and yields no
  delta for the interval (``resets``);
- the selected pair's counters (``pbs``, ``pbr``) are the pair's own: a pair id the stream has
  not had counts them in full from 0 (they began with the pair), a pair it had before (browsers
  switch back) goes on from that pair's last values (``left_pairs``, the last
  ``LEFT_PAIRS``), and a sample without a pair id keeps the stream's pair;
- an absent counter keeps its last value; a counter absent from the stream's first sample
  counts from 0 when it appears (its source began after the stream: all of it is new).

Gauges (RTT, jitter, frame rates, resolutions, the bandwidth estimate) keep their last value —
a sample without one leaves it — for the live view; the minute row has the mean of the values
its samples carried and the last resolutions and remote relay it reported, None for what none
of them carried.

Deltas go to two fixed-size accumulators of plain floats: ``pending`` (the tick interval, from
which the engine derives rates and quality) and ``minute`` (one ``MinuteRow`` per minute).
Memory per stream is fixed: numbers live in ``array`` objects, never in per-bucket objects.

An interval's rates divide its deltas by the time they cover (``take_interval``): from the
newest sample of the interval before (or the baseline) to the newest of this one, by the
samples' own ``ts`` — the clock that timed the counters — not by the daemon's time between two
ticks, which a client sampling every 2 s fills every other tick (``interval_seconds`` guards
against a client clock that went back or jumped). Deltas that count from the stream's start (its
first sample in full, a new boot's) cover a time nobody told the daemon: no rate from them.

A client that sends faster than the daemon ticks costs one comparison per sample, not a delta
per counter: from a stream's third sample in one tick, a sample whose counters all grew since
the one before (same counters present, same pair) is *held* instead of applied, and the next
one replaces it. Held or applied, the deltas add up the same — the held sample's deltas from
the last applied one are the sum of the deltas in between, as none of them was a reset — so
the held sample is applied (``_fold``) before anything reads the accumulators: the tick, the
minute row, a checkpoint, a relay change, a sample that is not held.

What a stream counted since its boot began, per byte counter (``TOTALS``), is its closed
minutes' (kept after the counters' last values in ``last``: one array, not two, as memory per
stream is the budget) and the open minute's: ``totals``, the live view's per-stream totals.

Which stream a sample belongs to (its key and boot) is the engine's business; a stream is told
when its emitter restarted (``restart``) and remembers the boots it left (``retired``).

Pure: no I/O, no clock reads; the daemon passes its time in.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Final

import msgspec

from collector.aggregate.records import RelayState, RtcMinuteRow
from protocol import RtcSample

COUNTERS: Final = (
    "audio_bytes_sent",
    "audio_packets_sent",
    "audio_bytes_received",
    "audio_packets_received",
    "audio_packets_lost",
    "audio_remote_packets_lost",
    "video_bytes_sent",
    "video_packets_sent",
    "video_bytes_received",
    "video_packets_received",
    "video_packets_lost",
    "video_remote_packets_lost",
    "jitter_buffer_delay_s",
    "jitter_buffer_emitted",
    "concealed_samples",
    "silent_concealed_samples",
    "total_samples_received",
    "frames_decoded",
    "frames_dropped",
    "freeze_count",
    "freeze_duration_s",
    "pair_bytes_sent",
    "pair_bytes_received",
)
C: Final = {name: i for i, name in enumerate(COUNTERS)}
N_COUNTERS: Final = len(COUNTERS)
PAIR_COUNTERS: Final = (C["pair_bytes_sent"], C["pair_bytes_received"])
# A sample's fields as one tuple (``astuple``: one C call, cheaper than reading the counters by
# name), in which the counters are one run in ``COUNTERS`` order and the stream's key
# (meeting, participant, connection) the first three: slices of the tuple.
# tests/aggregate/test_rtc_fields.py fails when RtcSample's fields move out of that layout.
sample_fields: Final = msgspec.structs.astuple
_FIELD_NAMES: Final = tuple(f.name for f in msgspec.structs.fields(RtcSample))
_FIRST: Final = _FIELD_NAMES.index(COUNTERS[0])
COUNTERS_AT: Final = slice(_FIRST, _FIRST + N_COUNTERS)
STREAM_KEY: Final = slice(0, 3)
# The other fields ``add`` reads, by position: an index into the tuple, not an attribute
# lookup on the frame for each.
_SEQ: Final = _FIELD_NAMES.index("seq")
_TS: Final = _FIELD_NAMES.index("client_ts")
_PAIR_ID: Final = _FIELD_NAMES.index("pair_id")
_LOCAL_CANDIDATE: Final = _FIELD_NAMES.index("local_candidate")
_REMOTE_CANDIDATE: Final = _FIELD_NAMES.index("remote_candidate")
_RELAY_PROTOCOL: Final = _FIELD_NAMES.index("relay_protocol")
_TURN_URL: Final = _FIELD_NAMES.index("turn_url")
_RTT_MS: Final = _FIELD_NAMES.index("rtt_ms")
_AUDIO_JITTER_MS: Final = _FIELD_NAMES.index("audio_jitter_ms")
_VIDEO_JITTER_MS: Final = _FIELD_NAMES.index("video_jitter_ms")
_LIMITATION: Final = _FIELD_NAMES.index("limitation")
_AUDIO_FEC: Final = _FIELD_NAMES.index("audio_fec")
_FPS_IN: Final = _FIELD_NAMES.index("fps_in")
_FPS_OUT: Final = _FIELD_NAMES.index("fps_out")
_WIDTH_IN: Final = _FIELD_NAMES.index("width_in")
_HEIGHT_IN: Final = _FIELD_NAMES.index("height_in")
_WIDTH_OUT: Final = _FIELD_NAMES.index("width_out")
_HEIGHT_OUT: Final = _FIELD_NAMES.index("height_out")
_BWE: Final = _FIELD_NAMES.index("available_outgoing_bps")
SAMPLE_BOOT: Final = _FIELD_NAMES.index("boot")  # the engine's: which stream a sample is of
# What ``add_fields`` did besides applying the sample, as bits (0: applied, nothing else).
RELAY_CHANGED: Final = 1  # the relay state changed: ``relay`` holds the new one
BASELINE: Final = 2  # the stream's first sample, taken as a baseline (no deltas)
DUPLICATE: Final = 4  # not applied: its ``q`` is not above the stream's last
OLD_BOOT: Final = 8  # not applied: of a boot its stream has left (the engine's, HTTP's)
RETIRED_BOOTS: Final = 4  # boots a stream remembers having left
LEFT_PAIRS: Final = 4  # selected pairs a stream remembers having left, with their counters
# The byte counters whose totals the live view shows per stream, in this order.
TOTALS: Final = (
    "audio_bytes_sent",
    "audio_bytes_received",
    "video_bytes_sent",
    "video_bytes_received",
    "pair_bytes_sent",
    "pair_bytes_received",
)
_TOTALS_AT: Final = tuple(C[name] for name in TOTALS)
# The live view: per tick bucket, the values derived for the interval (NaN: not measured).
RING_FIELDS: Final = (
    "send_bps",
    "recv_bps",
    "loss_down_pct",
    "loss_up_pct",
    "rtt_ms",
    "jitter_ms",
    "mos",
    "quality",
)
N_RING: Final = len(RING_FIELDS)
_ZEROS: Final = array("d", bytes(8 * N_COUNTERS))
# ``last``: the counters' last values, then the ``TOTALS`` of the closed minutes.
_LAST_ZEROS: Final = array("d", bytes(8 * (N_COUNTERS + len(TOTALS))))

# The ring stores each value as an unsigned 16-bit step of its field's unit (2 bytes, not 8):
# bitrates in kbit/s, loss in 0.01 %, RTT in ms, jitter in 0.1 ms, MOS in 0.001, quality in
# 0.01. Larger values saturate at the top step; NO_DATA marks a bucket without a value.
RING_SCALE: Final = (1e-3, 1e-3, 100.0, 100.0, 1.0, 10.0, 1000.0, 100.0)
NO_DATA: Final = 0xFFFF
_TOP: Final = NO_DATA - 1
_NO_DATA_ROW: Final = array("H", [NO_DATA]) * N_RING


def relay_state(local_candidate: str | None, relay_protocol: str | None) -> RelayState:
    """Where this client's media goes: direct, or through TURN over which transport.

    A relay candidate without a protocol (Firefox omits it) counts as TURN over UDP.
    """
    if local_candidate != "relay":
        return "direct"
    return f"turn-{relay_protocol or 'udp'}"


def turn_server(url: str | None) -> str | None:
    """The TURN server of a relay candidate: its URL without the query part."""
    return url.split("?", 1)[0] if url else None


# RtcStream's attributes, named once: its ``__slots__`` and its checkpoint state read them.
_SLOTS: Final = (
    "audio_fec",
    "audio_jitter_count",
    "audio_jitter_ms",
    "audio_jitter_sum",
    "available_outgoing_bps",
    "boot",
    "bwe_count",
    "bwe_sum",
    "connection",
    "fps_in",
    "fps_in_count",
    "fps_in_sum",
    "fps_out",
    "fps_out_count",
    "fps_out_sum",
    "gaps",
    "height_in",
    "height_out",
    "held",
    "interval_at",
    "interval_seq",
    "interval_ts",
    "known_start",
    "last",
    "last_seen",
    "last_seq",
    "left_pairs",
    "limitation",
    "meeting",
    "minute",
    "minute_gaps",
    "minute_height_in",
    "minute_height_out",
    "minute_no",
    "minute_remote_relayed",
    "minute_resets",
    "minute_samples",
    "minute_width_in",
    "minute_width_out",
    "mos_count",
    "mos_min",
    "mos_sum",
    "opened",
    "pair_id",
    "participant",
    "pending",
    "pending_samples",
    "quality",
    "quality_count",
    "quality_min",
    "quality_sum",
    "recent",
    "relay",
    "relay_protocol",
    "relayed_minute",
    "remote_relayed",
    "resets",
    "retired",
    "ring",
    "ring_bucket",
    "rtt_count",
    "rtt_ms",
    "rtt_sum",
    "samples",
    "stale",
    "ts",
    "turn_server",
    "video_jitter_count",
    "video_jitter_ms",
    "video_jitter_sum",
    "width_in",
    "width_out",
)


class RtcStream:
    """Cumulative counters of one peer connection in, interval deltas out."""

    __slots__ = _SLOTS

    def __init__(
        self,
        meeting: str,
        participant: str,
        connection: str,
        window: int = 60,
        opened: int = 0,
        boot: str | None = None,
    ) -> None:
        self.meeting = meeting
        self.opened = opened
        self.participant = participant
        self.connection = connection
        self.boot = boot  # the emitter's boot nonce, once a sample said it
        self.retired: tuple[str, ...] = ()  # boots left for a newer one, the newest first
        self.known_start = False  # the first sample counts in full whatever its ``q``
        self.last_seq = -1
        self.last_seen = 0.0  # daemon time of the last sample, set by the engine
        self.ts = 0.0  # the client's ``ts`` of the newest sample applied or held (ms)
        # Where the pending deltas count from (``take_interval``): the ``q`` and ``ts`` of that
        # sample (``interval_seq`` -1: from the stream's start, at a time the daemon was never
        # told; ``interval_ts`` is then not read) and the daemon's time then (the tick that took
        # the interval before; set by the engine when the stream opens). Numbers, never NaN:
        # compiled, a NaN read back is a new object, unequal to itself in a state's list.
        self.interval_seq = -1
        self.interval_ts = 0.0
        self.interval_at = 0.0
        self.quality: float | None = None  # smoothed quality score, set by the engine
        # The last value of every counter: 0 until it comes (a counter counts from 0); -1, in the
        # state of an older build taken right after a pair change: the next value is a baseline.
        # After them, from ``N_COUNTERS`` on: the ``TOTALS`` counted in the closed minutes.
        self.last = array("d", _LAST_ZEROS)
        # The pairs left, newest first, flat: (pair id, its pbs, its pbr) for each, at most
        # ``LEFT_PAIRS``; a switch back to one goes on from its counters.
        self.left_pairs: tuple[Any, ...] = ()
        self.pending = array("d", _ZEROS)
        self.pending_samples = 0
        self.minute = array("d", _ZEROS)
        self.minute_no = -1
        self.minute_samples = 0
        self.minute_gaps = 0
        self.minute_resets = 0
        self.rtt_sum = self.audio_jitter_sum = self.video_jitter_sum = 0.0
        self.rtt_count = self.audio_jitter_count = self.video_jitter_count = 0
        self.mos_sum = self.quality_sum = 0.0
        self.mos_count = self.quality_count = 0
        self.mos_min: float | None = None
        self.quality_min: float | None = None
        self.relayed_minute = 0.0
        self.samples = self.gaps = self.resets = self.stale = 0
        self.pair_id: str | None = None
        self.relay: RelayState = "direct"
        self.relay_protocol: str | None = None
        self.remote_relayed = False
        self.turn_server: str | None = None
        self.limitation: str | None = None
        self.rtt_ms: float | None = None
        self.audio_jitter_ms: float | None = None
        self.video_jitter_ms: float | None = None
        self.audio_fec = False
        # The last value of each video gauge and of the bandwidth estimate (None: never sent),
        # their sums and counts over the minute, and the minute's last resolutions.
        self.fps_in: float | None = None
        self.fps_out: float | None = None
        self.available_outgoing_bps: float | None = None
        self.fps_in_sum = self.fps_out_sum = self.bwe_sum = 0.0
        self.fps_in_count = self.fps_out_count = self.bwe_count = 0
        self.width_in: int | None = None
        self.height_in: int | None = None
        self.width_out: int | None = None
        self.height_out: int | None = None
        self.minute_width_in: int | None = None
        self.minute_height_in: int | None = None
        self.minute_width_out: int | None = None
        self.minute_height_out: int | None = None
        self.minute_remote_relayed: bool | None = None  # None: no sample with a path this minute
        self.ring = array("H", [NO_DATA]) * (window * N_RING)  # a live view, not a ledger
        self.ring_bucket = -1
        # The newest sample's counters (``COUNTERS`` order), from the second sample of a tick
        # until the tick: the reference a faster sample is compared with; ``held``: it has not
        # been applied yet. Never in a checkpoint (``state`` applies it first).
        self.recent: tuple[Any, ...] | None = None
        self.held = False

    def state(self) -> list[Any]:
        """Everything but the live ring, in ``_STATE_SLOTS`` order, arrays as their bytes:
        what a checkpoint keeps (positional and raw: it is taken for every stream)."""
        self._fold()
        return [
            value.tobytes() if type(value) is array else value
            for value in map(self.__getattribute__, _STATE_SLOTS)
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any], window: int = 60) -> RtcStream:
        """The stream that ``state()`` gave ``state``. The state of an older build is shorter:
        what came since (``_ADDED_STATE``) keeps its defaults."""
        if not len(_STATE_SLOTS) - len(_ADDED_STATE) <= len(state) <= len(_STATE_SLOTS):
            raise ValueError(f"an rtc stream state of {len(state)} values")
        values = dict(zip(_STATE_SLOTS, state, strict=False))
        stream = cls(values["meeting"], values["participant"], values["connection"], window)
        for name, value in values.items():
            current = getattr(stream, name)
            if type(current) is array:
                restored = array(current.typecode)
                restored.frombytes(value)
                # An older ``last`` ends with the counters: its stream's totals count from now.
                restored.extend(current[len(restored) :])
                value = restored
            elif type(current) is tuple:
                value = tuple(value)  # MessagePack gave a list
            setattr(stream, name, value)
        return stream

    def restart(self, boot: str, opened: int) -> None:
        """Begin again for a new ``boot`` of the emitter (the caller has closed the open minute):
        sequence numbers anew, every counter from 0, the first sample in full, rows in the new
        segment ``opened``. The live view goes on; the totals begin again with the counters."""
        self._fold()
        if self.boot is not None:
            self.retired = retire(self.retired, self.boot)
        self.boot = boot
        self.opened = opened
        self.known_start = True
        self.last_seq = -1
        self.interval_seq = -1  # the pending deltas now count from the new boot's start too
        self.last = array("d", _LAST_ZEROS)  # the new boot's totals too (its minute is closed)
        self.pair_id = None
        self.left_pairs = ()
        self.recent = None

    def ring_write(self, bucket_no: int, values: tuple[float, ...]) -> None:
        """Store one tick's derived values (in ``RING_FIELDS`` order, NaN: not measured) in
        bucket ``bucket_no``; buckets skipped since the last write hold no data."""
        ring = self.ring
        window = len(ring) // N_RING
        if self.ring_bucket >= 0:
            for skipped in range(
                self.ring_bucket + 1, min(bucket_no, self.ring_bucket + window + 1)
            ):
                at = (skipped % window) * N_RING
                ring[at : at + N_RING] = _NO_DATA_ROW
        at = (bucket_no % window) * N_RING
        ring[at : at + N_RING] = array(
            "H",
            [
                NO_DATA if v != v else min(_TOP, max(0, round(v * scale)))
                for v, scale in zip(values, RING_SCALE, strict=True)
            ],
        )
        self.ring_bucket = bucket_no

    def ring_series(self, field: str, now_bucket: int) -> list[float | None]:
        """The last ``window`` buckets of one field, oldest first, None where no data."""
        k = RING_FIELDS.index(field)
        first = now_bucket - len(self.ring) // N_RING + 1
        rows = dict(self.ring_rows(first, now_bucket))
        return [rows[b][k] if b in rows else None for b in range(first, now_bucket + 1)]

    def ring_rows(
        self, first_bucket: int, last_bucket: int
    ) -> Iterator[tuple[int, tuple[float | None, ...]]]:
        """The buckets from ``first_bucket`` to ``last_bucket`` that hold data, oldest first,
        each with its values in ``RING_FIELDS`` order (None: not measured)."""
        ring = self.ring
        window = len(ring) // N_RING
        for bucket in range(
            max(first_bucket, self.ring_bucket - window + 1, 0),
            min(last_bucket, self.ring_bucket) + 1,
        ):
            at = (bucket % window) * N_RING
            steps = ring[at : at + N_RING]
            if steps == _NO_DATA_ROW:
                continue
            yield (
                bucket,
                tuple(
                    None if v == NO_DATA else v / scale
                    for v, scale in zip(steps, RING_SCALE, strict=True)
                ),
            )

    def ring_means(
        self, first_bucket: int, last_bucket: int, fields: tuple[int, ...]
    ) -> list[float | None]:
        """Per field of ``fields`` (indexes into ``RING_FIELDS``), its mean over the buckets from
        ``first_bucket`` to ``last_bucket`` that hold it, None if none does. The fast path of
        ``ring_rows`` for a few fields (every stream, every publish)."""
        ring = self.ring
        window = len(ring) // N_RING
        rows = [
            (bucket % window) * N_RING
            for bucket in range(
                max(first_bucket, self.ring_bucket - window + 1, 0),
                min(last_bucket, self.ring_bucket) + 1,
            )
        ]
        means: list[float | None] = []
        for k in fields:
            present = [v for v in [ring[at + k] for at in rows] if v != NO_DATA]
            means.append(sum(present) / len(present) / RING_SCALE[k] if present else None)
        return means

    def add(self, frame: RtcSample, minute_no: int) -> RelayState | None:
        """Apply one sample received in minute ``minute_no`` (the caller has closed the row of
        an earlier minute first). Returns the new relay state when it changed, else None."""
        changed = self.add_fields(sample_fields(frame), minute_no) & RELAY_CHANGED
        return self.relay if changed else None

    def add_fields(self, fields: tuple[Any, ...], minute_no: int) -> int:
        """``add`` of a sample's fields (``sample_fields``), which the engine has taken
        already for the stream's key. Returns what else became of it: ``RELAY_CHANGED``,
        ``BASELINE``, ``DUPLICATE`` bits (0: applied, nothing else)."""
        seq: int = fields[_SEQ]
        last_seq = self.last_seq
        if seq <= last_seq:
            self.stale += 1
            return DUPLICATE
        outcome = 0
        self.minute_no = minute_no
        if last_seq < 0:
            if seq > 0 and not self.known_start:
                outcome = BASELINE
        elif seq > last_seq + 1:
            gap = seq - last_seq - 1
            self.gaps += gap
            self.minute_gaps += gap
        self.last_seq = seq
        self.ts = fields[_TS]
        self.samples += 1
        self.minute_samples += 1
        self.pending_samples += 1
        if self._path(fields):  # first: a relay change applies a held sample before it
            outcome |= RELAY_CHANGED
        # Only the counters outlive the frame (as ``recent``); the rest is freed with it.
        counters = fields[COUNTERS_AT]
        pair_id: str | None = fields[_PAIR_ID]
        if outcome & BASELINE:
            self._baseline(pair_id, counters)
            self.interval_seq, self.interval_ts = seq, self.ts
        elif not self._hold(pair_id, counters):
            self._fold()
            self._apply(pair_id, counters)
            # A reference for the next sample from the second of a tick on: a stream that
            # sends once a tick keeps nothing between ticks.
            self.recent = counters if self.pending_samples > 1 else None
        self._gauges(fields)
        return outcome

    def _baseline(self, pair_id: str | None, counters: tuple[Any, ...]) -> None:
        """Take a first sample's counters as the values the stream had reached: no deltas
        (nothing is held before a stream's first sample)."""
        self.pair_id = pair_id
        last = self.last
        for i, value in enumerate(counters):
            if value is not None:
                last[i] = value

    def _hold(self, pair_id: str | None, counters: tuple[Any, ...]) -> bool:
        """Hold this sample (``counters``: all of them in ``COUNTERS`` order, None where absent)
        in place of the one before when that is exact: the same pair (or none said), the same
        counters present and none of them lower. False: it must be applied."""
        recent = self.recent
        other_pair = pair_id is not None and pair_id != self.pair_id
        if recent is None or other_pair or not _grew(counters, recent):
            return False
        self.recent, self.held = counters, True
        return True

    def _fold(self) -> None:
        """Apply the held sample, if any."""
        if self.held:
            self.held = False
            assert self.recent is not None
            self._apply(self.pair_id, self.recent)

    def _apply(self, pair_id: str | None, counters: tuple[float | None, ...]) -> None:
        """The deltas of one sample's counters from the last applied ones."""
        last, pending, minute = self.last, self.pending, self.minute
        i_sent, i_received = PAIR_COUNTERS
        pair_before = pending[i_sent] + pending[i_received]
        if pair_id is not None and pair_id != self.pair_id:
            # Counters sent before any pair id are taken as the first pair's.
            if self.pair_id is not None:
                self._switch_pair(pair_id)
            self.pair_id = pair_id
        for i, value in enumerate(counters):
            if value is None:
                continue
            before = last[i]
            last[i] = value
            if before < 0:
                continue
            delta = value - before
            if delta < 0:
                self.resets += 1
                self.minute_resets += 1
                continue
            pending[i] += delta
            minute[i] += delta
        if self.relay != "direct":
            # Relayed volume: what the selected pair moved since the last sample, both ways.
            self.relayed_minute += pending[i_sent] + pending[i_received] - pair_before

    def _switch_pair(self, pair_id: str) -> None:
        """Leave the selected pair for ``pair_id``: its counters go on from the values it had
        if the stream had it before, else from 0 (they began with it: all of them is new)."""
        last, left = self.last, self.left_pairs
        i_sent, i_received = PAIR_COUNTERS
        sent = received = 0.0
        kept: list[Any] = [self.pair_id, last[i_sent], last[i_received]]
        for k in range(0, len(left), 3):
            if left[k] == pair_id:
                sent, received = left[k + 1], left[k + 2]
            else:
                kept += left[k : k + 3]
        self.left_pairs = tuple(kept[: 3 * LEFT_PAIRS])
        last[i_sent], last[i_received] = sent, received

    def _path(self, fields: tuple[Any, ...]) -> bool:
        """Take the sample's path; whether the relay state changed."""
        local: str | None = fields[_LOCAL_CANDIDATE]
        if local is None:
            return False
        protocol: str | None = fields[_RELAY_PROTOCOL]
        state = relay_state(local, protocol)
        if state != self.relay:
            self._fold()  # the held sample's bytes belong to the path before
        self.remote_relayed = fields[_REMOTE_CANDIDATE] == "relay" and state == "direct"
        self.turn_server = turn_server(fields[_TURN_URL]) if state != "direct" else None
        self.relay_protocol = protocol
        if state == self.relay:
            return False
        self.relay = state
        return True

    def _gauges(self, fields: tuple[Any, ...]) -> None:
        # Sums and counts for the minute's averages, in plain slots: this runs for every sample.
        # The values stay the frame's objects (``Any``): compiled, a value narrowed to float
        # or int would be boxed again, a new object, for each slot it is stored in.
        value: Any = fields[_RTT_MS]
        if value is not None:
            self.rtt_ms = value
            number: float = value
            self.rtt_sum += number
            self.rtt_count += 1
        value = fields[_AUDIO_JITTER_MS]
        if value is not None:
            self.audio_jitter_ms = value
            number = value
            self.audio_jitter_sum += number
            self.audio_jitter_count += 1
        value = fields[_VIDEO_JITTER_MS]
        if value is not None:
            self.video_jitter_ms = value
            number = value
            self.video_jitter_sum += number
            self.video_jitter_count += 1
        limitation: str | None = fields[_LIMITATION]
        if limitation is not None:
            self.limitation = limitation
        fec: bool | None = fields[_AUDIO_FEC]
        if fec is not None:
            self.audio_fec = fec
        value = fields[_FPS_IN]
        if value is not None:
            self.fps_in = value
            number = value
            self.fps_in_sum += number
            self.fps_in_count += 1
        value = fields[_FPS_OUT]
        if value is not None:
            self.fps_out = value
            number = value
            self.fps_out_sum += number
            self.fps_out_count += 1
        value = fields[_BWE]
        if value is not None:
            self.available_outgoing_bps = value
            number = value
            self.bwe_sum += number
            self.bwe_count += 1
        value = fields[_WIDTH_IN]
        if value is not None:
            self.width_in = self.minute_width_in = value
        value = fields[_HEIGHT_IN]
        if value is not None:
            self.height_in = self.minute_height_in = value
        value = fields[_WIDTH_OUT]
        if value is not None:
            self.width_out = self.minute_width_out = value
        value = fields[_HEIGHT_OUT]
        if value is not None:
            self.height_out = self.minute_height_out = value
        if fields[_LOCAL_CANDIDATE] is not None:  # ``_path`` took remote_relayed from it
            self.minute_remote_relayed = self.remote_relayed

    def totals(self) -> list[float]:
        """The bytes counted since the stream's boot began, ``TOTALS`` in order: its closed
        minutes' and the open one's. What a baseline or a reset left uncounted is not in them."""
        self._fold()
        last, minute = self.last, self.minute
        return [last[N_COUNTERS + k] + minute[i] for k, i in enumerate(_TOTALS_AT)]

    def relayed_open(self) -> float:
        """The bytes relayed in the open minute, a held sample's included (as in ``totals``)."""
        self._fold()
        return self.relayed_minute

    def take_pending(self) -> tuple[array[float], int]:
        """The deltas since the last call and how many samples brought them; resets them."""
        self._fold()
        self.recent = None  # a tick's reference, not a stream's memory
        pending, samples = self.pending, self.pending_samples
        self.pending = array("d", _ZEROS)
        self.pending_samples = 0
        return pending, samples

    def take_interval(self, now: float, bucket_s: float) -> tuple[array[float], float | None]:
        """The pending deltas (``take_pending``) and the seconds they cover
        (``interval_seconds``); None when no rate can be taken from them: there are none (a
        baseline alone), or they count from the stream's start. The next interval counts from
        the newest sample, at the daemon's ``now``."""
        pending, _samples = self.take_pending()
        seconds: float | None = None
        if self.interval_seq >= 0 and self.interval_seq != self.last_seq:
            seconds = interval_seconds(
                (self.ts - self.interval_ts) / 1000, now - self.interval_at, bucket_s
            )
        self.interval_seq, self.interval_ts, self.interval_at = self.last_seq, self.ts, now
        return pending, seconds

    def record_scores(self, mos: float | None, quality: float | None) -> None:
        """Fold one interval's scores into the minute's averages and minimums."""
        if mos is not None:
            self.mos_sum += mos
            self.mos_count += 1
            self.mos_min = mos if self.mos_min is None else min(self.mos_min, mos)
        if quality is not None:
            self.quality_sum += quality
            self.quality_count += 1
            self.quality_min = (
                quality if self.quality_min is None else min(self.quality_min, quality)
            )

    def close_minute(self) -> RtcMinuteRow | None:
        """The row of the open minute (None if no sample came in it); starts the next one."""
        self._fold()
        if self.minute_no < 0 or not self.minute_samples:
            self.minute_no = -1
            return None
        row = RtcMinuteRow(
            meeting=self.meeting,
            participant=self.participant,
            connection=self.connection,
            minute=self.minute_no * 60,
            segment=self.opened,
            samples=self.minute_samples,
            gaps=self.minute_gaps,
            resets=self.minute_resets,
            counters={name: self.minute[i] for i, name in enumerate(COUNTERS)},
            rtt_ms_avg=_mean(self.rtt_sum, self.rtt_count),
            audio_jitter_ms_avg=_mean(self.audio_jitter_sum, self.audio_jitter_count),
            video_jitter_ms_avg=_mean(self.video_jitter_sum, self.video_jitter_count),
            mos_avg=self.mos_sum / self.mos_count if self.mos_count else None,
            mos_min=self.mos_min,
            quality_avg=self.quality_sum / self.quality_count if self.quality_count else None,
            quality_min=self.quality_min,
            relay=self.relay,
            turn_server=self.turn_server,
            relayed_bytes=self.relayed_minute,
            fps_in_avg=_mean(self.fps_in_sum, self.fps_in_count),
            fps_out_avg=_mean(self.fps_out_sum, self.fps_out_count),
            width_in=self.minute_width_in,
            height_in=self.minute_height_in,
            width_out=self.minute_width_out,
            height_out=self.minute_height_out,
            bwe_bps_avg=_mean(self.bwe_sum, self.bwe_count),
            remote_relayed=self.minute_remote_relayed,
        )
        last, minute = self.last, self.minute
        for k, i in enumerate(_TOTALS_AT):
            last[N_COUNTERS + k] += minute[i]
        self.minute = array("d", _ZEROS)
        self.minute_no = -1
        self.minute_samples = self.minute_gaps = self.minute_resets = 0
        self.rtt_sum = self.audio_jitter_sum = self.video_jitter_sum = 0.0
        self.rtt_count = self.audio_jitter_count = self.video_jitter_count = 0
        self.mos_sum = self.quality_sum = 0.0
        self.mos_count = self.quality_count = 0
        self.mos_min = self.quality_min = None
        self.relayed_minute = 0.0
        self.fps_in_sum = self.fps_out_sum = self.bwe_sum = 0.0
        self.fps_in_count = self.fps_out_count = self.bwe_count = 0
        self.minute_width_in = self.minute_height_in = None
        self.minute_width_out = self.minute_height_out = None
        self.minute_remote_relayed = None
        return row


def interval_seconds(client_s: float, daemon_s: float, bucket_s: float) -> float:
    """The time an interval's deltas cover: ``client_s``, between the samples that bound them by
    their own ``ts``, unless it cannot be — not above 0 (the client's clock went back) or over
    twice the daemon's ``daemon_s`` and a bucket (it jumped forward; delivery alone moves the
    two apart by less) — then ``daemon_s``, the daemon's time since the interval before, at
    least a bucket."""
    daemon_s = max(daemon_s, bucket_s)
    return client_s if 0 < client_s <= 2 * daemon_s + bucket_s else daemon_s


def retire(retired: tuple[str, ...], boot: str) -> tuple[str, ...]:
    """The boots a stream has left, newest first, once it leaves ``boot`` as well: a sample of
    one of them is of an emitter that restarted since (``OLD_BOOT``), never a new stream."""
    return (boot, *retired[: RETIRED_BOOTS - 1])


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def _grew(counters: tuple[Any, ...], reference: tuple[Any, ...]) -> bool:
    """Whether ``counters`` has the same counters present as ``reference`` and none lower.

    One pass by index: compiled, a C loop with no tuple made (two ``itemgetter`` tuples and a
    ``map`` cost more)."""
    for i in range(N_COUNTERS):
        value, before = counters[i], reference[i]
        if value is None or before is None:
            if value is not before:
                return False
        elif value < before:
            return False
    return True


_TRANSIENT: Final = frozenset({"held", "recent"})
# What a stream's state gained after checkpoints and journals without it were written: at the
# end, so that an older state, shorter, still loads (``from_state``).
_ADDED_STATE: Final = ("interval_at", "interval_seq", "interval_ts", "ts", "left_pairs")
_STATE_SLOTS: Final = (
    *(
        name
        for name in _SLOTS
        if not name.startswith("ring") and name not in _TRANSIENT and name not in _ADDED_STATE
    ),
    *_ADDED_STATE,
)
