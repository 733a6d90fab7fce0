"""What each topic shows: the engine's live state as topic entities (PROTOCOL.md §12.3).

* ``meetings``: one entity per live meeting (participants, bitrate up and down, worst quality
  level, relay share and cost, open alerts);
* ``meeting:<id>``: one entity per participant with its current values, one per point of its
  live window series (``<participant>@<t>``, at most ``MAX_POINTS``), and one per stream (a
  connection: ``<participant> <connection>``) with its boot, last ``q`` and the bytes counted
  since its boot began (``RtcStream.totals``) — an entity of its own, so that a delta carries
  only that stream's ``q`` and totals, not every connection of the participant;
* ``http``: one entity per route (``<service> <method> <route>``) with rates and percentiles;
* ``alerts``: one entity per open alert.

Current values are means over the last ``RECENT_BUCKETS`` ticks (frame rates, resolutions and
the bandwidth estimate: the last value a sample carried) and rounded to what a dashboard shows
(3 significant digits for rates): samples arrive at their own rhythm, and a value that jitters
in its fourth digit would put every entity in every delta.

Each entity is this daemon's part of it: what it aggregates itself, plus the hidden fields that
merging the parts of several daemons needs (``_relayed``: relayed participants of a meeting;
``_hist``: a route's latency histogram over the window); ``collector.fanout.parts`` merges them
and drops the hidden ones before a subscriber sees anything.

Pure: reads the engine, returns plain dicts; never awaits, never reads the clock.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from typing import Any, Final

import msgspec

from collector.aggregate import quality as q
from collector.aggregate.alerts import AlertEvent
from collector.aggregate.engine import Engine, Meeting, Participant, relay_cost
from collector.aggregate.rtc import RING_FIELDS, RtcStream
from collector.aggregate.steps import finish
from collector.fanout.parts import RELAY_RANK, percentile_fields, rate, rounded
from protocol.subscribe import Entities

RECENT_BUCKETS: Final = 5
MAX_POINTS: Final = 60

SEND, RECV, LOSS_DOWN, LOSS_UP, RTT, JITTER, MOS, QUALITY = range(len(RING_FIELDS))
_RATES: Final = (SEND, RECV)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _worst(values: Iterable[float | None], lowest: bool = False) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if lowest else max(present)


def _stream_recent(stream: RtcStream, now_bucket: int) -> list[float | None]:
    """Per ring field, the mean over the stream's last ``RECENT_BUCKETS`` ticks."""
    rows = [v for _, v in stream.ring_rows(now_bucket - RECENT_BUCKETS + 1, now_bucket)]
    return [_mean(row[k] for row in rows) for k in range(len(RING_FIELDS))]


def _participant_recent(participant: Participant, now_bucket: int) -> list[float | None]:
    """A participant's current values over its connections: rates summed, the worst of the
    rest (the highest loss, RTT and jitter, the lowest MOS and quality)."""
    per_stream = [_stream_recent(s, now_bucket) for s in participant.streams.values()]
    values: list[float | None] = []
    for k in range(len(RING_FIELDS)):
        column = [row[k] for row in per_stream]
        if k in (SEND, RECV):
            present = [v for v in column if v is not None]
            values.append(sum(present) if present else None)
        else:
            values.append(_worst(column, lowest=k in (MOS, QUALITY)))
    return values


def _relay(participant: Participant) -> str:
    return max(
        (s.relay for s in participant.streams.values()),
        key=lambda r: RELAY_RANK.get(r, 0),
        default="direct",
    )


def _video(participant: Participant) -> dict[str, Any]:
    """A participant's last video gauges and bandwidth estimate over its connections: the
    lowest frame rates, the smallest resolutions (width and height of one connection), the
    bandwidth estimates summed (as bitrates are), remote-relayed if any connection's peer is."""
    streams = participant.streams.values()
    width_in, height_in = _smallest((s.width_in, s.height_in) for s in streams)
    width_out, height_out = _smallest((s.width_out, s.height_out) for s in streams)
    estimates = [s.available_outgoing_bps for s in streams if s.available_outgoing_bps is not None]
    fps_in = _worst((s.fps_in for s in streams), lowest=True)
    fps_out = _worst((s.fps_out for s in streams), lowest=True)
    return {
        "fps_in": rounded(fps_in, 0),
        "fps_out": rounded(fps_out, 0),
        "width_in": width_in,
        "height_in": height_in,
        "width_out": width_out,
        "height_out": height_out,
        "bwe_bps": rate(sum(estimates)) if estimates else None,
        "remote_relayed": any(s.remote_relayed for s in streams),
    }


def _smallest(
    resolutions: Iterable[tuple[int | None, int | None]],
) -> tuple[int | None, int | None]:
    """The resolution with the fewest pixels of those known whole, else (None, None)."""
    known = [(w * h, w, h) for w, h in resolutions if w is not None and h is not None]
    if not known:
        return None, None
    _, width, height = min(known)
    return width, height


def _relayed_bytes(meeting: Meeting) -> float:
    """Relayed bytes of closed minutes plus those of the open minutes."""
    open_minutes = sum(
        s.relayed_open() for p in meeting.participants.values() for s in p.streams.values()
    )
    return meeting.relayed_bytes + open_minutes


def _alerts_by_meeting(active: Iterable[AlertEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for alert in active:
        counts[alert.key[0]] = counts.get(alert.key[0], 0) + 1
    return counts


def meetings_topic(engine: Engine, now: float) -> Entities:
    return finish(meetings_topic_steps(engine, now))


def meetings_topic_steps(
    engine: Engine, now: float, streams_per_step: int = 2_000
) -> Generator[None, None, Entities]:
    """``meetings_topic`` in steps: yields after about ``streams_per_step`` streams (50,000
    streams take long enough to stall ingest), returns the entities. Meetings that end between
    two steps are left out."""
    first = int(now // engine.settings.bucket_s) - RECENT_BUCKETS + 1
    last = first + RECENT_BUCKETS - 1
    alerts = _alerts_by_meeting(engine.alerts.active())
    price = engine.settings.relay_price_per_gb
    entities: Entities = {}
    done = 0
    for meeting in list(engine.meetings.values()):
        up = down = 0.0
        worst: float | None = None
        relayed = 0
        for participant in meeting.participants.values():
            relay = False
            for stream in participant.streams.values():
                send, recv = stream.ring_means(first, last, _RATES)
                up += send or 0.0
                down += recv or 0.0
                relay = relay or stream.relay != "direct"
            relayed += relay
            quality = participant.quality
            if quality is not None and (worst is None or quality < worst):
                worst = quality
            done += len(participant.streams)
        count = len(meeting.participants)
        entities[meeting.meeting] = {
            "participants": count,
            "up_bps": rate(up),
            "down_bps": rate(down),
            "quality": None if worst is None else round(worst),
            "level": None if worst is None else q.level(worst),
            "relay_share": round(relayed / count, 2) if count else 0.0,
            "_relayed": relayed,
            "relay_cost": round(relay_cost(_relayed_bytes(meeting), price), 4),
            "alerts": alerts.get(meeting.meeting, 0),
            "started_at": meeting.started_at,
        }
        if done >= streams_per_step:
            done = 0
            yield
    return entities


def meeting_topic(engine: Engine, meeting_id: str, now: float) -> Entities:
    """Participants and their series; empty while the meeting is not live here."""
    meeting = engine.meetings.get(meeting_id)
    if meeting is None:
        return {}
    settings = engine.settings
    now_bucket = int(now // settings.bucket_s)
    window = settings.window_buckets
    per_point = max(1, math.ceil(window / MAX_POINTS))
    entities: Entities = {}
    for participant in meeting.participants.values():
        values = _participant_recent(participant, now_bucket)
        pid = participant.participant
        entities[pid] = {
            "kind": "participant",
            "joined_at": participant.joined_at,
            "up_bps": rate(values[SEND]),
            "down_bps": rate(values[RECV]),
            "loss_down_pct": rounded(values[LOSS_DOWN], 1),
            "loss_up_pct": rounded(values[LOSS_UP], 1),
            "rtt_ms": rounded(values[RTT], 0),
            "jitter_ms": rounded(values[JITTER], 1),
            "mos": rounded(values[MOS], 2),
            "quality": rounded(participant.quality, 0),
            "level": participant.level,
            "reasons": list(participant.reasons),
            "relay": _relay(participant),
            "turn_server": next(
                (s.turn_server for s in participant.streams.values() if s.turn_server), None
            ),
            "relayed_bytes": participant.relayed_bytes
            + sum(s.relayed_open() for s in participant.streams.values()),
            "connections": len(participant.streams),
            **_video(participant),
        }
        entities.update(_series(participant, now_bucket, window, per_point, settings.bucket_s))
        for stream in participant.streams.values():
            entities[stream_id(pid, stream.connection)] = {
                "kind": "stream",
                "participant": pid,
                "connection": stream.connection,
                "boot": stream.boot,
                "q": stream.last_seq,
                "bytes": [round(total) for total in stream.totals()],
            }
    return entities


def _series(
    participant: Participant, now_bucket: int, window: int, per_point: int, bucket_s: float
) -> Entities:
    """The live window downsampled to points of ``per_point`` buckets: rates summed over
    connections and averaged over the point, the rest the worst connection's mean."""
    last_point = now_bucket // per_point
    first_bucket = (last_point - math.ceil(window / per_point) + 1) * per_point
    points: dict[int, list[list[tuple[float | None, ...]]]] = {}  # per connection: rows
    for stream in participant.streams.values():
        mine: dict[int, list[tuple[float | None, ...]]] = {}
        for bucket, row in stream.ring_rows(first_bucket, now_bucket):
            mine.setdefault(bucket // per_point, []).append(row)
        for point, rows_of_stream in mine.items():
            points.setdefault(point, []).append(rows_of_stream)
    entities: Entities = {}
    pid = participant.participant
    for point, streams in sorted(points.items()):
        send = sum(_mean(r[SEND] for r in rows) or 0.0 for rows in streams)
        recv = sum(_mean(r[RECV] for r in rows) or 0.0 for rows in streams)
        rows = [row for rows_of_stream in streams for row in rows_of_stream]
        loss = _worst([_worst([r[LOSS_DOWN], r[LOSS_UP]]) for r in rows])
        t = point * per_point * bucket_s
        entities[point_id(pid, t)] = {
            "kind": "point",
            "participant": pid,
            "t": t,
            "up_bps": rate(send),
            "down_bps": rate(recv),
            "loss_pct": rounded(loss, 1),
            "rtt_ms": rounded(_worst(r[RTT] for r in rows), 0),
            "jitter_ms": rounded(_worst(r[JITTER] for r in rows), 1),
            "mos": rounded(_worst((r[MOS] for r in rows), lowest=True), 2),
            "quality": rounded(_worst((r[QUALITY] for r in rows), lowest=True), 0),
        }
    return entities


def point_id(participant: str, t: float) -> str:
    """``<participant>@<t>``: ``t`` in seconds, in decimal to the millisecond, no exponent and
    no trailing zeros (``alice@1796550000``, ``alice@1796550000.5``): exact for epoch times."""
    return f"{participant}@{f'{t:.3f}'.rstrip('0').rstrip('.')}"


def stream_id(participant: str, connection: str) -> str:
    """``<participant> <connection>``: identifiers hold no space (PROTOCOL.md §4.1)."""
    return f"{participant} {connection}"


def http_topic(engine: Engine, now: float) -> Entities:
    window_s = engine.settings.window_buckets * engine.settings.bucket_s
    entities: Entities = {}
    for key in engine.routes:
        view = engine.route_view(key, now)
        if view is None:
            continue
        service, route, method = key
        entities[f"{service} {method} {route}"] = {
            "service": service,
            "route": route,
            "method": method,
            "requests_per_s": rate(view["requests_per_s"]),
            "bytes_in_per_s": rate(view["bytes_in_per_s"]),
            "bytes_out_per_s": rate(view["bytes_out_per_s"]),
            "status_per_s": [rate(s / window_s) for s in view["status"]],
            **percentile_fields(view["histogram"]),
            "_hist": view["histogram"],
        }
    return entities


def alert_entity(alert: AlertEvent) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.to_builtins(alert)
    fields["key"] = list(alert.key)
    return fields


def alerts_topic(engine: Engine) -> Entities:
    return {alert.id: alert_entity(alert) for alert in engine.alerts.active()}
