"""``/api`` against a real engine fed frames, published by the daemon's publisher into an
in-process channel, and real sinks (SQLite, and MariaDB through the storage tests' two-backend
fixture): live state is what the channel's topics hold, the export streams every stored row in
every format, bad parameters are 400s, storage trouble is 503 before the first byte and a
truncated body after it, and ``authorize`` runs first."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
import trio

from collector.aggregate.alerts import AlertEvent
from collector.aggregate.engine import Engine
from collector.config import from_dict
from collector.fanout import topics
from collector.fanout.channel import LocalChannel
from collector.fanout.parts import visible
from collector.fanout.publisher import Publisher
from collector.http.api import Api
from collector.http.server import (
    Headers,
    HttpServer,
    HttpSettings,
    Request,
    Response,
    StreamedResponse,
)
from collector.storage.export import Selection
from collector.storage.schema import ALERTS, RTC_MINUTE, Batch, alert_row
from collector.storage.sinks import SqliteSink, StorageUnavailable
from tests.collector.test_http_server import fetch
from tests.fanout.test_topics import run, sample
from tests.storage.test_export import HOSTILE, all_rows, parse, rtc_rows, sink

__all__ = ["sink"]  # the two-backend fixture (SQLite and the real MariaDB)


def get(path: str, path_id: str | None = None, **query: str) -> Request:
    return Request("GET", path, query, Headers(), "127.0.0.1", path_id)


def body(response: Response | StreamedResponse) -> Any:
    assert isinstance(response, Response)
    return msgspec.json.decode(response.body)


async def read(response: Response | StreamedResponse) -> list[bytes]:
    assert isinstance(response, StreamedResponse)
    return [chunk async for chunk in response.chunks]


@dataclass
class Live:
    """A real engine fed ten seconds of samples from two participants of meeting ``m``, and
    the daemon's fan-out of it: a publisher into an in-process channel."""

    engine: Engine = field(default_factory=Engine)
    channel: LocalChannel = field(default_factory=LocalChannel)
    reads: int = 0  # of the engine
    now: float = 0.0

    def __post_init__(self) -> None:
        self.now = run(self.engine, 10)
        self.publisher = Publisher(self.get_engine, self.channel, clock=lambda: self.now)

    def get_engine(self) -> Engine:
        self.reads += 1
        return self.engine


@pytest.fixture
async def live() -> Live:
    live = Live()
    assert await live.publisher.publish(live.now)
    live.reads = 0
    return live


def api_of(live: Live, sink: Any = None, **kwargs: Any) -> Api:
    return Api(live.channel, sink, prepare=live.publisher.prepare, **kwargs)


async def test_meetings_is_the_meetings_topic(live: Live) -> None:
    response = await api_of(live).meetings(get("/api/meetings"))
    assert response.status == 200
    got = body(response)
    expected = topics.meetings_topic(live.engine, live.now)
    assert got == {
        "at": live.now,
        "total": 1,
        "ids": ["m"],
        "meetings": {m: visible(e) for m, e in expected.items()},
    }
    assert got["meetings"]["m"]["participants"] == 2
    assert got["meetings"]["m"]["up_bps"] == pytest.approx(1_400_000)
    assert live.reads == 0  # the channel's state, not the engine's


async def test_meetings_is_what_was_published_last(live: Live) -> None:
    api = api_of(live)
    live.engine = Engine()  # what a restored checkpoint does to the daemon's engine
    assert list(body(await api.meetings(get("/api/meetings")))["meetings"]) == ["m"]
    live.now += 1
    assert await live.publisher.publish(live.now)
    assert body(await api.meetings(get("/api/meetings"))) == {
        "at": live.now,
        "total": 0,
        "ids": [],
        "meetings": {},
    }


async def test_meeting_has_its_participants_and_series(live: Live) -> None:
    response = await api_of(live).meeting(get("/api/meetings/m", "m"))
    assert response.status == 200
    got = body(response)
    assert got["meeting"] == "m"
    assert sorted(got["participants"]) == ["alice", "bob"]
    entities = {e: visible(f) for e, f in topics.meeting_topic(live.engine, "m", live.now).items()}
    alice = {k: v for k, v in entities["alice"].items() if k != "kind"}
    streams = [
        {k: v for k, v in entities[f"alice {c}"].items() if k not in ("kind", "participant")}
        for c in ("pc1", "pc2")
    ]
    assert got["participants"]["alice"] == alice | {"streams": streams}
    assert [s["bytes"][2] for s in streams] == [900_000, 225_000]  # video sent, baseline left
    assert got["participants"]["alice"]["up_bps"] == pytest.approx(1_000_000)
    points = got["series"]["alice"]
    assert len(points) == 9  # the first tick holds a baseline alone: no interval
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    expected = [
        {k: v for k, v in e.items() if k not in ("kind", "participant")}
        for e in entities.values()
        if e["kind"] == "point" and e["participant"] == "alice"
    ]
    assert points == sorted(expected, key=lambda p: p["t"])
    assert points[-1]["up_bps"] == pytest.approx(1_000_000)


async def test_a_meeting_not_live_is_404(live: Live) -> None:
    response = await api_of(live).meeting(get("/api/meetings/gone", "gone"))
    assert response.status == 404
    assert body(response) == {"error": "meeting 'gone' is not live"}


async def test_live_routes_refuse_unknown_parameters(live: Live) -> None:
    response = await api_of(live).meetings(get("/api/meetings", since="1"))
    assert (response.status, body(response)) == (400, {"error": "unknown parameter: since"})
    response = await api_of(live).quality(get("/api/quality", level="good"))
    assert (response.status, body(response)) == (400, {"error": "unknown parameter: level"})
    response = await api_of(live).meetings(get("/api/meetings", relay="maybe"))
    assert (response.status, body(response)) == (400, {"error": "relay 'maybe': true or false"})


async def test_meetings_are_searched_filtered_and_paged(live: Live) -> None:
    run_meeting(live.engine, "other", live.now)
    live.now += 1
    assert await live.publisher.publish(live.now)
    api = api_of(live)
    got = body(await api.meetings(get("/api/meetings", sort="-id", limit="1")))
    assert (got["total"], got["ids"], list(got["meetings"])) == (2, ["other"], ["other"])
    got = body(await api.meetings(get("/api/meetings", q="th", alerts="false", relay="false")))
    assert (got["total"], got["ids"]) == (1, ["other"])
    assert body(await api.meetings(get("/api/meetings", level="bad")))["total"] == 0


async def test_quality_counts_the_meetings_per_level(live: Live) -> None:
    got = body(await api_of(live).quality(get("/api/quality")))
    level = topics.meetings_topic(live.engine, live.now)["m"]["level"]
    assert got["at"] == live.now
    assert got["meetings"][level] == 1
    assert sum(got["meetings"].values()) == 1
    assert got["participants"][level] == 2
    assert sum(got["participants"].values()) == 2


def run_meeting(engine: Engine, meeting: str, now: float) -> None:
    """One participant of ``meeting`` with one sample, a tick after it."""
    engine.add(
        [msgspec.structs.replace(sample("carol", "pc1", 1, 10_000), meeting=meeting)], now + 0.5
    )
    engine.tick(now + 1)


def raise_rtt(live: Live, participant: str) -> AlertEvent:
    """Three samples over the RTT threshold: the default ``high_rtt`` raises."""
    events: list[AlertEvent] = []
    for _ in range(3):
        live.now += 1
        events += live.engine.alerts.observe(
            ("m", participant), "participant", {"rtt_ms": 500.0}, live.now
        )
    (event,) = events
    return event


async def test_alerts_are_the_open_ones_and_the_stored_ones(sink: Any, live: Live) -> None:
    await sink.migrate()
    opened = raise_rtt(live, "alice")
    assert await live.publisher.publish(live.now)
    old = AlertEvent(
        id="packet_loss:m/bob:1@900000",
        rule="packet_loss",
        key=("m", "bob"),
        state="cleared",
        severity="warning",
        value=None,
        threshold=1.0,
        at=960.0,
        raised_at=900.0,
    )
    other = msgspec.structs.replace(old, id="low_mos:x:1@950000", key=("x",), raised_at=950.0)
    stored = Batch()
    stored.add(ALERTS, [alert_row(old), alert_row(other), alert_row(opened)])
    await sink.write(stored)
    api = api_of(live, sink, page_rows=1, clock=lambda: live.now)

    got = body(await api.alerts(get("/api/alerts", since="0")))
    assert got["at"] == live.now
    assert got["open"] == [
        {
            "id": opened.id,
            "rule": "high_rtt",
            "severity": "warning",
            "meeting": "m",
            "participant": "alice",
            "raised_at": opened.raised_at,
            "cleared_at": None,
            "value": 500.0,
            "threshold": 400.0,
        }
    ]
    assert [a["id"] for a in got["recent"]] == [opened.id, other.id, old.id]  # newest first
    assert got["recent"][2] | {"value": 1.0} == {
        "id": old.id,
        "raised_at": 900.0,
        "rule": "packet_loss",
        "meeting": "m",
        "participant": "bob",
        "severity": "warning",
        "value": 1.0,
        "threshold": 1.0,
        "cleared_at": 960.0,
    }
    got = body(await api.alerts(get("/api/alerts", since="0", limit="1")))
    assert [a["id"] for a in got["recent"]] == [opened.id]
    got = body(await api.alerts(get("/api/alerts", meeting="x", since="0")))
    assert (got["open"], [a["id"] for a in got["recent"]]) == ([], [other.id])
    got = body(await api.alerts(get("/api/alerts", since="925")))
    assert [a["id"] for a in got["recent"]] == [opened.id, other.id]
    # Without ``since``: the last day before the clock.
    assert [a["id"] for a in body(await api.alerts(get("/api/alerts")))["recent"]] == [
        opened.id,
        other.id,
        old.id,
    ]
    live.now += 86_400 * 2
    assert body(await api.alerts(get("/api/alerts")))["recent"] == []


async def test_alerts_without_storage_are_the_open_ones(live: Live) -> None:
    raise_rtt(live, "bob")
    assert await live.publisher.publish(live.now)
    got = body(await api_of(live).alerts(get("/api/alerts")))
    assert ([a["participant"] for a in got["open"]], got["recent"]) == (["bob"], [])


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"limit": "1001"}, "limit '1001': a whole number from 1 to 1000"),
        ({"limit": "x"}, "limit 'x': a whole number from 1 to 1000"),
        ({"level": "bad"}, "unknown parameter: level"),
        (
            {"since": "soon"},
            "'soon' is not a time: ISO 8601 (2026-11-29T10:00:00Z), "
            "Unix seconds, now, today, yesterday or a time ago (-15m, -1h, -7d)",
        ),
    ],
)
async def test_bad_alert_parameters_are_400(live: Live, query: dict[str, str], error: str) -> None:
    response = await api_of(live).alerts(get("/api/alerts", **query))
    assert (response.status, body(response)) == (400, {"error": error})


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
async def test_export_streams_every_row_page_by_page(sink: Any, live: Live, fmt: str) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(23))
    response = await api_of(live, sink, page_rows=5).export(
        get("/api/export", what="rtc", format=fmt, time="unix")
    )
    chunks = await read(response)
    assert isinstance(response, StreamedResponse)
    assert (
        response.content_type
        == {
            "csv": "text/csv; charset=utf-8",
            "json": "application/json",
            "ndjson": "application/x-ndjson",
        }[fmt]
    )
    assert dict(response.headers) == {
        "content-disposition": f'attachment; filename="bwmon-rtc.{fmt}"'
    }
    assert len(chunks) == 5 + 1  # one per page (the header goes with the first), then the end
    stored = await all_rows(sink, Selection("rtc"))
    expected = [dict(zip(RTC_MINUTE.columns, row, strict=True)) for row in stored]
    assert parse(fmt, b"".join(chunks).decode()) == expected  # type: ignore[arg-type]
    assert live.reads == 0  # the export never reads the live engine


async def test_export_filters_and_parses_times(sink: Any, live: Live) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(50))
    start = "2027-01-15T08:02:00Z"  # T0 + 120 s
    response = await api_of(live, sink).export(
        get("/api/export", what="rtc", participant=HOSTILE, start=start, end="1800000300")
    )
    text = b"".join(await read(response)).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["participant"] for r in rows] == [HOSTILE] * 3
    assert [r["minute"] for r in rows] == [  # CSV's times are ISO 8601 unless time=unix
        "2027-01-15T08:02:00Z",
        "2027-01-15T08:03:00Z",
        "2027-01-15T08:04:00Z",
    ]


async def test_an_empty_export_is_a_valid_document(tmp_path: Path, live: Live) -> None:
    sqlite = SqliteSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    try:
        response = await api_of(live, sqlite).export(
            get("/api/export", what="alerts", format="json")
        )
        assert json.loads(b"".join(await read(response))) == []
    finally:
        await sqlite.close()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({}, "what is required: rtc, http, meetings, alerts, rtc_hour, http_hour"),
        (
            {"what": "users"},
            "cannot export 'users': one of rtc, http, meetings, alerts, rtc_hour, http_hour",
        ),
        ({"what": "rtc", "format": "xml"}, "format 'xml': one of csv, json, ndjson"),
        ({"what": "rtc", "time": "local"}, "time 'local': iso or unix"),
        ({"what": "rtc", "start": "soon"}, "'soon' is not a time"),
        ({"what": "rtc", "start": "-1y"}, "'-1y' is not a time"),
        ({"what": "rtc", "start": "20", "end": "10"}, "end must be after start"),
        ({"what": "rtc", "service": "api"}, "service does not apply to rtc"),
        ({"what": "rtc", "meeting": ""}, "meeting is empty"),
        ({"what": "rtc", "limit": "5", "page": "2"}, "unknown parameter: limit, page"),
    ],
)
async def test_bad_export_parameters_are_400(
    tmp_path: Path, live: Live, query: dict[str, str], error: str
) -> None:
    never = SqliteSink(tmp_path / "never.db")
    response = await api_of(live, never).export(get("/api/export", **query))
    assert response.status == 400
    assert isinstance(response, Response)
    assert error in body(response)["error"]
    assert "--" not in body(response)["error"]  # the CLI's option names are not the API's
    assert not (tmp_path / "never.db").exists()  # refused before any query


async def test_export_without_storage_is_404(live: Live) -> None:
    response = await api_of(live, None).export(get("/api/export", what="rtc"))
    assert response.status == 404
    assert body(response) == {"error": 'storage.backend is "none": nothing is stored to export'}


async def test_storage_unreachable_before_the_first_byte_is_503(tmp_path: Path, live: Live) -> None:
    (tmp_path / "a-directory.db").mkdir()
    unreachable = SqliteSink(tmp_path / "a-directory.db")
    response = await api_of(live, unreachable).export(get("/api/export", what="rtc"))
    assert response.status == 503
    assert body(response)["error"].startswith("storage: sqlite ")


class FailingSink(SqliteSink):
    """A real SQLite sink whose reads fail from the ``fail_at``-th on."""

    fail_at = 2
    reads = 0

    async def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        self.reads += 1
        if self.reads >= self.fail_at:
            raise StorageUnavailable("switched off by the test")
        return await super().query(sql, params)


@pytest.fixture
async def failing(tmp_path: Path) -> Any:
    sqlite = FailingSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    await sqlite.write(rtc_rows(12))
    yield sqlite
    await sqlite.close()


@dataclass
class ApiServer:
    port: int
    http: HttpServer


async def serve(nursery: trio.Nursery, api: Api) -> ApiServer:
    http = HttpServer(api.routes(), {}, HttpSettings(request_timeout_s=5))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http.serve, listeners)
    return ApiServer(listeners[0].socket.getsockname()[1], http)


async def test_storage_failing_midway_truncates_the_chunked_body(
    nursery: trio.Nursery, failing: FailingSink, live: Live
) -> None:
    server = await serve(nursery, api_of(live, failing, page_rows=5))
    got = await fetch(server.port, "/api/export?what=rtc&format=ndjson")
    assert got.status == 200
    assert got.headers["transfer-encoding"] == "chunked"
    assert not got.complete  # no terminating chunk
    assert len(got.body.decode().splitlines()) == 5  # the first page, nothing after it
    assert server.http.counters.response_errors == 1


async def test_export_over_http_is_chunked_and_complete(
    nursery: trio.Nursery, sink: Any, live: Live
) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(23))
    server = await serve(nursery, api_of(live, sink, page_rows=4))
    target = f"/api/export?what=rtc&participant={quote(HOSTILE, safe='')}&format=ndjson"
    hostile = await fetch(server.port, target)
    assert (hostile.status, hostile.complete) == (200, True)
    lines = hostile.body.decode().splitlines()
    assert [json.loads(line)["participant"] for line in lines] == [HOSTILE] * 4
    got = await fetch(server.port, "/api/export?what=rtc&format=csv&meeting=m1&time=unix")
    assert (got.status, got.complete) == (200, True)
    assert got.headers["content-type"] == "text/csv; charset=utf-8"
    assert got.headers["content-disposition"] == 'attachment; filename="bwmon-rtc.csv"'
    stored = await all_rows(sink, Selection("rtc"))
    assert parse("csv", got.body.decode()) == [
        dict(zip(RTC_MINUTE.columns, row, strict=True)) for row in stored
    ]


async def test_routes_through_the_server(nursery: trio.Nursery, live: Live) -> None:
    server = await serve(nursery, api_of(live))
    listed = await fetch(server.port, "/api/meetings")
    assert listed.status == 200
    assert list(listed.json()["meetings"]) == ["m"]
    one = await fetch(server.port, "/api/meetings/m")
    assert sorted(one.json()["participants"]) == ["alice", "bob"]
    gone = await fetch(server.port, "/api/meetings/nobody%20here")
    assert gone.status == 404
    assert gone.json() == {"error": "meeting 'nobody here' is not live"}


@dataclass
class Gate:
    """A toy ``authorize``: refuses one meeting, and all meetings at once; records its calls."""

    secret: str = "secret"
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, request: Request, meeting: str | None) -> Response | None:
        self.calls.append((request.path, meeting))
        if meeting is None:
            return Response.error(401, "a token is needed", [("www-authenticate", "Bearer")])
        if meeting == self.secret:
            return Response.error(403, f"not allowed to read meeting {meeting!r}")
        return None


async def test_authorize_runs_first_and_nothing_else_is_read(tmp_path: Path, live: Live) -> None:
    gate = Gate()
    never = SqliteSink(tmp_path / "never.db")
    api = api_of(live, never, authorize=gate)

    refused = await api.meeting(get("/api/meetings/secret", "secret"))
    assert (refused.status, body(refused)) == (
        403,
        {"error": "not allowed to read meeting 'secret'"},
    )
    exported = await api.export(get("/api/export", what="rtc", meeting="secret", bad="x"))
    assert exported.status == 403  # before the parameters are even checked
    listed = await api.meetings(get("/api/meetings"))
    assert listed.status == 401
    assert isinstance(listed, Response)
    assert dict(listed.headers) == {"www-authenticate": "Bearer"}
    everything = await api.export(get("/api/export", what="http"))
    assert everything.status == 401
    assert (await api.alerts(get("/api/alerts", meeting="secret", bad="x"))).status == 403
    assert (await api.alerts(get("/api/alerts"))).status == 401
    assert (await api.quality(get("/api/quality"))).status == 401
    assert live.reads == 0  # the engine was never asked
    assert not (tmp_path / "never.db").exists()  # nor the database

    allowed = await api.meeting(get("/api/meetings/m", "m"))
    assert allowed.status == 200
    assert live.reads == 1
    assert gate.calls == [
        ("/api/meetings/secret", "secret"),
        ("/api/export", "secret"),
        ("/api/meetings", None),
        ("/api/export", None),
        ("/api/alerts", "secret"),
        ("/api/alerts", None),
        ("/api/quality", None),
        ("/api/meetings/m", "m"),
    ]


def test_the_daemon_serves_the_api_routes(tmp_path: Path) -> None:
    from collector.app import Daemon

    daemon = Daemon(
        from_dict(
            {
                "storage": {"backend": "sqlite", "state_dir": str(tmp_path)},
                "limits": {"max_connections_per_source": 3},
            }
        )
    )
    assert {"/api/meetings", "/api/export", "/api/series", "/api/quality", "/api/alerts"} <= set(
        daemon.http.http_routes
    )
    assert set(daemon.http.prefix_routes) == {"/api/meetings/"}
    assert daemon.http.settings.max_connections_per_source == 3
    assert id(daemon.api.sink) == id(daemon.sink)
    assert daemon.api.channel is daemon.channel
