"""The aggregation engine: decoded frames in; live state, minute rows, events and alerts out.

``add(frames, now)`` is the per-frame path and does only counter arithmetic (``RtcStream``,
``HttpRoute``); ``tick(now)``, once per bucket (1 s), derives the interval's rates, MOS, video
score and quality for the streams that received samples — rates over the time their samples
cover, by the samples' own timestamps (``RtcStream.take_interval``), not over the time between
two ticks — writes the live rings, runs the lifecycle (silence, meeting end), closes minutes and
evaluates alerts. What it produces waits in ``output`` until the daemon drains it for storage
and fan-out.

Lifecycle: a participant joins on its first frame or a ``join`` event and leaves on ``leave``
or after ``participant_timeout_s`` without a sample; a meeting ends once it has had no
participant for ``meeting_end_after_s`` and then yields a ``MeetingSummary``.

Streams: an ``rtc`` sample's stream is its (meeting, participant, connection) and, once known,
its emitter's boot (the frame's ``boot``, else that of the WebSocket session it came in): a
sample of another boot of a known key begins the stream anew (``RtcStream.restart``: its open
minute row closes, the rest goes to a new segment) unless the stream has left that boot before
(a late sample of a restarted emitter: not applied). A sample without a boot continues whatever
stream there is. HTTP instances do the same with their ``boot`` (``HttpInstance``).

Accounting: every sample that is not applied is counted by kind and reason
(``samples_not_applied``: a duplicate ``q``, an old boot, a cap), and so is every first sample
of a stream taken as a baseline (``baseline_samples``: its stream began before the daemon saw
it). PROTOCOL.md §8 is the rule.

Openings: with ``openings`` a list (the daemon's journal is on), every stream that opens
leaves a record there — an ``rtc`` stream's state right after its first sample, an HTTP
instance as it was before it counted anything — for the daemon to journal before the next
batch; ``restore_openings`` adds the streams of such records to a restored engine
(collector/storage/journal.py).

Cardinality guard: a frame that would open a meeting, participant, connection, HTTP route or
HTTP instance over its cap is refused and counted by reason; nothing live is ever evicted to
make room. What goes quiet leaves instead: a participant after ``participant_timeout_s``, a
meeting after ``meeting_end_after_s``, an HTTP instance after ``http_idle_s`` without a sample,
and an HTTP route once its last instance has left, its last minute row closed first (as a
participant's rows close when it leaves), so the slot it frees holds no uncounted byte.

Pure: no I/O and no clock reads; every method takes the daemon's time. Never awaits anything.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from collector.aggregate import quality as q
from collector.aggregate.alerts import DEFAULT_RULES, AlertEngine, AlertEvent, AlertRule
from collector.aggregate.http import (
    BYTES_IN,
    BYTES_OUT,
    HIST,
    INSTANCE_CAP,
    NEW_INSTANCE,
    REQUESTS,
    STATUS,
    HttpInstance,
    HttpMinuteRow,
)
from collector.aggregate.http import HttpRoute as HttpRouteState
from collector.aggregate.percentiles import latency_summary
from collector.aggregate.records import LifecycleEvent, MeetingSummary, RtcMinuteRow
from collector.aggregate.rtc import (
    BASELINE,
    DUPLICATE,
    OLD_BOOT,
    RELAY_CHANGED,
    SAMPLE_BOOT,
    STREAM_KEY,
    C,
    RtcStream,
    sample_fields,
)
from collector.aggregate.settings import AggregateSettings
from collector.aggregate.steps import finish
from protocol import Event, Frame, HttpSample, RtcSample

AUDIO_BYTES_RECEIVED = C["audio_bytes_received"]
AUDIO_BYTES_SENT = C["audio_bytes_sent"]
AUDIO_PACKETS_LOST = C["audio_packets_lost"]
AUDIO_PACKETS_RECEIVED = C["audio_packets_received"]
AUDIO_PACKETS_SENT = C["audio_packets_sent"]
AUDIO_REMOTE_PACKETS_LOST = C["audio_remote_packets_lost"]
FREEZE_DURATION_S = C["freeze_duration_s"]
JITTER_BUFFER_DELAY_S = C["jitter_buffer_delay_s"]
JITTER_BUFFER_EMITTED = C["jitter_buffer_emitted"]
VIDEO_BYTES_RECEIVED = C["video_bytes_received"]
VIDEO_BYTES_SENT = C["video_bytes_sent"]
VIDEO_PACKETS_LOST = C["video_packets_lost"]
VIDEO_PACKETS_RECEIVED = C["video_packets_received"]
VIDEO_PACKETS_SENT = C["video_packets_sent"]
VIDEO_REMOTE_PACKETS_LOST = C["video_remote_packets_lost"]

# Why a sample was not applied, per kind: fixed sets (labels of /metrics).
NOT_APPLIED_REASONS = {
    "rtc": ("duplicate", "old_boot", "meeting_cap", "participant_cap", "connection_cap"),
    "http": ("duplicate", "old_boot", "http_route_cap", "http_instance_cap"),
}


@dataclass(slots=True)
class Participant:
    meeting: str
    participant: str
    joined_at: float
    streams: dict[str, RtcStream] = field(default_factory=dict)
    quality: float | None = None
    level: str | None = None
    reasons: tuple[str, ...] = ()
    relayed_bytes: float = 0.0
    interval_at: float | None = None  # the last tick that derived an interval of its streams


@dataclass
class Meeting:
    meeting: str
    started_at: float
    participants: dict[str, Participant] = field(default_factory=dict)
    peak_participants: int = 0
    empty_since: float | None = None
    bytes_up: float = 0.0
    bytes_down: float = 0.0
    relayed_by_server: dict[str, float] = field(default_factory=dict)
    quality_sum: float = 0.0
    quality_count: int = 0
    quality_worst: float | None = None
    seconds_by_level: dict[str, float] = field(default_factory=dict)

    @property
    def relayed_bytes(self) -> float:
        return sum(self.relayed_by_server.values())


@dataclass
class Output:
    """What the engine produced since the last drain."""

    rtc_rows: list[RtcMinuteRow] = field(default_factory=list)
    http_rows: list[HttpMinuteRow] = field(default_factory=list)
    events: list[LifecycleEvent] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    summaries: list[MeetingSummary] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Interval:
    """Values derived for one stream over one tick interval (None: not measured)."""

    send_bps: float
    recv_bps: float
    audio_recv_bps: float
    video_recv_bps: float
    loss_down: float | None
    loss_up: float | None
    jitter_buffer_ms: float | None
    freeze_fraction: float | None
    mos: float | None
    audio_r: float | None
    video: float | None
    audio_send_bps: float = 0.0
    video_send_bps: float = 0.0
    score: float | None = None  # the raw indicator, min(audio R, video score); None: neither


class Engine:
    """All live meetings, participants, streams and HTTP routes of one daemon."""

    def __init__(
        self, settings: AggregateSettings | None = None, rules: Iterable[AlertRule] = DEFAULT_RULES
    ) -> None:
        self.settings = settings or AggregateSettings()
        self.meetings: dict[str, Meeting] = {}
        self.streams: dict[tuple[str, ...], RtcStream] = {}  # (meeting, participant, connection)
        self.routes: dict[tuple[str, str, str], HttpRouteState] = {}
        self.alerts = AlertEngine(list(rules))
        self.output = Output()
        self.refused_by_reason: dict[str, int] = {}
        self.frames_by_kind: dict[str, int] = {}  # every frame added, by its tag
        self.samples_not_applied = {
            kind: dict.fromkeys(reasons, 0) for kind, reasons in NOT_APPLIED_REASONS.items()
        }
        self.baseline_samples = dict.fromkeys(NOT_APPLIED_REASONS, 0)
        self.http_instances = 0  # of all routes
        self.http_instances_expired = self.http_routes_expired = 0
        self.last_tick: float | None = None
        # Streams opened since the daemon last took them (``openings``), as records for its
        # journal; None: not recorded (no journal).
        self.openings: list[list[Any]] | None = None

    def set_rules(self, rules: Iterable[AlertRule], now: float) -> None:
        """Put new alert rules in force (a reload); clears of dropped rules go out as output."""
        self.output.alerts += self.alerts.set_rules(list(rules), now)

    # -- the per-frame path ---------------------------------------------------------------

    def add(self, frames: Iterable[Frame], now: float, boot: str | None = None) -> None:
        """Apply decoded frames received at daemon time ``now`` (seconds since the epoch);
        ``boot``: the boot nonce of the WebSocket session they came in, for ``rtc`` frames
        without their own."""
        minute_no = int(now // 60)
        bucket_no = int(now // self.settings.bucket_s)
        rtc = http = events = other = 0
        for frame in frames:
            kind = type(frame)
            if kind is RtcSample:
                rtc += 1
                self._rtc(frame, now, minute_no, boot)  # type: ignore[arg-type]
            elif kind is HttpSample:
                http += 1
                self._http(frame, now, bucket_no, minute_no)  # type: ignore[arg-type]
            elif kind is Event:
                events += 1
                self._event(frame, now)  # type: ignore[arg-type]
            else:
                other += 1  # hello: identifies a client, changes nothing here
        by_kind = self.frames_by_kind
        for tag, count in (("rtc", rtc), ("http", http), ("event", events), ("hello", other)):
            if count:
                by_kind[tag] = by_kind.get(tag, 0) + count

    def _rtc(self, frame: RtcSample, now: float, minute_no: int, session_boot: str | None) -> None:
        fields = sample_fields(frame)
        stream = self.streams.get(fields[STREAM_KEY])
        boot: str | None = fields[SAMPLE_BOOT]
        if boot is None:
            boot = session_boot
        if stream is None:
            stream = self._open_stream(
                frame.meeting, frame.participant, frame.connection, now, boot
            )
            if stream is None:
                return
            opened = True
        else:
            opened = False
            if boot is not None and boot != stream.boot and not self._boot(stream, boot, now):
                return
            if stream.minute_no != minute_no and stream.minute_samples:
                self._close_stream_minute(stream)
        stream.last_seen = now
        outcome = stream.add_fields(fields, minute_no)
        if outcome:
            self._rtc_outcome(stream, outcome, now)
        if opened and self.openings is not None:
            self._record_rtc_opening(stream)

    def _boot(self, stream: RtcStream, boot: str, now: float) -> bool:
        """A sample of ``stream`` says another ``boot`` than the stream's: the stream takes it
        (it knew none) or begins anew for it (True), or the sample is of a boot the stream has
        left, a restarted emitter's late datagram (False: not applied)."""
        if stream.boot is None:
            stream.boot = boot
            return True
        if boot in stream.retired:
            self._count("rtc", OLD_BOOT)
            return False
        self._close_stream_minute(stream)
        # A new segment, so that no row of the new boot's replaces one of the old boot's.
        stream.restart(boot, max(int(now * 1000), stream.opened + 1))
        return True

    def _count(self, kind: str, outcome: int) -> None:
        """Count a sample of ``kind`` taken as a baseline, or not applied."""
        if outcome & BASELINE:
            self.baseline_samples[kind] += 1
        elif outcome & DUPLICATE:
            self.samples_not_applied[kind]["duplicate"] += 1
        elif outcome & OLD_BOOT:
            self.samples_not_applied[kind]["old_boot"] += 1

    def _rtc_outcome(self, stream: RtcStream, outcome: int, now: float) -> None:
        self._count("rtc", outcome)
        if outcome & RELAY_CHANGED:  # never with DUPLICATE: a duplicate changes nothing
            self.output.events.append(
                LifecycleEvent(
                    kind="relay_changed",
                    meeting=stream.meeting,
                    participant=stream.participant,
                    connection=stream.connection,
                    at=now,
                    detail=stream.relay,
                )
            )

    def _http(self, sample: HttpSample, now: float, bucket_no: int, minute_no: int) -> None:
        key = (sample.service, sample.route, sample.method)
        route = self.routes.get(key)
        settings = self.settings
        full = self.http_instances >= settings.max_http_instances
        if route is None:
            if len(self.routes) >= settings.max_http_routes:
                self._refuse("http_route_cap", "http")
                return
            if full:  # the route's first instance could not join it
                self._refuse("http_instance_cap", "http")
                return
            service, path, method = key
            route = self.routes[key] = HttpRouteState(
                service, path, method, settings.window_buckets, int(now * 1000)
            )
        elif route.minute_no != minute_no and route.minute_no >= 0:
            self._close_route_minute(route)
        outcome = route.add(
            sample,
            now,
            bucket_no,
            minute_no,
            len(route.instances) if full else settings.max_http_instances_per_route,
        )
        if outcome == INSTANCE_CAP:
            self._refuse("http_instance_cap", "http")
            return
        if outcome & NEW_INSTANCE:
            self.http_instances += 1
        if outcome & ~NEW_INSTANCE:
            self._count("http", outcome)
        if outcome & NEW_INSTANCE and self.openings is not None:
            self._record_http_opening(route, sample.instance, outcome)

    def _event(self, event: Event, now: float) -> None:
        if event.kind == "leave":
            meeting = self.meetings.get(event.meeting)
            participant = meeting.participants.get(event.participant) if meeting else None
            if meeting is not None and participant is not None:
                self._leave(meeting, participant, now, "leave")
            return
        participant = self._participant(event.meeting, event.participant, now, event.kind, None)
        if participant is not None and event.kind != "join":
            self.output.events.append(
                LifecycleEvent(
                    kind="client_event",
                    meeting=event.meeting,
                    participant=event.participant,
                    connection=event.connection,
                    at=now,
                    detail=event.kind if event.value is None else f"{event.kind}:{event.value}",
                )
            )

    def _refuse(self, reason: str, sample: str | None) -> None:
        """Count a frame refused by a cap; ``sample``: the kind of sample it was, if any."""
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
        if sample is not None:
            self.samples_not_applied[sample][reason] += 1

    def _participant(
        self, meeting_id: str, participant_id: str, now: float, why: str, sample: str | None
    ) -> Participant | None:
        """The live participant, joining it (and starting its meeting) if needed; None when a
        cap refuses it (a frame of kind ``sample``, if a sample)."""
        meeting = self.meetings.get(meeting_id)
        if meeting is None:
            if len(self.meetings) >= self.settings.max_meetings:
                self._refuse("meeting_cap", sample)
                return None
            meeting = self.meetings[meeting_id] = Meeting(meeting_id, started_at=now)
            self.output.events.append(
                LifecycleEvent(kind="meeting_started", meeting=meeting_id, at=now)
            )
        participant = meeting.participants.get(participant_id)
        if participant is None:
            if len(meeting.participants) >= self.settings.max_participants_per_meeting:
                self._refuse("participant_cap", sample)
                return None
            participant = meeting.participants[participant_id] = Participant(
                meeting_id, participant_id, joined_at=now
            )
            meeting.peak_participants = max(meeting.peak_participants, len(meeting.participants))
            meeting.empty_since = None
            self.output.events.append(
                LifecycleEvent(
                    kind="joined",
                    meeting=meeting_id,
                    participant=participant_id,
                    at=now,
                    detail=why,
                )
            )
        return participant

    def _open_stream(
        self, meeting_id: str, participant_id: str, connection: str, now: float, boot: str | None
    ) -> RtcStream | None:
        participant = self._participant(meeting_id, participant_id, now, "first_frame", "rtc")
        if participant is None:
            return None
        if len(participant.streams) >= self.settings.max_connections_per_participant:
            self._refuse("connection_cap", "rtc")
            return None
        stream = RtcStream(
            meeting_id,
            participant_id,
            connection,
            self.settings.window_buckets,
            int(now * 1000),
            boot,
        )
        stream.interval_at = now  # a baseline's deltas count from now
        participant.streams[connection] = stream
        self.streams[(meeting_id, participant_id, connection)] = stream
        return stream

    # -- openings: what a journal keeps between two checkpoints ------------------------------

    def _record_rtc_opening(self, stream: RtcStream) -> None:
        """A new stream's whole state right after its first sample: the counters it has
        reached and what of them it counted, a consistent pair (the next sample is a delta
        from it), with when its meeting and participant began."""
        assert self.openings is not None
        meeting = self.meetings[stream.meeting]
        participant = meeting.participants[stream.participant]
        self.openings.append(["rtc", meeting.started_at, participant.joined_at, stream.state()])

    def _record_http_opening(self, route: HttpRouteState, name: str, outcome: int) -> None:
        """A new HTTP instance as it was before it counted anything: from 0 when its first
        sample counted in full, at its baseline otherwise (the route's minute holds what it
        counted, which a restored route does not)."""
        assert self.openings is not None
        instance = route.instances[name]
        baseline = bool(outcome & BASELINE)
        self.openings.append(
            [
                "http",
                route.service,
                route.route,
                route.method,
                route.opened,
                name,
                instance.boot,
                instance.last if baseline else None,
                instance.last_seq if baseline else -1,
            ]
        )

    def take_openings(self) -> list[list[Any]]:
        """The streams and HTTP instances opened since the last call (see ``openings``)."""
        taken = self.openings or []
        if self.openings is not None:
            self.openings = []
        return taken

    def restore_openings(self, records: Iterable[list[Any]], now: float) -> int:
        """Add the streams and HTTP instances of journal ``records`` (``openings``) that a
        restored snapshot lacks, or holds in an older incarnation (an rtc stream opened
        earlier); returns how many were added. Their next sample is a delta from what the
        record holds, so a restart loses none of what they sent."""
        window = self.settings.window_buckets
        added = 0
        for record in records:
            if record[0] == "rtc":
                _, started_at, joined_at, state = record
                stream = RtcStream.from_state(state, window)
                key = (stream.meeting, stream.participant, stream.connection)
                known = self.streams.get(key)
                if known is not None and known.opened >= stream.opened:
                    continue
                meeting = self.meetings.get(stream.meeting)
                if meeting is None:
                    meeting = self.meetings[stream.meeting] = Meeting(stream.meeting, started_at)
                participant = meeting.participants.get(stream.participant)
                if participant is None:
                    participant = Participant(stream.meeting, stream.participant, joined_at)
                    meeting.participants[stream.participant] = participant
                    meeting.peak_participants = max(
                        meeting.peak_participants, len(meeting.participants)
                    )
                    meeting.empty_since = None
                stream.last_seen = now
                participant.streams[stream.connection] = stream
                self.streams[key] = stream
                added += 1
            elif record[0] == "http":
                _, service, path, method, opened, name, boot, last, last_seq = record
                route = self.routes.get((service, path, method))
                if route is None:
                    route = HttpRouteState(service, path, method, window, opened)
                    self.routes[(service, path, method)] = route
                if name in route.instances:
                    continue
                instance = route.instances[name] = HttpInstance(last_seen=now)
                instance.boot, instance.last, instance.last_seq = boot, last, last_seq
                self.http_instances += 1
                added += 1
        return added

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Derive the interval's values, run the lifecycle, close minutes; once per bucket."""
        for _ in self.tick_steps(now):
            pass

    def tick_steps(self, now: float, participants_per_step: int = 50) -> Iterator[None]:
        """``tick`` in steps: yields after every ``participants_per_step`` participants, so that
        the daemon can let ingest run between steps: a whole tick over thousands of
        participants would hold the loop longer than the UDP receive buffer takes to fill
        under a flood (``bench aggregate`` prints the longest step, ``tick_step_ms``). Frames
        added between two steps are safe: they count in the next interval of their stream."""
        settings = self.settings
        self.last_tick = now
        bucket_no = int(now // settings.bucket_s)
        open_minute = int((now - settings.minute_grace_s) // 60)
        done = 0
        meeting_rules = self.alerts.has_rules("meeting")
        for meeting in list(self.meetings.values()):
            meeting_worst: dict[str, float] = {}
            for participant in list(meeting.participants.values()):
                if meeting.participants.get(participant.participant) is not participant:
                    continue  # left between two steps
                metrics = self._tick_participant(meeting, participant, now, bucket_no, open_minute)
                if meeting_rules and metrics is not None:
                    _fold_worst(meeting_worst, metrics)
                done += 1
                if done % participants_per_step == 0:
                    yield
            if meeting_worst and self.meetings.get(meeting.meeting) is meeting:
                self.output.alerts += self.alerts.observe(
                    (meeting.meeting,), "meeting", meeting_worst, now
                )
            if meeting.participants or self.meetings.get(meeting.meeting) is not meeting:
                continue
            if meeting.empty_since is None:
                meeting.empty_since = now
            elif now - meeting.empty_since >= settings.meeting_end_after_s:
                self._end_meeting(meeting, now)
        idle_before = now - settings.http_idle_s
        quiet: list[tuple[str, str, str]] = []
        for key, route in self.routes.items():
            if 0 <= route.minute_no < open_minute:
                self._close_route_minute(route)
            expired = route.expire(idle_before)
            self.http_instances -= expired
            self.http_instances_expired += expired
            if not route.instances:
                quiet.append(key)
        for key in quiet:
            self._expire_route(key)

    def _tick_participant(
        self,
        meeting: Meeting,
        participant: Participant,
        now: float,
        bucket_no: int,
        open_minute: int,
    ) -> dict[str, float | None] | None:
        """The participant's interval; the values its alert rules saw (None: no new interval,
        or it left).

        Its time at its quality level is the time its intervals cover: each tick that derives
        one adds the longest of them, no more than since its last such tick (streams sampled at
        different periods cover the same time once). Silence before a timeout, measured by
        nothing, is not counted."""
        last_seen = max(
            (s.last_seen for s in participant.streams.values()), default=participant.joined_at
        )
        if now - last_seen > self.settings.participant_timeout_s:
            self._leave(meeting, participant, now, "silence")
            return None
        worst: tuple[float, Interval, RtcStream] | None = None
        reasons: set[str] = set()
        covered = 0.0
        for stream in participant.streams.values():
            if stream.pending_samples:
                deltas, seconds = stream.take_interval(now, self.settings.bucket_s)
                if seconds is None:  # no rate from these deltas (they are in the minute row)
                    continue
                covered = max(covered, seconds)
                interval = derive_interval(deltas, stream, seconds, self.settings)
                self._record(meeting, participant, stream, interval, bucket_no)
                reasons.update(interval_reasons(stream, interval, self.settings))
                score = stream.quality if stream.quality is not None else 100.0
                if worst is None or score < worst[0]:
                    worst = (score, interval, stream)
            if 0 <= stream.minute_no < open_minute and stream.minute_samples:
                self._close_stream_minute(stream)
        if worst is None:
            return None
        if participant.interval_at is not None:
            covered = min(covered, now - participant.interval_at)
        participant.interval_at = now
        participant.quality = worst[2].quality
        participant.level = (
            q.level(participant.quality) if participant.quality is not None else None
        )
        participant.reasons = tuple(r for r in q.REASONS if r in reasons)
        if participant.quality is not None:
            meeting.quality_sum += participant.quality
            meeting.quality_count += 1
            if meeting.quality_worst is None or participant.quality < meeting.quality_worst:
                meeting.quality_worst = participant.quality
        if participant.level is not None:
            levels = meeting.seconds_by_level
            levels[participant.level] = levels.get(participant.level, 0.0) + covered
        metrics = _alert_metrics(worst[1], worst[2])
        self.output.alerts += self.alerts.observe(
            (meeting.meeting, participant.participant), "participant", metrics, now
        )
        return metrics

    def _record(
        self,
        meeting: Meeting,
        participant: Participant,
        stream: RtcStream,
        interval: Interval,
        bucket_no: int,
    ) -> None:
        stream.quality = smoothed_quality(stream.quality, interval)
        stream.record_scores(interval.mos, stream.quality if interval.score is not None else None)
        jitter = (
            stream.audio_jitter_ms if stream.audio_jitter_ms is not None else stream.video_jitter_ms
        )
        stream.ring_write(
            bucket_no,
            (
                interval.send_bps,
                interval.recv_bps,
                _pct(interval.loss_down),
                _pct(interval.loss_up),
                _nan(stream.rtt_ms),
                _nan(jitter),
                _nan(interval.mos),
                _nan(stream.quality),
            ),
        )

    # -- closing ----------------------------------------------------------------------------

    def _close_stream_minute(self, stream: RtcStream) -> None:
        row = stream.close_minute()
        if row is None:
            return
        self.output.rtc_rows.append(row)
        meeting = self.meetings.get(row.meeting)
        if meeting is None:
            return
        counters = row.counters
        meeting.bytes_up += counters["audio_bytes_sent"] + counters["video_bytes_sent"]
        meeting.bytes_down += counters["audio_bytes_received"] + counters["video_bytes_received"]
        if row.relayed_bytes and row.turn_server is not None:
            by_server = meeting.relayed_by_server
            by_server[row.turn_server] = by_server.get(row.turn_server, 0.0) + row.relayed_bytes
            participant = meeting.participants.get(row.participant)
            if participant is not None:
                participant.relayed_bytes += row.relayed_bytes

    def _close_route_minute(self, route: HttpRouteState) -> None:
        row = route.close_minute()
        if row is not None:
            self.output.http_rows.append(row)

    def _expire_route(self, key: tuple[str, str, str]) -> None:
        """Forget a route whose last instance has left; its open minute (if any: with
        ``http_idle_s`` over a minute and the grace, the tick has closed it) closes first."""
        route = self.routes.pop(key)
        self._close_route_minute(route)
        self.http_routes_expired += 1

    def _leave(self, meeting: Meeting, participant: Participant, now: float, why: str) -> None:
        for connection, stream in participant.streams.items():
            self._close_stream_minute(stream)
            del self.streams[(meeting.meeting, participant.participant, connection)]
        del meeting.participants[participant.participant]
        if not meeting.participants:
            meeting.empty_since = now
        self.output.alerts += self.alerts.forget((meeting.meeting, participant.participant), now)
        self.output.events.append(
            LifecycleEvent(
                kind="left",
                meeting=meeting.meeting,
                participant=participant.participant,
                at=now,
                detail=why,
            )
        )

    def _end_meeting(self, meeting: Meeting, now: float) -> None:
        del self.meetings[meeting.meeting]
        self.output.alerts += self.alerts.forget((meeting.meeting,), now)
        relayed = meeting.relayed_bytes
        self.output.summaries.append(
            MeetingSummary(
                meeting=meeting.meeting,
                started_at=meeting.started_at,
                ended_at=meeting.empty_since if meeting.empty_since is not None else now,
                peak_participants=meeting.peak_participants,
                bytes_up=meeting.bytes_up,
                bytes_down=meeting.bytes_down,
                relayed_bytes=relayed,
                relay_cost=relay_cost(relayed, self.settings.relay_price_per_gb),
                relayed_bytes_by_turn_server=dict(meeting.relayed_by_server),
                quality_avg=(
                    meeting.quality_sum / meeting.quality_count if meeting.quality_count else None
                ),
                quality_worst=meeting.quality_worst,
                seconds_by_level=dict(meeting.seconds_by_level),
            )
        )
        self.output.events.append(
            LifecycleEvent(kind="meeting_ended", meeting=meeting.meeting, at=now)
        )

    def close_minutes(self, now: float) -> None:
        """Close every open minute now (shutdown): rows of partial minutes, nothing ended.

        The rest of such a minute, after a restart, goes to a new segment (a separate row), so
        the row written now is never overwritten by the part that follows."""
        segment = int(now * 1000)
        for stream in self.streams.values():
            if stream.minute_samples:
                self._close_stream_minute(stream)
            stream.opened = segment
        for route in self.routes.values():
            self._close_route_minute(route)
            route.opened = segment

    # -- checkpoint ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state a restart needs to lose no counted byte: every stream's last counters and
        open accumulators, the lifecycle, the routes. Not the live rings nor alert windows."""
        return finish(self.snapshot_steps())

    def snapshot_steps(
        self, streams_per_step: int = 2_000
    ) -> Generator[None, None, dict[str, Any]]:
        """``snapshot`` in steps: yields after about ``streams_per_step`` streams or HTTP
        instances (a snapshot of 50,000 streams takes long enough to stall ingest), returns the
        snapshot. Frames added between steps are safe: a stream's own state is always whole,
        and rows written twice are complete-aggregate upserts."""
        meetings = []
        done = 0
        for m in list(self.meetings.values()):
            participants = []
            for p in list(m.participants.values()):
                participants.append(
                    {
                        **{k: getattr(p, k) for k in _PARTICIPANT_FIELDS},
                        "streams": [s.state() for s in p.streams.values()],
                    }
                )
                done += len(p.streams)
                if done >= streams_per_step:
                    done = 0
                    yield
            meetings.append(
                {**{k: getattr(m, k) for k in _MEETING_FIELDS}, "participants": participants}
            )
        routes = []
        for route in list(self.routes.values()):  # an HTTP instance weighs about a stream
            routes.append(route.state())
            done += len(route.instances)
            if done >= streams_per_step:
                done = 0
                yield
        return {
            "version": SNAPSHOT_VERSION,
            "last_tick": self.last_tick,
            "meetings": meetings,
            "routes": routes,
            "alerts": self.alerts.state(),
        }

    def restore(self, snapshot: dict[str, Any], now: float) -> None:
        """Load a ``snapshot`` into this (new, empty) engine. Streams count as seen ``now``: the
        time the daemon was down is not their silence. HTTP instances keep the silence they had
        at the snapshot's last tick, so that restarts never keep an idle one from expiring."""
        if snapshot.get("version") not in READABLE_SNAPSHOT_VERSIONS:
            raise ValueError(f"unknown checkpoint version {snapshot.get('version')!r}")
        window = self.settings.window_buckets
        self.last_tick = snapshot["last_tick"]
        for m in snapshot["meetings"]:
            meeting = Meeting(**{k: m[k] for k in _MEETING_FIELDS})
            self.meetings[meeting.meeting] = meeting
            for p in m["participants"]:
                # Fields a checkpoint of an earlier build lacks keep their defaults.
                fields = {k: p[k] for k in _PARTICIPANT_FIELDS if k in p}
                fields["reasons"] = tuple(fields["reasons"])  # MessagePack gave a list
                participant = Participant(**fields)
                meeting.participants[participant.participant] = participant
                for state in p["streams"]:
                    stream = RtcStream.from_state(state, window)
                    stream.last_seen = now
                    participant.streams[stream.connection] = stream
                    self.streams[(stream.meeting, stream.participant, stream.connection)] = stream
        for state in snapshot["routes"]:
            route = HttpRouteState.from_state(state, window, now, self.last_tick)
            self.routes[(route.service, route.route, route.method)] = route
            self.http_instances += len(route.instances)
        # Checkpoints of earlier builds hold no alerts: theirs are not restored.
        self.output.alerts += self.alerts.restore(snapshot.get("alerts", []), now)

    def drain(self) -> Output:
        """Hand over everything produced since the last drain."""
        output, self.output = self.output, Output()
        return output

    # -- views ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "meetings": len(self.meetings),
            "participants": sum(len(m.participants) for m in self.meetings.values()),
            "rtc_streams": len(self.streams),
            "http_routes": len(self.routes),
            "http_instances": self.http_instances,
            "http_routes_expired": self.http_routes_expired,
            "http_instances_expired": self.http_instances_expired,
            "max_http_routes": self.settings.max_http_routes,
            "max_http_instances_per_route": self.settings.max_http_instances_per_route,
            "max_http_instances": self.settings.max_http_instances,
            "http_idle_s": self.settings.http_idle_s,
            "frames": sum(self.frames_by_kind.values()),
            "refused_by_reason": dict(sorted(self.refused_by_reason.items())),
            "baseline_samples": dict(self.baseline_samples),
            "samples_not_applied": {
                kind: dict(reasons) for kind, reasons in self.samples_not_applied.items()
            },
            "alerts_active": len(self.alerts.active()),
        }

    def route_view(self, key: tuple[str, str, str], now: float) -> dict[str, Any] | None:
        """Live bandwidth and latency of one route over the window."""
        route = self.routes.get(key)
        if route is None:
            return None
        totals = route.window_totals(int(now // self.settings.bucket_s))
        seconds = self.settings.window_buckets * self.settings.bucket_s
        return {
            "requests_per_s": totals[REQUESTS] / seconds,
            "bytes_in_per_s": totals[BYTES_IN] / seconds,
            "bytes_out_per_s": totals[BYTES_OUT] / seconds,
            "status": totals[STATUS:BYTES_IN],
            "histogram": [int(c) for c in totals[HIST:]],
            "latency": msgspec.to_builtins(latency_summary([int(c) for c in totals[HIST:]])),
        }


# -- one stream's interval: pure functions of its deltas and gauges --------------------------
# The engine's tick calls them for every stream with new samples; the browser client computes
# the same for the page (clients/browser/bwmon.js ``localView``), checked against golden
# vectors that tests/aggregate/quality_vectors.py makes with these very functions.


def derive_interval(
    p: Sequence[float], stream: RtcStream, dt: float, settings: AggregateSettings
) -> Interval:
    """The interval's rates, loss, jitter buffer, freeze share and scores from its counter
    deltas ``p`` (``COUNTERS`` order, ``RtcStream.take_interval``) over the ``dt`` seconds they
    cover, with the stream's gauges (RTT, FEC, received fps, limitation) as they stand."""
    audio_recv_bps = 8 * p[AUDIO_BYTES_RECEIVED] / dt
    video_recv_bps = 8 * p[VIDEO_BYTES_RECEIVED] / dt
    audio_send_bps = 8 * p[AUDIO_BYTES_SENT] / dt
    video_send_bps = 8 * p[VIDEO_BYTES_SENT] / dt
    lost = p[AUDIO_PACKETS_LOST] + p[VIDEO_PACKETS_LOST]
    received = p[AUDIO_PACKETS_RECEIVED] + p[VIDEO_PACKETS_RECEIVED]
    loss_down = lost / (lost + received) if lost + received > 0 else None
    sent = p[AUDIO_PACKETS_SENT] + p[VIDEO_PACKETS_SENT]
    lost_up = p[AUDIO_REMOTE_PACKETS_LOST] + p[VIDEO_REMOTE_PACKETS_LOST]
    loss_up = min(1.0, lost_up / sent) if sent > 0 else None
    emitted = p[JITTER_BUFFER_EMITTED]
    jb_ms = 1000 * p[JITTER_BUFFER_DELAY_S] / emitted if emitted > 0 else None
    freeze = min(1.0, p[FREEZE_DURATION_S] / dt)
    rtt = stream.rtt_ms or 0.0
    audio_r = mos = None
    if audio_recv_bps > 0:
        audio_r = q.r_factor(
            loss_down or 0.0, rtt, jb_ms or 0.0, audio_recv_bps, fec=stream.audio_fec
        )
        mos = q.mos_from_r(audio_r)
    video = None
    if video_recv_bps > 0:
        v_lost, v_received = p[VIDEO_PACKETS_LOST], p[VIDEO_PACKETS_RECEIVED]
        video = q.video_score(
            loss_fraction=v_lost / (v_lost + v_received) if v_lost + v_received else 0.0,
            rtt_ms=rtt,
            bitrate_bps=video_recv_bps,
            expected_bitrate_bps=settings.expected_video_bps,
            fps=stream.fps_in if stream.fps_in is not None else settings.expected_fps,
            expected_fps=settings.expected_fps,
            freeze_fraction=freeze,
            limited_fraction=1.0 if stream.limitation in ("cpu", "bandwidth") else 0.0,
        )
    return Interval(
        send_bps=8 * (p[AUDIO_BYTES_SENT] + p[VIDEO_BYTES_SENT]) / dt,
        recv_bps=audio_recv_bps + video_recv_bps,
        audio_recv_bps=audio_recv_bps,
        video_recv_bps=video_recv_bps,
        loss_down=loss_down,
        loss_up=loss_up,
        jitter_buffer_ms=jb_ms,
        freeze_fraction=freeze,
        mos=mos,
        audio_r=audio_r,
        video=video,
        audio_send_bps=audio_send_bps,
        video_send_bps=video_send_bps,
        score=q.quality_score(audio_r, video),
    )


def interval_reasons(
    stream: RtcStream, interval: Interval, settings: AggregateSettings
) -> tuple[str, ...]:
    """The reason codes of the interval (``quality.quality_reasons``): loss the worse of the
    two directions, the path's relay protocol only while this client relays."""
    loss = max(interval.loss_down or 0.0, interval.loss_up or 0.0)
    measured = interval.loss_down is not None or interval.loss_up is not None
    return q.quality_reasons(
        loss_fraction=loss if measured else None,
        rtt_ms=stream.rtt_ms,
        jitter_ms=stream.audio_jitter_ms,
        bitrate_bps=interval.video_recv_bps if interval.video_recv_bps > 0 else None,
        expected_bitrate_bps=settings.expected_video_bps,
        limitation=stream.limitation,
        relay_protocol=stream.relay_protocol if stream.relay != "direct" else None,
        freeze_fraction=interval.freeze_fraction,
    )


def smoothed_quality(previous: float | None, interval: Interval) -> float | None:
    """The stream's smoothed quality after ``interval``; ``previous`` stands when the interval
    has no score (nothing received)."""
    return previous if interval.score is None else q.smooth(previous, interval.score)


def relay_cost(relayed_bytes: float, price_per_gb: float) -> float:
    """Cost of relayed volume at a price per GB (10⁹ bytes, as TURN providers bill)."""
    return relayed_bytes / 1e9 * price_per_gb


def _alert_metrics(interval: Interval, stream: RtcStream) -> dict[str, float | None]:
    loss = [x for x in (interval.loss_down, interval.loss_up) if x is not None]
    return {
        "rtt_ms": stream.rtt_ms,
        "jitter_ms": stream.audio_jitter_ms,
        "loss_pct": 100 * max(loss) if loss else None,
        "mos": interval.mos,
        "relay_tcp": 1.0 if stream.relay in ("turn-tcp", "turn-tls") else 0.0,
    }


def _fold_worst(worst: dict[str, float], metrics: Mapping[str, float | None]) -> None:
    """Fold one participant's alert metrics into its meeting's: per metric the worst value,
    the lowest MOS and the highest of the others."""
    for metric, value in metrics.items():
        if value is None or math.isnan(value):
            continue
        known = worst.get(metric)
        if known is None:
            worst[metric] = value
        elif metric == "mos":
            worst[metric] = min(known, value)
        else:
            worst[metric] = max(known, value)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _pct(fraction: float | None) -> float:
    return math.nan if fraction is None else 100 * fraction


SNAPSHOT_VERSION = 6  # a new one whenever a stream's or an HTTP instance's state changes
# 3: HTTP instances without the time of their last sample (restored as heard from now).
# 4: streams without where their interval counts from, participants without their last
# interval's tick (their first interval after the restore has no rate).
# 5: streams without their totals (they count from the restore on) nor the pairs they left (a
# switch back to one counts it in full).
READABLE_SNAPSHOT_VERSIONS = (3, 4, 5, SNAPSHOT_VERSION)
_MEETING_FIELDS = tuple(f for f in Meeting.__dataclass_fields__ if f != "participants")
_PARTICIPANT_FIELDS = tuple(f for f in Participant.__dataclass_fields__ if f != "streams")
