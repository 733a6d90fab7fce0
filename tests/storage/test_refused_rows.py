"""Rows the database refuses, against SQLite and the real MariaDB: the rest of the batch is
written, the refused row is counted, logged and set aside in the refused file, and nothing is
retried, spooled or left unready because of it. Columns hold what the protocol allows (a
meeting relayed through servers whose TURN URLs are 512 emoji), and a database that does not
answer makes the flusher's ``problem`` say so within seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from collector.aggregate.engine import Output
from collector.aggregate.records import RtcMinuteRow
from collector.runtime import open_thread_bridge
from collector.storage.flusher import Flusher, encode_batch
from collector.storage.schema import (
    ALERTS,
    HTTP_MINUTE,
    MEETINGS,
    OTHER_TURN_SERVERS,
    RTC_MINUTE,
    TURN_SERVERS_JSON_MAX_CHARS,
    Batch,
    alert_row,
    http_row,
    meeting_row,
    rtc_row,
    turn_servers_json,
)
from collector.storage.sinks import MysqlSink, RowsRefused, SqliteSink, StorageUnavailable
from collector.storage.spool import Spool
from tests.helpers import CuttableProxy, wait_for
from tests.storage.test_sinks import MYSQL, RAISED, SUMMARY, http, rtc, sink

__all__ = ["sink"]  # the two-backend fixture of the sink contract tests

MINUTE = 1_800_000_000
POISON = 17  # the index of the refused row among the minutes written


def poisoned(sink: Any, minute: int) -> RtcMinuteRow:
    """A minute row the database refuses: a ``relay`` longer than its VARCHAR(16) on MySQL
    (error 1406, data too long), NULL in that NOT NULL column on SQLite (which has no lengths)."""
    relay = "x" * 17 if sink.dialect == "mysql" else None
    return msgspec.structs.replace(rtc(minute, "poison"), relay=relay)


def rows(sink: Any, count: int = 40) -> list[RtcMinuteRow]:
    return [
        poisoned(sink, MINUTE + 60 * i) if i == POISON else rtc(MINUTE + 60 * i, video=float(i))
        for i in range(count)
    ]


async def stored_minutes(sink: Any) -> list[int]:
    return [int(m) for (m,) in await sink.query("SELECT minute FROM rtc_minute ORDER BY minute")]


def refused_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_refused_row_is_set_aside_and_every_other_row_written(
    sink: Any, tmp_path: Path
) -> None:
    await sink.migrate()
    refused = tmp_path / "refused.jsonl"
    flusher = Flusher(sink, refused_path=refused)
    flusher.offer(Output(rtc_rows=rows(sink), summaries=[SUMMARY], alerts=[RAISED]))
    assert await flusher.flush()
    assert (flusher.failures, len(flusher.pending), flusher.problem()) == (0, 0, None)
    assert flusher.counters["rows_refused"] == 1
    assert flusher.counters["rows_written"] == 39 + 2  # the other minutes, the meeting, the alert
    expected = [MINUTE + 60 * i for i in range(40) if i != POISON]
    assert await stored_minutes(sink) == expected
    assert await sink.query("SELECT COUNT(*) FROM meetings") == [(1,)]
    assert await sink.query("SELECT COUNT(*) FROM alerts") == [(1,)]
    (line,) = refused_lines(refused)
    assert line["table"] == "rtc_minute"
    assert line["row"]["participant"] == "poison"
    assert line["row"]["minute"] == MINUTE + 60 * POISON
    assert "mysql" in line["error"] or "sqlite" in line["error"]
    assert flusher.health().refused_bytes == refused.stat().st_size

    flusher.offer(Output(rtc_rows=[rtc(MINUTE + 3600)]))  # nothing is retried: later rows go
    assert await flusher.flush()
    assert (await stored_minutes(sink))[-1] == MINUTE + 3600
    assert flusher.counters["rows_refused"] == 1
    assert len(refused_lines(refused)) == 1


async def test_a_spooled_batch_with_a_refused_row_is_written_and_acknowledged(
    sink: Any, tmp_path: Path
) -> None:
    await sink.migrate()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    batch = Batch()
    batch.add(RTC_MINUTE, [rtc_row(r) for r in rows(sink)])
    assert spool.append(encode_batch(batch))
    flusher = Flusher(sink, spool=spool, refused_path=tmp_path / "refused.jsonl")
    assert await flusher.flush()
    assert len(spool) == 0
    assert flusher.counters["rows_refused"] == 1
    assert len(await stored_minutes(sink)) == 39
    spool.close()


async def test_shutdown_spools_no_refused_row(tmp_path: Path) -> None:
    """SIGTERM's last flush sets the refused row aside like any flush: the spool stays empty,
    so the next start has nothing to retry."""
    sqlite = SqliteSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    flusher = Flusher(sqlite, spool=spool, refused_path=tmp_path / "refused.jsonl")
    flusher.offer(Output(rtc_rows=rows(sqlite)))
    await flusher.close(deadline_s=10)
    assert (len(spool), len(flusher.pending), flusher.counters["rows_refused"]) == (0, 0, 1)
    assert len(await stored_minutes(sqlite)) == 39
    spool.close()
    await sqlite.close()


async def test_a_value_that_is_not_a_number_is_refused(sink: Any, tmp_path: Path) -> None:
    """NaN, which the MySQL driver will not send and SQLite stores as NULL, in a NOT NULL
    column: refused alone on both dialects."""
    await sink.migrate()
    flusher = Flusher(sink, refused_path=tmp_path / "refused.jsonl")
    nan = msgspec.structs.replace(
        rtc(MINUTE + 60), counters={**rtc(0).counters, "freeze_count": math.nan}
    )
    flusher.offer(Output(rtc_rows=[rtc(MINUTE), nan, rtc(MINUTE + 120)]))
    assert await flusher.flush()
    assert await stored_minutes(sink) == [MINUTE, MINUTE + 120]
    assert flusher.counters["rows_refused"] == 1


async def test_a_value_sqlite_cannot_bind_or_hold_is_refused(tmp_path: Path) -> None:
    sqlite = SqliteSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    flusher = Flusher(sqlite, refused_path=tmp_path / "refused.jsonl")
    batch = Batch()
    good, unbindable, too_big = (rtc_row(rtc(MINUTE + 60 * i)) for i in range(3))
    batch.add(RTC_MINUTE, [good, (*unbindable[:5], {"no": "type"}, *unbindable[6:])])
    batch.add(RTC_MINUTE, [(*too_big[:5], 2**70, *too_big[6:])])  # past SQLite's 64 bits
    flusher.pending = batch
    assert await flusher.flush()
    assert await stored_minutes(sqlite) == [MINUTE]
    assert flusher.counters["rows_refused"] == 2
    await sqlite.close()


class DyingSink(SqliteSink):
    """Refuses what SQLite refuses, and goes away after ``writes_left`` writes."""

    writes_left = 1_000

    async def write(self, batch: Batch) -> None:
        if self.writes_left <= 0:
            raise StorageUnavailable("gone, says the test")
        self.writes_left -= 1
        await super().write(batch)


async def test_an_outage_while_splitting_keeps_the_unwritten_rows_once(tmp_path: Path) -> None:
    sqlite = DyingSink(tmp_path / "bwmon.db")
    await sqlite.migrate()
    flusher = Flusher(sqlite, refused_path=tmp_path / "refused.jsonl")
    flusher.offer(Output(rtc_rows=rows(sqlite)))
    sqlite.writes_left = 3  # the whole batch (refused), its first half (refused), a quarter
    assert not await flusher.flush()
    written = await stored_minutes(sqlite)
    assert written == [MINUTE + 60 * i for i in range(10)]
    pending = [row[3] for row in flusher.pending.rows["rtc_minute"]]
    assert pending == [MINUTE + 60 * i for i in range(10, 40)]  # in order, none written twice
    sqlite.writes_left = 1_000
    assert await flusher.flush()
    assert len(await stored_minutes(sqlite)) == 39
    assert flusher.counters["rows_refused"] == 1
    await sqlite.close()


async def test_a_missing_table_is_an_outage_not_a_refusal(sink: Any, tmp_path: Path) -> None:
    """An error about the schema, not the rows, must never set the rows aside."""
    batch = Batch()
    batch.add(RTC_MINUTE, [rtc_row(rtc(MINUTE))])
    with pytest.raises(StorageUnavailable):
        await sink.write(batch)  # not migrated
    await sink.migrate()
    batch.rows["rtc_minute"] = [rtc_row(poisoned(sink, MINUTE))]
    with pytest.raises(RowsRefused):
        await sink.write(batch)


async def test_a_meeting_relayed_through_servers_of_512_emoji_is_stored_whole(sink: Any) -> None:
    """Eight TURN servers whose URLs are 512 code points of emoji (PROTOCOL.md §4.3 allows
    it): their JSON object is 49 KB of ASCII, over the VARCHAR(4000) the meetings table had."""
    await sink.migrate()
    servers = {f"turn:{i}" + "😀" * 506: 1e6 * (i + 1) for i in range(8)}
    assert all(len(server) == 512 for server in servers)
    summary = msgspec.structs.replace(SUMMARY, relayed_bytes_by_turn_server=servers)
    batch = Batch()
    batch.add(MEETINGS, [meeting_row(summary)])
    await sink.write(batch)
    ((stored,),) = await sink.query("SELECT relayed_bytes_by_turn_server FROM meetings")
    assert json.loads(stored) == servers


async def test_every_column_holds_the_longest_values_the_protocol_allows(sink: Any) -> None:
    """Identifiers of 128 code points, TURN servers of 512 (PROTOCOL.md §5.1), every one an
    emoji (four bytes in utf8mb4), a 64-character rule name and a 16-letter method: stored as
    they came, on both dialects."""
    await sink.migrate()
    ident = "😀" * 128
    turn = "turn:" + "😀" * 507
    minute = msgspec.structs.replace(
        rtc(MINUTE), meeting=ident, participant=ident, connection=ident, turn_server=turn
    )
    route = msgspec.structs.replace(
        http(MINUTE), service=ident, route=ident, method="M" * 16, latency_hist=[2.0**53] * 12
    )
    rule = "r" * 64
    alert = msgspec.structs.replace(
        RAISED,
        id=f"{rule}:{ident}/{ident}:{2**53}@{round(MINUTE * 1000)}",
        rule=rule,
        key=(ident, ident),
        severity="critical",
    )
    summary = msgspec.structs.replace(
        SUMMARY, meeting=ident, relayed_bytes_by_turn_server={turn: 2.0**53}
    )
    batch = Batch()
    batch.add(RTC_MINUTE, [rtc_row(minute)])
    batch.add(HTTP_MINUTE, [http_row(route)])
    batch.add(MEETINGS, [meeting_row(summary)])
    batch.add(ALERTS, [alert_row(alert)])
    await sink.write(batch)
    assert await sink.query(
        "SELECT meeting, participant, connection, turn_server FROM rtc_minute"
    ) == [(ident, ident, ident, turn)]
    assert await sink.query("SELECT service, route, method FROM http_minute") == [
        (ident, ident, "M" * 16)
    ]
    assert await sink.query("SELECT id, rule, meeting, participant FROM alerts") == [
        (alert.id, rule, ident, ident)
    ]
    assert await sink.query("SELECT meeting FROM meetings") == [(ident,)]
    assert await sink.retain(MINUTE + 7200) == {"rtc_minute": 1, "http_minute": 1}


def test_the_turn_server_object_is_bounded_and_keeps_the_total() -> None:
    servers = {f"turn:{i:04}" + "😀" * 500: float(i) for i in range(400)}
    text = turn_servers_json(servers)
    assert len(text) <= TURN_SERVERS_JSON_MAX_CHARS
    kept = json.loads(text)
    assert sum(kept.values()) == sum(servers.values())
    assert OTHER_TURN_SERVERS in kept
    assert f"turn:{399:04}" + "😀" * 500 in kept  # the most bytes are kept by name
    assert f"turn:{0:04}" + "😀" * 500 not in kept
    assert turn_servers_json({"turn:a": 1.0}) == '{"turn:a": 1.0}'


async def test_a_hung_database_is_not_responding_within_seconds(
    tmp_path: Path, database: str
) -> None:
    """A server that accepts and never answers (a stopped process, a hung proxy): the probe
    says so within its 2 s timeout and one interval, not after the statement timeout."""
    proxy = CuttableProxy(("127.0.0.1", 3306))
    try:
        async with open_thread_bridge() as bridge:
            mysql = MysqlSink(
                bridge, database=database, **{**MYSQL, "port": proxy.port}, statement_timeout_s=10
            )
            flusher = Flusher(mysql, probe_interval_s=0.2)
            async with trio.open_nursery() as nursery:
                await nursery.start(flusher.run)
                await mysql.ping()  # through the proxy while it forwards
                assert flusher.problem() is None
                proxy.hang()
                hung = trio.current_time()
                await wait_for(lambda: flusher.problem() is not None, timeout_s=30)
                noticed = trio.current_time() - hung
                assert "did not answer within 2 s" in (flusher.problem() or "")
                proxy.flow()
                await wait_for(lambda: flusher.problem() is None, timeout_s=30)
                nursery.cancel_scope.cancel()
            await mysql.close()
    finally:
        proxy.close()
    # The probe's 2 s deadline plus one interval, with room for a loaded machine; well under
    # the 15 s a flush takes to give up on a hung server (and which had to have rows to try).
    assert noticed < 10
