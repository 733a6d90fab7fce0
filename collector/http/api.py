"""``/api``: the daemon's live state and its stored rows over plain HTTP (docs/API.md).

* ``GET /api/meetings``: the live meetings' summaries — a snapshot of the ``meetings`` topic of
  ``/subscribe``, from the same channel, so every daemon on one Redis answers alike (each
  meeting merged from every daemon's part) — searched, filtered, sorted and paged by
  ``meeting_query``;
* ``GET /api/quality``: the same snapshot counted per quality level (``meeting_query``);
* ``GET /api/alerts``: the open alerts (the ``alerts`` topic) and the recent ones (the stored
  ``alerts`` table), shaped by ``alert_query``;
* ``GET /api/meetings/{id}``: one live meeting's participants (each with its streams' byte
  totals) and their live window series — a snapshot of the ``meeting:<id>`` topic (prepared as
  for a first subscriber: every daemon's part in it), regrouped by participant; 404 when the
  meeting is live on no daemon;
* ``GET /api/series``: a meeting's or participant's history for a chart, stored minute rows
  and live points downsampled to N buckets (``collector.http.history``);
* ``GET /api/export``: stored rows as CSV, JSON or NDJSON through
  ``collector.storage.export``, streamed page by page (chunked), so an export of any size
  holds one page in memory.

The live state comes only from the fan-out channel and the export only from
``collector.storage.export``: this module parses parameters, calls them and shapes the answer.
It never writes to the engine or to the database.

Every route first asks ``authorize(request, meeting)`` — ``meeting`` is the one meeting the
request reads, ``None`` for all of them (the list, an export without a ``meeting`` filter) —
and sends the Response it returns (401/403) instead of reading anything. The daemon's is
``token_authorization``: a bearer token with the ``read`` right.

Errors are JSON ``{"error": "..."}``: 400 for a bad or unknown parameter, 404 for a meeting
not live or ``storage.backend = "none"``, 503 when the channel (Redis) cannot be reached or the
database cannot be read before the first byte of an export. A database error after the first
byte truncates the chunked body.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias, cast

from collector.auth import Auth, Denied, bearer
from collector.fanout.channel import Channel, ChannelUnavailable
from collector.http import alert_query, history, meeting_query
from collector.http.server import HttpRoute, Request, Response, StreamedResponse
from collector.storage.export import (
    EXPORTS,
    Format,
    Kind,
    Readable,
    Selection,
    Shape,
    TimeFormat,
    default_time_format,
    export_rows,
    parse_time,
    row_writer,
)
from collector.storage.schema import Row
from collector.storage.sinks import StorageError, StorageUnavailable
from protocol.subscribe import is_topic

Authorize: TypeAlias = Callable[[Request, str | None], Response | None]

# Rows per page: a MySQL page is parsed on the event loop that also drains UDP (DESIGN §4),
# so pages stay smaller than the CLI's.
API_PAGE_ROWS: Final = 1_000
EXPORT_PARAMETERS: Final = frozenset(
    {"what", "format", "time", "start", "end", "meeting", "participant", "service"}
)
CONTENT_TYPES: Final[dict[str, str]] = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}
_OPTION = re.compile(r"--(?=[a-z])")  # Selection's messages name the CLI's options


def allow_everything(_request: Request, _meeting: str | None) -> Response | None:
    """The authorization of a daemon without tokens: every request may read everything."""
    return None


def token_authorization(auth: Callable[[], Auth]) -> Authorize:
    """The authorization of a daemon with the token keys ``auth()`` returns (those in force: a
    reload swaps them): a bearer token with the ``read`` right on ``meeting`` (None: every
    meeting); 401 (with ``www-authenticate``) or 403 as a JSON error, else None."""

    def authorize(request: Request, meeting: str | None) -> Response | None:
        keys = auth()
        if not keys.required:
            return None
        claims = keys.admit(bearer(request.headers.get("authorization")), "read")
        denied = claims if isinstance(claims, Denied) else keys.check(claims, "read", meeting)
        if denied is None:
            return None
        challenge = [("www-authenticate", 'Bearer realm="bwmon"')] if denied.status == 401 else []
        return Response.error(denied.status, f"{denied.code}: {denied.detail}", challenge)

    return authorize


async def nothing_to_prepare(_topic: str) -> None:
    """The preparation of a daemon alone with its channel: its part is all there is."""


class Api:
    def __init__(
        self,
        channel: Channel,
        sink: Readable | None,
        *,
        prepare: Callable[[str], Awaitable[None]] = nothing_to_prepare,
        authorize: Authorize = allow_everything,
        page_rows: int = API_PAGE_ROWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # the default start of the recent alerts; relative export times
        self.channel = channel
        self.prepare = prepare  # every daemon's part of a meeting topic in the channel
        self.sink = sink
        self.authorize = authorize
        self.page_rows = page_rows

    def routes(self) -> dict[str, HttpRoute]:
        return {
            "/api/meetings": self.meetings,
            "/api/meetings/{id}": self.meeting,
            "/api/quality": self.quality,
            "/api/alerts": self.alerts,
            "/api/export": self.export,
            "/api/series": self.series,
        }

    async def meetings(self, request: Request) -> Response:
        """``{"at": <unix time>, "total": <matches>, "ids": [...], "meetings": {<id>:
        <summary>}}``: the page of matches ``meeting_query`` selects, in its order."""
        refused = self.authorize(request, None)
        if refused is not None:
            return refused
        try:
            query = meeting_query.parse_query(request.query)
            snapshot = await self.channel.snapshot("meetings")
        except ValueError as exc:
            return Response.error(400, str(exc))
        except ChannelUnavailable as exc:
            return Response.error(503, f"channel: {exc}")
        total, page = meeting_query.select(snapshot.entities, query)
        return Response.json(
            200,
            {
                "at": snapshot.at,
                "total": total,
                "ids": [meeting for meeting, _ in page],  # the order; JS reorders numeric keys
                "meetings": dict(page),
            },
        )

    async def quality(self, request: Request) -> Response:
        """``{"at", "meetings": {<level>: n}, "participants": {<level>: n}}``."""
        refused = self.authorize(request, None) or _no_parameters(request)
        if refused is not None:
            return refused
        try:
            snapshot = await self.channel.snapshot("meetings")
        except ChannelUnavailable as exc:
            return Response.error(503, f"channel: {exc}")
        return Response.json(
            200, {"at": snapshot.at, **meeting_query.distribution(snapshot.entities)}
        )

    async def alerts(self, request: Request) -> Response:
        """``{"at", "open": [...], "recent": [...]}``: ``alert_query`` shapes them."""
        query = request.query
        refused = self.authorize(request, query.get("meeting") or None)
        if refused is not None:
            return refused
        try:
            wanted = alert_query.parse_query(query, self.clock())
            snapshot = await self.channel.snapshot("alerts")
        except ValueError as exc:
            return Response.error(400, str(exc))
        except ChannelUnavailable as exc:
            return Response.error(503, f"channel: {exc}")
        recent: list[dict[str, Any]] = []
        if self.sink is not None:
            try:
                recent = await alert_query.recent(self.sink, wanted, page_rows=self.page_rows)
            except StorageError as exc:
                status = 503 if isinstance(exc, StorageUnavailable) else 500
                return Response.error(status, f"storage: {exc}")
        return Response.json(
            200,
            {
                "at": snapshot.at,
                "open": alert_query.open_alerts(snapshot.entities, wanted),
                "recent": recent,
            },
        )

    async def meeting(self, request: Request) -> Response:
        """``{"at", "meeting", "participants": {<id>: {..., "streams": [...]}}, "series": {<id>:
        [points]}}``."""
        meeting = request.path_id
        if meeting is None:  # only reached through the "{id}" route
            return Response.error(404, "no such path")
        refused = self.authorize(request, meeting) or _no_parameters(request)
        if refused is not None:
            return refused
        topic = f"meeting:{meeting}"
        if not is_topic(topic):
            return Response.error(404, f"meeting {meeting!r} is not live")
        try:
            await self.prepare(topic)
            snapshot = await self.channel.snapshot(topic)
        except ChannelUnavailable as exc:
            return Response.error(503, f"channel: {exc}")
        if not snapshot.entities:
            return Response.error(404, f"meeting {meeting!r} is not live")
        participants: dict[str, dict[str, Any]] = {}
        series: dict[str, list[dict[str, Any]]] = {}
        streams: dict[str, list[dict[str, Any]]] = {}
        for key, entity in snapshot.entities.items():
            fields = {k: v for k, v in entity.items() if k != "kind"}
            if entity["kind"] == "participant":
                participants[key] = fields
            elif entity["kind"] == "stream":
                streams.setdefault(fields.pop("participant"), []).append(fields)
            else:
                series.setdefault(fields.pop("participant"), []).append(fields)
        for points in series.values():
            points.sort(key=lambda point: point["t"])
        for pid, fields in participants.items():
            fields["streams"] = sorted(streams.get(pid, []), key=lambda s: s["connection"])
        return Response.json(
            200,
            {
                "at": snapshot.at,
                "meeting": meeting,
                "participants": participants,
                "series": series,
            },
        )

    async def series(self, request: Request) -> Response:
        return await history.series(self, request)

    async def export(self, request: Request) -> Response | StreamedResponse:
        query = request.query
        refused = self.authorize(request, query.get("meeting") or None)
        if refused is not None:
            return refused
        unknown = sorted(set(query) - EXPORT_PARAMETERS)
        if unknown:
            return Response.error(400, f"unknown parameter: {', '.join(unknown)}")
        what = query.get("what")
        if what is None:
            return Response.error(400, f"what is required: {', '.join(EXPORTS)}")
        fmt = query.get("format", "csv")
        if fmt not in CONTENT_TYPES:
            return Response.error(400, f"format {fmt!r}: one of csv, json, ndjson")
        time_format = query.get("time", default_time_format(cast(Format, fmt)))
        if time_format not in ("iso", "unix"):
            return Response.error(400, f"time {time_format!r}: iso or unix")
        try:
            start, end = query.get("start"), query.get("end")
            now = self.clock()
            selection = Selection(
                cast(Kind, what),  # Selection checks it
                start=None if start is None else parse_time(start, now),
                end=None if end is None else parse_time(end, now),
                meeting=query.get("meeting"),
                participant=query.get("participant"),
                service=query.get("service"),
            )
        except ValueError as exc:
            return Response.error(400, _OPTION.sub("", str(exc)))
        if self.sink is None:
            return Response.error(404, 'storage.backend is "none": nothing is stored to export')
        pages = export_rows(self.sink, selection, page_rows=self.page_rows)
        try:
            first = await anext(pages, None)
        except StorageError as exc:
            await _aclose(pages)
            status = 503 if isinstance(exc, StorageUnavailable) else 500
            return Response.error(status, f"storage: {exc}")
        shape = Shape(selection.what, cast(Format, fmt), cast(TimeFormat, time_format))
        body = ExportBody(pages, first, cast(Format, fmt), shape)
        return StreamedResponse(
            body,
            CONTENT_TYPES[fmt],
            headers=[("content-disposition", f'attachment; filename="bwmon-{what}.{fmt}"')],
        )


def _no_parameters(request: Request) -> Response | None:
    if request.query:
        return Response.error(400, f"unknown parameter: {', '.join(sorted(request.query))}")
    return None


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class ExportBody:
    """The export as text, one chunk per page: the writer's opening, then each page, then its
    closing. Closing it closes the page reader too, even if it was never iterated (HEAD)."""

    def __init__(
        self,
        pages: AsyncIterator[list[Row]],
        first: list[Row] | None,
        fmt: Format,
        shape: Shape,
    ) -> None:
        self._pages = pages
        self._chunks = self._generate(first, fmt, shape)

    def __aiter__(self) -> ExportBody:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            await _aclose(self._pages)

    async def _generate(
        self, first: list[Row] | None, fmt: Format, shape: Shape
    ) -> AsyncGenerator[bytes, None]:
        out = io.StringIO(newline="")
        writer = row_writer(fmt, out)

        def take() -> bytes:
            text = out.getvalue()
            out.seek(0)
            out.truncate()
            return text.encode()

        writer.begin(shape.columns)
        if first is not None:
            writer.write(shape.rows(first))
            yield take()
            async for page in self._pages:
                writer.write(shape.rows(page))
                yield take()
        writer.end()
        yield take()
