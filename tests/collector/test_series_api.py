"""``GET /api/series`` against a real engine published into an in-process channel and real
sinks (SQLite, and MariaDB through the storage tests' two-backend fixture): stored minutes and
live points joined per participant (a stored minute wins over the live points inside it),
downsampled with min, mean and max; the meeting sums its participants' rates; empty buckets and
unknown meetings are nulls; bad parameters are 400; ``authorize`` runs first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from collector.http import history
from collector.http.history import MAX_POINTS, METRICS
from collector.storage.sinks import SqliteSink
from tests.collector.test_api import Gate, Live, api_of, body, get, live, serve
from tests.collector.test_http_server import fetch
from tests.storage.test_export import sink
from tests.storage.test_sinks import batch, rtc

__all__ = ["live", "sink"]  # fixtures: the live engine, the two-backend sink

# The live fixture's points are at 991 … 1010 s (one per tick); minutes are stored before them.
FROM, TO = 840.0, 1020.0


def stored(minute: int, participant: str = "alice", video: float = 0.0) -> Any:
    return msgspec.structs.replace(rtc(minute, participant, video), meeting="m")


async def test_stored_minutes_then_live_points(sink: Any, live: Live) -> None:
    await sink.migrate()
    # 10 kbit/s, then a 2 Mbit/s minute: the spike must survive downsampling.
    await sink.write(batch(stored(840, video=75_000), stored(900, video=15_000_000)))
    api = api_of(live, sink)

    got = body(
        await api.series(
            get(
                "/api/series",
                meeting="m",
                participant="alice",
                **{"from": "840", "to": "1020"},
                points="3",
            )
        )
    )
    assert (got["meeting"], got["participant"], got["from"], got["to"]) == ("m", "alice", FROM, TO)
    assert (got["points"], got["step"], got["t"]) == (3, 60.0, [840.0, 900.0, 960.0])
    assert set(got["series"]) == set(METRICS)
    up = got["series"]["up_bps"]
    assert up["min"][:2] == up["mean"][:2] == up["max"][:2] == [10_000.0, 2_000_000.0]
    assert up["max"][2] == pytest.approx(1_000_000, rel=0.01)  # alice's two live connections
    assert got["series"]["mos"]["min"][0] == 3.9  # the minute's lowest, below its mean
    assert got["series"]["mos"]["mean"][0] == got["series"]["mos"]["max"][0] == 4.1
    assert got["series"]["quality"]["min"][:2] == [70.0, 70.0]
    assert got["series"]["rtt_ms"]["mean"][:2] == [40.0, 40.0]
    assert got["series"]["jitter_ms"]["mean"][:2] == [None, None]  # not measured in the rows

    one = body(
        await api.series(
            get("/api/series", meeting="m", **{"from": "840", "to": "1020"}, points="1")
        )
    )
    assert one["series"]["up_bps"]["max"] == [2_000_000.0]  # any N keeps the spike
    assert one["series"]["up_bps"]["min"] == [pytest.approx(min(up["min"][2], 10_000.0))]


async def test_a_stored_minute_wins_over_the_live_points_in_it(sink: Any, live: Live) -> None:
    await sink.migrate()
    await sink.write(batch(stored(960, video=750_000)))  # 100 kbit/s over 960 … 1020
    got = body(
        await api_of(live, sink).series(
            get(
                "/api/series",
                meeting="m",
                participant="alice",
                **{"from": "960", "to": "1020"},
                points="1",
            )
        )
    )
    assert got["series"]["up_bps"] == {"min": [100_000.0], "mean": [100_000.0], "max": [100_000.0]}


async def test_too_many_stored_rows_is_400(
    sink: Any, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sink.migrate()
    await sink.write(batch(*(stored(minute, pid) for minute in (840, 900) for pid in "ab")))
    monkeypatch.setattr(history, "MAX_ROWS", 3)
    response = await api_of(live, sink).series(get("/api/series", meeting="m", to="1020"))
    refused = "more than 3 stored rows in the range: narrow from/to or ask for one participant"
    assert (response.status, body(response)) == (400, {"error": refused})
    monkeypatch.setattr(history, "MAX_ROWS", 4)
    assert (
        await api_of(live, sink).series(get("/api/series", meeting="m", to="1020"))
    ).status == 200


async def test_the_meeting_sums_its_participants_rates(live: Live) -> None:
    api = api_of(live)  # storage.backend = "none": the live points only
    got = body(await api.series(get("/api/series", meeting="m", to="1011", points="1")))
    assert got["from"] == 1011 - 3600
    assert got["series"]["up_bps"]["max"] == [pytest.approx(1_400_000, rel=0.01)]
    alice = body(
        await api.series(
            get("/api/series", meeting="m", participant="alice", to="1011", points="1")
        )
    )
    assert alice["series"]["up_bps"]["max"] == [pytest.approx(1_000_000, rel=0.01)]
    defaults = body(await api.series(get("/api/series", meeting="m")))
    assert (defaults["to"], defaults["points"]) == (live.now, 300)  # now: the snapshot's time


async def test_an_unknown_meeting_is_empty_not_an_error(tmp_path: Path, live: Live) -> None:
    sqlite = SqliteSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    try:
        response = await api_of(live, sqlite).series(
            get("/api/series", meeting="nobody", points="4")
        )
    finally:
        await sqlite.close()
    assert response.status == 200
    got = body(response)
    assert got["series"] == {m: {k: [None] * 4 for k in ("min", "mean", "max")} for m in METRICS}


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({}, "meeting is required"),
        ({"meeting": "m", "what": "rtc"}, "unknown parameter: what"),
        ({"meeting": "a b"}, "meeting 'a b' is not an identifier (PROTOCOL.md §4.1)"),
        ({"meeting": "m", "participant": ""}, "participant is empty"),
        ({"meeting": "m", "points": "0"}, f"points must be 1 to {MAX_POINTS}, not 0"),
        (
            {"meeting": "m", "points": str(MAX_POINTS + 1)},
            f"points must be 1 to {MAX_POINTS}, not {MAX_POINTS + 1}",
        ),
        ({"meeting": "m", "points": "many"}, "points 'many' is not an integer"),
        (
            {"meeting": "m", "from": "soon"},
            "from/to: 'soon' is not a time: ISO 8601 (2026-11-29T10:00:00Z), "
            "Unix seconds, now, today, yesterday or a time ago (-15m, -1h, -7d)",
        ),
        ({"meeting": "m", "from": "100", "to": "100"}, "to must be after from"),
        ({"meeting": "m", "from": "0", "to": str(7 * 86_400 + 1)}, "to - from is at most 604800 s"),
    ],
)
async def test_bad_parameters_are_400(live: Live, query: dict[str, str], error: str) -> None:
    response = await api_of(live).series(get("/api/series", **query))
    assert (response.status, body(response)) == (400, {"error": error})


async def test_authorize_runs_first(tmp_path: Path, live: Live) -> None:
    gate = Gate()
    api = api_of(live, SqliteSink(tmp_path / "never.db"), authorize=gate)
    refused = await api.series(get("/api/series", meeting="secret", points="bad"))
    assert refused.status == 403  # before the parameters are even checked
    assert (await api.series(get("/api/series"))).status == 401  # no meeting: all of them
    assert live.reads == 0
    assert not (tmp_path / "never.db").exists()
    assert gate.calls == [("/api/series", "secret"), ("/api/series", None)]


async def test_series_through_the_server(nursery: trio.Nursery, live: Live) -> None:
    server = await serve(nursery, api_of(live))
    got = await fetch(server.port, "/api/series?meeting=m&to=1011&points=2")
    assert got.status == 200
    assert got.json()["series"]["up_bps"]["max"][1] == pytest.approx(1_400_000, rel=0.01)
    bad = await fetch(server.port, "/api/series?meeting=m&points=x")
    assert (bad.status, bad.json()) == (400, {"error": "points 'x' is not an integer"})
