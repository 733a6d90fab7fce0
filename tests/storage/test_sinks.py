"""The sink contract, run against SQLite and against the real MariaDB on 127.0.0.1:3306."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncmy
import msgspec
import pytest
import trio
import trio.lowlevel

from collector.aggregate.alerts import AlertEvent
from collector.aggregate.http import HttpMinuteRow
from collector.aggregate.percentiles import latency_summary
from collector.aggregate.records import MeetingSummary, RtcMinuteRow
from collector.aggregate.rtc import COUNTERS
from collector.runtime import open_thread_bridge
from collector.storage import sinks
from collector.storage.schema import (
    ALERTS,
    HTTP_MINUTE,
    MEETINGS,
    RTC_MINUTE,
    TABLES,
    Batch,
    Migration,
    Table,
    alert_row,
    http_row,
    meeting_row,
    migrations,
    rtc_row,
)
from collector.storage.sinks import (
    SQLITE_MAX_VARIABLES,
    MysqlSink,
    SqliteSink,
    StorageUnavailable,
)

MYSQL: dict[str, Any] = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


async def _admin(sql: str) -> None:
    conn = await asyncmy.connect(**MYSQL)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "mysql"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        sqlite = SqliteSink(tmp_path / "bwmon.db")
        yield sqlite
        await sqlite.close()
        return
    database = f"bwmon_test_{uuid.uuid4().hex[:12]}"
    async with open_thread_bridge() as bridge:
        await bridge.run(partial(_admin, f"CREATE DATABASE {database}"))
        mysql = MysqlSink(bridge, database=database, **MYSQL)
        try:
            yield mysql
        finally:
            await mysql.close()
            await bridge.run(partial(_admin, f"DROP DATABASE {database}"))


def rtc(minute: int, participant: str = "p1", video: float = 1_000.0) -> RtcMinuteRow:
    counters = dict.fromkeys(COUNTERS, 0.0)
    counters["video_bytes_sent"] = video
    return RtcMinuteRow(
        meeting="m1",
        participant=participant,
        connection="c1",
        minute=minute,
        segment=1_800_000_000_000,
        samples=60,
        gaps=0,
        resets=0,
        counters=counters,
        rtt_ms_avg=40.0,
        audio_jitter_ms_avg=None,
        video_jitter_ms_avg=None,
        mos_avg=4.1,
        mos_min=3.9,
        quality_avg=80.0,
        quality_min=70.0,
        relay="turn-udp",
        turn_server="turn:t1:3478",
        relayed_bytes=video,
        fps_in_avg=29.5,
        fps_out_avg=24.25,
        width_in=1280,
        height_in=720,
        width_out=640,
        height_out=360,
        bwe_bps_avg=2_500_000.0,
        remote_relayed=True,
    )


def http(minute: int) -> HttpMinuteRow:
    hist = [1.0] * 12
    return HttpMinuteRow(
        service="api",
        route="/v1/items",
        method="GET",
        minute=minute,
        segment=0,
        requests=12.0,
        status=[0.0, 11.0, 0.0, 1.0, 0.0],
        bytes_in=100.0,
        bytes_out=5_000.0,
        latency_sum_ms=300.0,
        latency_hist=hist,
        latency=latency_summary([1] * 12),
    )


SUMMARY = MeetingSummary(
    meeting="m1",
    started_at=1_800_000_000.0,
    ended_at=1_800_000_600.0,
    peak_participants=3,
    bytes_up=1e6,
    bytes_down=2e6,
    relayed_bytes=5e5,
    relay_cost=0.000045,
    relayed_bytes_by_turn_server={"turn:t1:3478": 5e5},
    quality_avg=77.5,
    quality_worst=40.0,
    seconds_by_level={"good": 500.0, "fair": 100.0},
)
RAISED = AlertEvent(
    id="high_rtt:m1/p1:1",
    rule="high_rtt",
    key=("m1", "p1"),
    state="raised",
    severity="warning",
    value=512.0,
    threshold=400.0,
    at=1_800_000_010.0,
    raised_at=1_800_000_010.0,
)


def batch(*rows: RtcMinuteRow) -> Batch:
    b = Batch()
    b.add(RTC_MINUTE, [rtc_row(r) for r in rows])
    b.add(HTTP_MINUTE, [http_row(http(1_800_000_000))])
    b.add(MEETINGS, [meeting_row(SUMMARY)])
    b.add(ALERTS, [alert_row(RAISED)])
    return b


async def dump(sink: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t.name: await sink.query(f"SELECT * FROM {t.name} ORDER BY {', '.join(t.key)}")
        for t in TABLES
    }


async def test_migrate_is_idempotent_and_dry_run_changes_nothing(sink: Any) -> None:
    planned = await sink.migrate(dry_run=True)
    assert any("CREATE TABLE IF NOT EXISTS rtc_minute" in s for s in planned)
    with pytest.raises(StorageUnavailable):
        await sink.query("SELECT COUNT(*) FROM rtc_minute")  # dry run: nothing created
    assert await sink.migrate() == planned
    assert await sink.migrate() == []
    assert await sink.query("SELECT version FROM bwmon_migrations ORDER BY version") == [
        (1,),
        (2,),
        (3,),
        (4,),
    ]


VIDEO_COLUMNS = RTC_MINUTE.columns[RTC_MINUTE.columns.index("fps_in_avg") :]  # from 0003


async def test_minute_rows_keep_frame_rates_resolutions_bandwidth_and_remote_relay(
    sink: Any,
) -> None:
    await sink.migrate()
    unknown = msgspec.structs.replace(
        rtc(1_800_000_060),
        **dict.fromkeys(VIDEO_COLUMNS, None),  # a minute whose samples carried none of them
    )
    await sink.write(batch(rtc(1_800_000_000), unknown))
    assert await sink.query(
        f"SELECT {', '.join(VIDEO_COLUMNS)} FROM rtc_minute ORDER BY minute"
    ) == [(29.5, 24.25, 1280, 720, 640, 360, 2_500_000.0, 1), (None,) * len(VIDEO_COLUMNS)]


async def test_a_database_at_version_2_migrates_to_3_and_keeps_its_rows(
    sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of the build before 0003 (its migrations, its rtc_minute columns, one row
    in it): ``migrate`` applies 0003 alone, the old row gets NULL in the new columns, and rows
    with them are written, read and rolled up into hours."""
    added = RTC_MINUTE.columns.index(VIDEO_COLUMNS[0])
    old_layout = Table("rtc_minute", RTC_MINUTE.columns[:added], RTC_MINUTE.key)
    monkeypatch.setattr(sinks, "migrations", lambda d: [m for m in migrations(d) if m.version < 3])
    monkeypatch.setattr(sinks, "TABLES_BY_NAME", {"rtc_minute": old_layout})
    await sink.migrate()
    hour = 1_800_000_000 - 1_800_000_000 % 3600
    await sink.write(Batch({"rtc_minute": [rtc_row(rtc(hour))[:added]]}))
    monkeypatch.undo()

    since = [s for m in migrations(sink.dialect) if m.version >= 3 for s in m.statements()]
    assert await sink.migrate() == since
    assert await sink.query("SELECT MAX(version) FROM bwmon_migrations") == [(4,)]
    new = Batch()
    new.add(RTC_MINUTE, [rtc_row(rtc(hour + 60))])
    await sink.write(new)
    assert await sink.query(
        f"SELECT minute, video_bytes_sent, {', '.join(VIDEO_COLUMNS)} FROM rtc_minute "
        "ORDER BY minute"
    ) == [
        (hour, 1_000.0, *(None,) * len(VIDEO_COLUMNS)),
        (hour + 60, 1_000.0, 29.5, 24.25, 1280, 720, 640, 360, 2_500_000.0, 1),
    ]
    assert await sink.retain(hour + 3600) == {"rtc_minute": 2, "http_minute": 0}
    assert await sink.query(
        "SELECT minutes, fps_in_avg, fps_out_avg, bwe_bps_avg, remote_relayed_minutes FROM rtc_hour"
    ) == [(2, 29.5, 24.25, 2_500_000.0, 1)]


async def test_a_sqlite_migration_that_fails_leaves_nothing_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration and its record are one transaction: a failure in its middle (a crash,
    a full disk) rolls its first ALTER TABLEs back, so the next start applies it whole."""
    sqlite = SqliteSink(tmp_path / "bwmon.db")
    monkeypatch.setattr(sinks, "migrations", lambda d: [m for m in migrations(d) if m.version < 3])
    await sqlite.migrate()
    (third,) = [m for m in migrations("sqlite") if m.version == 3]
    broken = Migration(3, third.name, third.sql + "\nALTER TABLE no_such_table ADD COLUMN x;")
    monkeypatch.setattr(sinks, "migrations", lambda d: [*migrations(d)[:2], broken])
    with pytest.raises(StorageUnavailable, match="no_such_table"):
        await sqlite.migrate()
    monkeypatch.undo()
    assert await sqlite.migrate() == third.statements()
    columns = [c[1] for c in await sqlite.query("PRAGMA table_info(rtc_minute)")]
    assert columns == list(RTC_MINUTE.columns)
    await sqlite.close()


async def test_replaying_a_batch_leaves_identical_tables(sink: Any) -> None:
    await sink.migrate()
    rows = [rtc(1_800_000_000 + 60 * i, f"p{i % 7}", 1_000.0 * i) for i in range(50)]
    await sink.write(batch(*rows))
    first = await dump(sink)
    await sink.write(batch(*rows))
    assert await dump(sink) == first
    assert len(first["rtc_minute"]) == 50
    (total,) = await sink.query("SELECT SUM(video_bytes_sent) FROM rtc_minute")
    assert total[0] == sum(1_000.0 * i for i in range(50))


async def test_an_upsert_writes_the_complete_new_values(sink: Any) -> None:
    await sink.migrate()
    await sink.write(batch(rtc(1_800_000_000, video=1_000.0)))
    await sink.write(batch(rtc(1_800_000_000, video=2_500.0)))
    assert await sink.query("SELECT video_bytes_sent, relayed_bytes FROM rtc_minute") == [
        (2_500.0, 2_500.0)
    ]


async def test_a_cleared_alert_keeps_what_raised_it(sink: Any) -> None:
    await sink.migrate()
    await sink.write(batch())
    cleared = Batch()
    cleared.add(
        ALERTS,
        [
            alert_row(
                AlertEvent(
                    **{
                        **{f: getattr(RAISED, f) for f in RAISED.__struct_fields__},
                        "state": "cleared",
                        "value": 120.0,
                        "threshold": 300.0,
                        "at": 1_800_000_030.0,
                    }
                )
            )
        ],
    )
    await sink.write(cleared)
    rows = await sink.query("SELECT value, threshold, cleared_at FROM alerts")
    assert rows == [(512.0, 400.0, 1_800_000_030.0)]


async def test_statements_do_not_grow_with_rows(sink: Any) -> None:
    await sink.migrate()
    before = sink.statements
    await sink.write(batch(*(rtc(1_800_000_000, f"p{i}") for i in range(3_000))))
    per_flush = sink.statements - before
    # 3,000 participants: MySQL one upsert per table; SQLite splits at its variable limit.
    sqlite_rtc = math.ceil(3_000 / (SQLITE_MAX_VARIABLES // len(RTC_MINUTE.columns)))
    assert per_flush == (4 if sink.dialect == "mysql" else 3 + sqlite_rtc)
    assert (await sink.query("SELECT COUNT(*) FROM rtc_minute"))[0][0] == 3_000


async def test_an_unreachable_mysql_is_storage_unavailable() -> None:
    async with open_thread_bridge() as bridge:
        sink = MysqlSink(bridge, host="127.0.0.1", port=1, connect_timeout_s=1)
        with pytest.raises(StorageUnavailable):
            await sink.write(batch(rtc(1_800_000_000)))
        await sink.close()
    await trio.lowlevel.checkpoint()


async def test_retention_rolls_minutes_up_into_hours_then_deletes_them(sink: Any) -> None:
    await sink.migrate()
    hour = 1_800_000_000 - 1_800_000_000 % 3600
    old = [rtc(hour + 60 * i, video=100.0 * (i + 1)) for i in range(3)]  # 600 bytes in all
    recent = [rtc(hour + 3600 + 60 * i, video=7.0) for i in range(2)]
    b = Batch()
    b.add(RTC_MINUTE, [rtc_row(r) for r in old + recent])
    b.add(HTTP_MINUTE, [http_row(http(hour + 60)), http_row(http(hour + 120))])
    await sink.write(b)
    deleted = await sink.retain(hour + 3600, batch_rows=2)  # several delete batches
    assert deleted == {"rtc_minute": 3, "http_minute": 2}
    assert await sink.query("SELECT minutes, samples, video_bytes_sent FROM rtc_hour") == [
        (3, 180, 600.0)
    ]
    assert await sink.query("SELECT requests, bytes_out FROM http_hour") == [(24.0, 10_000.0)]
    assert await sink.query("SELECT COUNT(*) FROM rtc_minute") == [(2,)]
    # Run again (as after a crash between insert and delete): the hour row is not rebuilt.
    assert await sink.retain(hour + 3600) == {"rtc_minute": 0, "http_minute": 0}
    assert await sink.query("SELECT video_bytes_sent FROM rtc_hour") == [(600.0,)]
