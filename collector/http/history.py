"""``GET /api/series``: a meeting's (or one participant's) history for a chart, downsampled
on the daemon to the chart's width (docs/API.md "Series").

Two sources, joined per participant: the stored minute rows (``rtc_minute``, read page by page
through ``collector.storage.export``) and, after a participant's last stored minute, the live
window series of the ``meeting:<id>`` topic (the same points ``/api/meetings/{id}`` shows,
from the channel, so every daemon on one Redis answers alike). Each metric's points then go
through ``collector.http.series.downsample``.

A stored minute becomes one point at its start, like a live point: rates from the byte counters
summed over the participant's connections (and segments) over 60 s, loss the worse of download
(lost / (received + lost)) and upload (remote lost / sent), RTT and jitter the worst
connection's mean, MOS and quality the worst connection's mean with the lowest ``*_min`` of the
minute as the point's low, so a dip inside a minute reaches the bucket's min. The meeting's
series sums its participants' rates at each point's time and pools the other metrics.

Parses parameters, reads, shapes; never writes to the engine or the database.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from collector.fanout.channel import ChannelUnavailable
from collector.http.series import Bucket, Point, downsample, plain
from collector.http.server import Request, Response
from collector.storage.export import Readable, Selection, export_rows, parse_time
from collector.storage.schema import RTC_MINUTE, Row
from collector.storage.sinks import StorageError, StorageUnavailable
from protocol.subscribe import is_topic

if TYPE_CHECKING:
    from collector.http.api import Api

METRICS: Final = ("up_bps", "down_bps", "loss_pct", "rtt_ms", "jitter_ms", "mos", "quality")
SUMMED: Final = frozenset({"up_bps", "down_bps"})  # the meeting's is its participants' sum
PARAMETERS: Final = frozenset({"meeting", "participant", "from", "to", "points"})
DEFAULT_POINTS: Final = 300
MAX_POINTS: Final = 2_000
DEFAULT_SPAN_S: Final = 3_600.0
# A week of minute rows of one meeting is read on the event loop that also drains UDP (DESIGN
# §4), page by page; a longer span is a job for bwmon export.
MAX_SPAN_S: Final = 7 * 86_400.0
PAGE_ROWS: Final = 1_000
# The rows of the range are held while they are folded into minutes: past this many, the
# request is refused rather than the daemon's memory spent on one chart.
MAX_ROWS = 100_000
MINUTE_S: Final = 60.0

_COLUMN = {name: i for i, name in enumerate(RTC_MINUTE.columns)}
_SENT = ("audio_bytes_sent", "video_bytes_sent")
_RECEIVED = ("audio_bytes_received", "video_bytes_received")
_LOST = ("audio_packets_lost", "video_packets_lost")
_PACKETS_RECEIVED = ("audio_packets_received", "video_packets_received")
_REMOTE_LOST = ("audio_remote_packets_lost", "video_remote_packets_lost")
_PACKETS_SENT = ("audio_packets_sent", "video_packets_sent")


class BadParameter(ValueError):
    pass


def _worst(values: Iterable[Any], lowest: bool = False) -> float | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return min(present) if lowest else max(present)


def _sum(rows: list[Row], columns: Iterable[str]) -> float:
    return float(sum(row[_COLUMN[c]] or 0 for row in rows for c in columns))


def _share(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole > 0 else None


def minute_points(rows: list[Row]) -> dict[str, Point | None]:
    """One participant's minute (its rows of every connection and segment) as one point per
    metric (None: not measured in the minute)."""
    t = float(rows[0][_COLUMN["minute"]])
    lost = _sum(rows, _LOST)
    remote_lost = _sum(rows, _REMOTE_LOST)
    loss = _worst(
        [
            _share(lost, lost + _sum(rows, _PACKETS_RECEIVED)),
            _share(remote_lost, _sum(rows, _PACKETS_SENT)),
        ]
    )
    jitters = [r[_COLUMN[c]] for r in rows for c in ("audio_jitter_ms_avg", "video_jitter_ms_avg")]
    values: dict[str, float | None] = {
        "up_bps": 8 * _sum(rows, _SENT) / MINUTE_S,
        "down_bps": 8 * _sum(rows, _RECEIVED) / MINUTE_S,
        "loss_pct": loss,
        "rtt_ms": _worst(r[_COLUMN["rtt_ms_avg"]] for r in rows),
        "jitter_ms": _worst(jitters),
    }
    points: dict[str, Point | None] = {
        m: None if v is None else plain(t, v) for m, v in values.items()
    }
    for metric in ("mos", "quality"):
        mean = _worst((r[_COLUMN[f"{metric}_avg"]] for r in rows), lowest=True)
        low = _worst((r[_COLUMN[f"{metric}_min"]] for r in rows), lowest=True)
        points[metric] = (
            None if mean is None else Point(t, mean, mean if low is None else min(low, mean), mean)
        )
    return points


def live_points(point: dict[str, Any]) -> dict[str, Point | None]:
    """A live window point (a ``meeting:<id>`` entity of kind ``point``) per metric."""
    t = float(point["t"])
    return {m: None if point.get(m) is None else plain(t, float(point[m])) for m in METRICS}


def meeting_points(
    per_participant: dict[str, dict[str, list[Point]]],
) -> dict[str, list[Point]]:
    """The meeting's points: rates summed over participants at each time, the rest pooled."""
    out: dict[str, list[Point]] = {}
    for metric in METRICS:
        every = [p for points in per_participant.values() for p in points.get(metric, [])]
        if metric not in SUMMED:
            out[metric] = every
            continue
        sums: dict[float, float] = defaultdict(float)
        for p in every:
            sums[p.t] += p.value
        out[metric] = [plain(t, v) for t, v in sums.items()]
    return out


def shape(buckets: list[Bucket | None]) -> dict[str, list[float | None]]:
    """Columns for a chart: ``min``, ``mean``, ``max``, null where a bucket has no point."""
    return {
        key: [None if b is None else round(getattr(b, key), 3) for b in buckets]
        for key in ("min", "mean", "max")
    }


def _parse(query: Mapping[str, str]) -> tuple[str, str | None, float | None, float | None, int]:
    unknown = sorted(set(query) - PARAMETERS)
    if unknown:
        raise BadParameter(f"unknown parameter: {', '.join(unknown)}")
    meeting = query.get("meeting")
    if not meeting:
        raise BadParameter("meeting is required")
    if not is_topic(f"meeting:{meeting}"):
        raise BadParameter(f"meeting {meeting!r} is not an identifier (PROTOCOL.md §4.1)")
    participant = query.get("participant")
    if participant == "":
        raise BadParameter("participant is empty")
    try:
        start = None if "from" not in query else parse_time(query["from"])
        end = None if "to" not in query else parse_time(query["to"])
    except ValueError as exc:
        raise BadParameter(f"from/to: {exc}") from None
    text = query.get("points", str(DEFAULT_POINTS))
    try:
        points = int(text)
    except ValueError:
        raise BadParameter(f"points {text!r} is not an integer") from None
    if not 1 <= points <= MAX_POINTS:
        raise BadParameter(f"points must be 1 to {MAX_POINTS}, not {points}")
    return meeting, participant, start, end, points


def _span(start: float | None, end: float | None, now: float) -> tuple[float, float]:
    """``to`` defaults to now, ``from`` to an hour before ``to``."""
    if end is None:
        end = now
    if start is None:
        start = end - DEFAULT_SPAN_S
    if not end > start:
        raise BadParameter("to must be after from")
    if end - start > MAX_SPAN_S:
        raise BadParameter(f"to - from is at most {MAX_SPAN_S:.0f} s")
    return start, end


async def _stored(
    sink: Readable, meeting: str, participant: str | None, start: float, end: float
) -> dict[str, list[tuple[float, dict[str, Point | None]]]]:
    """Per participant, its stored minutes in [start, end): (minute, points), in time order."""
    selection = Selection("rtc", start=start, end=end, meeting=meeting, participant=participant)
    minutes: dict[tuple[str, float], list[Row]] = defaultdict(list)
    pages = export_rows(sink, selection, page_rows=PAGE_ROWS)
    read = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            read += len(page)
            if read > MAX_ROWS:
                raise BadParameter(
                    f"more than {MAX_ROWS} stored rows in the range: "
                    "narrow from/to or ask for one participant"
                )
            for row in page:
                key = (row[_COLUMN["participant"]], float(row[_COLUMN["minute"]]))
                minutes[key].append(row)
    out: dict[str, list[tuple[float, dict[str, Point | None]]]] = defaultdict(list)
    for (pid, minute), rows in sorted(minutes.items()):
        out[pid].append((minute, minute_points(rows)))
    return out


async def series(api: Api, request: Request) -> Response:
    """``{"meeting", "participant", "from", "to", "points", "step", "t": [...], "series":
    {<metric>: {"min": [...], "mean": [...], "max": [...]}}}``."""
    query = request.query
    refused = api.authorize(request, query.get("meeting") or None)
    if refused is not None:
        return refused
    try:
        meeting, participant, start, end, n = _parse(query)
    except BadParameter as exc:
        return Response.error(400, str(exc))
    topic = f"meeting:{meeting}"
    try:
        await api.prepare(topic)
        snapshot = await api.channel.snapshot(topic)
    except ChannelUnavailable as exc:
        return Response.error(503, f"channel: {exc}")
    live = [
        e
        for e in snapshot.entities.values()
        if e.get("kind") == "point" and (participant is None or e.get("participant") == participant)
    ]
    try:
        start, end = _span(start, end, snapshot.at)
    except BadParameter as exc:
        return Response.error(400, str(exc))
    stored: dict[str, list[tuple[float, dict[str, Point | None]]]] = {}
    if api.sink is not None:
        try:
            stored = await _stored(api.sink, meeting, participant, start, end)
        except BadParameter as exc:
            return Response.error(400, str(exc))
        except StorageError as exc:
            status = 503 if isinstance(exc, StorageUnavailable) else 500
            return Response.error(status, f"storage: {exc}")
    per_participant: dict[str, dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    stored_until: dict[str, float] = {}
    for pid, minutes in stored.items():
        for _minute, of_minute in minutes:
            for metric, point in of_minute.items():
                if point is not None:
                    per_participant[pid][metric].append(point)
        stored_until[pid] = minutes[-1][0] + MINUTE_S
    for entity in live:
        pid = entity["participant"]
        if float(entity["t"]) < stored_until.get(pid, -math.inf):
            continue  # the minute is stored: its row counts, not the ring's points
        for metric, point in live_points(entity).items():
            if point is not None:
                per_participant[pid][metric].append(point)
    points = meeting_points(per_participant)
    step = (end - start) / n
    return Response.json(
        200,
        {
            "meeting": meeting,
            "participant": participant,
            "from": start,
            "to": end,
            "points": n,
            "step": step,
            "t": [start + i * step for i in range(n)],
            "series": {m: shape(downsample(points[m], start, end, n)) for m in METRICS},
        },
    )
