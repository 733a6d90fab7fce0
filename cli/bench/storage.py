"""``bwmon bench storage``: statements per table per minute and rows/s of the storage sinks.

The daemon closes one ``rtc_minute`` row per participant (and one ``http_minute`` row per
route) at each minute boundary, and the flusher writes what is pending every few seconds. This
benchmark replays exactly that against the real sinks — a throwaway ``bwmon_bench_<random>``
database on the configured MariaDB/MySQL server, dropped at the end whatever happens, and a
SQLite file in a temporary directory — for 100 and 20,000 simulated participants:

- each simulated minute, the closed minute rows are offered to a ``Flusher`` and
  ``FLUSHES_PER_MINUTE`` flushes follow, as the daemon's flush loop would run them (rows only
  arrive at the minute boundary, so most flushes find nothing to write);
- the statements counted are the ones the sink really executed, per table: for MySQL the list
  the sink hands to its driver, for SQLite the connection's trace callback; their sum is checked
  against the sink's own ``statements`` counter;
- ``rows_per_s`` is rows written over seconds spent in ``write`` at the largest size (one batch
  of every participant's row per minute).

It never writes to any database but the one it created, and prints one JSON object with
``--json``.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import trio
import typer

from cli.bench.harness import DROP_DEADLINE_S, meets, throwaway_database
from collector.aggregate.engine import Output
from collector.aggregate.http import HttpMinuteRow
from collector.aggregate.percentiles import latency_summary
from collector.aggregate.records import RtcMinuteRow
from collector.aggregate.rtc import COUNTERS
from collector.runtime import AsyncioBridge, open_thread_bridge
from collector.storage.flusher import Flusher
from collector.storage.schema import Batch
from collector.storage.sinks import (
    MysqlSink,
    SqliteSink,
    StorageError,
)

TARGET_STATEMENTS_PER_TABLE_PER_MIN = 10
PARTICIPANTS = (100, 20_000)
PARTICIPANTS_PER_MEETING = 5
HTTP_ROUTES = 8
FLUSHES_PER_MINUTE = 12  # a 5 s flush interval
FIRST_MINUTE = 1_800_000_000 // 60 * 60

_INSERT_INTO = re.compile(r"INSERT INTO [`\"](\w+)[`\"]")


class Meter:
    """What a sink did: statements executed per table (while ``counting``), rows written and
    seconds spent in ``write``."""

    def __init__(self) -> None:
        self.counting = False
        self.statements: Counter[str] = Counter()
        self.rows = 0
        self.write_s = 0.0

    def executed(self, sql: str) -> None:
        match = _INSERT_INTO.match(sql)
        if match:
            self.statements[match.group(1)] += 1


class MeteredMysqlSink(MysqlSink):
    """``MysqlSink`` counting, per table, the statements it hands to the driver."""

    def __init__(self, bridge: AsyncioBridge, **params: Any) -> None:
        super().__init__(bridge, **params)
        self.meter = Meter()

    def count_statements(self, on: bool) -> None:
        self.meter.counting = on

    async def _call(self, fn: Any, *args: Any, writes_rows: bool = False) -> Any:
        result = await super()._call(fn, *args, writes_rows=writes_rows)
        # A write passes its statements as one list of (sql, params), all executed in order in
        # one transaction that has committed once the call returns.
        for arg in args if self.meter.counting else ():
            if isinstance(arg, list):
                for item in arg:
                    if isinstance(item, tuple) and item and isinstance(item[0], str):
                        self.meter.executed(item[0])
        return result

    async def write(self, batch: Batch) -> None:
        started = time.perf_counter()
        await super().write(batch)
        self.meter.write_s += time.perf_counter() - started
        self.meter.rows += len(batch)


class MeteredSqliteSink(SqliteSink):
    """``SqliteSink`` counting, per table, the statements SQLite executed (trace callback)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.meter = Meter()

    def count_statements(self, on: bool) -> None:
        # The trace callback gets each statement with its parameters expanded, which halves
        # the write rate of large batches: on only while counting, off while timing.
        self.meter.counting = on
        self._connect().set_trace_callback(self.meter.executed if on else None)

    async def write(self, batch: Batch) -> None:
        started = time.perf_counter()
        await super().write(batch)
        self.meter.write_s += time.perf_counter() - started
        self.meter.rows += len(batch)


MeteredSink = MeteredMysqlSink | MeteredSqliteSink


class SizeResult(msgspec.Struct):
    participants: int
    minutes: int
    rows_per_min: int
    statements_per_min: dict[str, float]  # per table and "total", mean over the minutes
    max_statements_per_table_per_min: int  # the worst table in the worst minute


class ThroughputResult(msgspec.Struct):
    batches: int
    rows_per_batch: int
    write_s: float
    rows_per_s: float


class SinkResult(msgspec.Struct):
    sizes: list[SizeResult]
    throughput: ThroughputResult
    rows_per_statement: int | None = None  # MySQL: from the server's max_allowed_packet


class StorageResult(msgspec.Struct):
    """MySQL at the top level (the production backend); SQLite with its prefix; details below."""

    target_statements_per_table_per_min: int
    meets_target: bool
    statements_per_min: dict[str, dict[str, float]]  # participants -> table / "total" -> mean
    rows_per_s: float
    sqlite_meets_target: bool
    sqlite_statements_per_min: dict[str, dict[str, float]]
    sqlite_rows_per_s: float
    mysql_rows_per_statement: int
    flushes_per_min: int
    mysql: SinkResult
    sqlite: SinkResult


def rtc_rows(participants: int, minute: int) -> list[RtcMinuteRow]:
    """The rows the engine closes at a minute boundary: one per participant, meetings of 5."""
    counters = dict.fromkeys(COUNTERS, 1_000.0)
    return [
        RtcMinuteRow(
            meeting=f"m{p // PARTICIPANTS_PER_MEETING}",
            participant=f"p{p}",
            connection=f"c{p}",
            minute=minute,
            segment=FIRST_MINUTE * 1000,
            samples=60,
            gaps=0,
            resets=0,
            counters=counters,
            rtt_ms_avg=40.0 + p % 50,
            audio_jitter_ms_avg=8.0,
            video_jitter_ms_avg=12.0,
            mos_avg=4.1,
            mos_min=3.8,
            quality_avg=82.0,
            quality_min=64.0,
            relay="turn-udp" if p % 10 == 0 else "direct",
            turn_server="turn:t1:3478" if p % 10 == 0 else None,
            relayed_bytes=1_000.0 if p % 10 == 0 else 0.0,
            fps_in_avg=29.5,
            fps_out_avg=30.0,
            width_in=1280,
            height_in=720,
            width_out=1280,
            height_out=720,
            bwe_bps_avg=2_500_000.0,
            remote_relayed=False,
        )
        for p in range(participants)
    ]


def http_rows(minute: int) -> list[HttpMinuteRow]:
    histogram = [0] * 12
    histogram[3], histogram[5] = 900, 100
    latency = latency_summary(histogram)
    return [
        HttpMinuteRow(
            service="api",
            route=f"/v1/route{r}",
            method="GET",
            minute=minute,
            segment=0,
            requests=1_000.0,
            status=[0.0, 990.0, 0.0, 9.0, 1.0],
            bytes_in=100_000.0,
            bytes_out=5_000_000.0,
            latency_sum_ms=20_000.0,
            latency_hist=[float(n) for n in histogram],
            latency=latency,
        )
        for r in range(HTTP_ROUTES)
    ]


def minute_output(participants: int, minute: int) -> Output:
    return Output(rtc_rows=rtc_rows(participants, minute), http_rows=http_rows(minute))


async def _flush(flusher: Flusher, sink: MeteredSink) -> None:
    if not await flusher.flush():
        raise StorageError(f"{sink.dialect}: {flusher.last_error}")


async def simulate(sink: MeteredSink, participants: int, minutes: int, first: int) -> SizeResult:
    """``minutes`` simulated minutes of ``participants``: rows at each minute boundary, then
    ``FLUSHES_PER_MINUTE`` flushes; statements counted per table per minute."""
    flusher = Flusher(sink, migrate=False)
    meter = sink.meter
    rows_before = meter.rows
    per_minute: list[Counter[str]] = []
    sink.count_statements(True)
    for m in range(minutes):
        output = minute_output(participants, first + 60 * m)
        before, sink_before = meter.statements.copy(), sink.statements
        flusher.offer(output)
        for _ in range(FLUSHES_PER_MINUTE):
            await _flush(flusher, sink)
        counted = meter.statements - before
        if counted.total() != sink.statements - sink_before:
            raise StorageError(
                f"{sink.dialect}: counted {counted.total()} statements per table, "
                f"the sink executed {sink.statements - sink_before}"
            )
        per_minute.append(counted)
    sink.count_statements(False)
    tables = sorted({table for counted in per_minute for table in counted})
    mean = {t: round(sum(c[t] for c in per_minute) / minutes, 2) for t in tables}
    mean["total"] = round(sum(c.total() for c in per_minute) / minutes, 2)
    return SizeResult(
        participants=participants,
        minutes=minutes,
        rows_per_min=(meter.rows - rows_before) // minutes,
        statements_per_min=mean,
        max_statements_per_table_per_min=max(max(c.values(), default=0) for c in per_minute),
    )


async def throughput(
    sink: MeteredSink, participants: int, batches: int, first: int
) -> ThroughputResult:
    """Rows per second spent in ``write``, one minute of ``participants`` per batch, with no
    statement counting in the way; building the rows is not timed."""
    flusher = Flusher(sink, migrate=False)
    meter = sink.meter
    rows_before, write_s_before = meter.rows, meter.write_s
    for m in range(batches):
        flusher.offer(minute_output(participants, first + 60 * m))
        await _flush(flusher, sink)
    rows = meter.rows - rows_before
    write_s = meter.write_s - write_s_before
    return ThroughputResult(
        batches=batches,
        rows_per_batch=rows // batches,
        write_s=round(write_s, 3),
        rows_per_s=round(rows / write_s, 1) if write_s else 0.0,
    )


async def run_sink(sink: MeteredSink, minutes: int, batches: int) -> SinkResult:
    """Every size, then the throughput at the largest, each in its own hours (new rows)."""
    await sink.migrate()
    sizes = [
        await simulate(sink, n, minutes, FIRST_MINUTE + 3600 * i)
        for i, n in enumerate(PARTICIPANTS)
    ]
    first = FIRST_MINUTE + 3600 * len(PARTICIPANTS)
    return SinkResult(sizes, await throughput(sink, max(PARTICIPANTS), batches, first))


async def run_mysql(
    server: dict[str, Any], database: str, minutes: int, batches: int
) -> SinkResult:
    async with open_thread_bridge() as bridge:
        sink = MeteredMysqlSink(bridge, database=database, **server)
        try:
            result = await run_sink(sink, minutes, batches)
            result.rows_per_statement = sink.rows_per_statement
            return result
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DROP_DEADLINE_S):
                await sink.close()


async def run_sqlite(minutes: int, batches: int) -> SinkResult:
    with tempfile.TemporaryDirectory(prefix="bwmon-bench-") as tmp:
        sink = MeteredSqliteSink(Path(tmp) / "bwmon.db")
        try:
            return await run_sink(sink, minutes, batches)
        finally:
            await sink.close()


def _meets(result: SinkResult) -> bool:
    return all(
        s.max_statements_per_table_per_min <= TARGET_STATEMENTS_PER_TABLE_PER_MIN
        for s in result.sizes
    )


def _per_min(result: SinkResult) -> dict[str, dict[str, float]]:
    return {str(s.participants): s.statements_per_min for s in result.sizes}


def run_storage(server: dict[str, Any], quick: bool) -> StorageResult:
    minutes, batches = (2, 3) if quick else (3, 10)
    with throwaway_database(server, StorageError) as database:
        mysql = trio.run(run_mysql, server, database, minutes, batches)
    sqlite = trio.run(run_sqlite, minutes, batches)
    return StorageResult(
        target_statements_per_table_per_min=TARGET_STATEMENTS_PER_TABLE_PER_MIN,
        meets_target=_meets(mysql),
        statements_per_min=_per_min(mysql),
        rows_per_s=mysql.throughput.rows_per_s,
        sqlite_meets_target=_meets(sqlite),
        sqlite_statements_per_min=_per_min(sqlite),
        sqlite_rows_per_s=sqlite.throughput.rows_per_s,
        mysql_rows_per_statement=mysql.rows_per_statement or 0,
        flushes_per_min=FLUSHES_PER_MINUTE,
        mysql=mysql,
        sqlite=sqlite,
    )


def print_summary(result: StorageResult) -> None:
    target = result.target_statements_per_table_per_min
    for name, sink, met in (
        ("MySQL", result.mysql, result.meets_target),
        ("SQLite", result.sqlite, result.sqlite_meets_target),
    ):
        per_size = "; ".join(
            f"at {s.participants:,} participants "
            + ", ".join(f"{t} {n:g}" for t, n in s.statements_per_min.items())
            for s in sink.sizes
        )
        typer.echo(
            f"{name}: statements per minute {per_size} (target <= {target} per table: "
            f"{meets(met)}); {sink.throughput.rows_per_s:,.0f} rows/s in batches of "
            f"{sink.throughput.rows_per_batch:,}"
        )
