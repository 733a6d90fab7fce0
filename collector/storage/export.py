"""Reading stored rows back out: ``bwmon export`` streams a table as CSV, JSON or NDJSON.

A table is read in pages with keyset pagination on its primary key — each page is
``WHERE key > last key of the previous page ORDER BY key LIMIT n`` — so memory stays at one page
whatever the table's size, a page costs the same at the end of the table as at its start (no
``OFFSET``), and a row written during the export is never seen twice.

``Selection`` builds the SQL (pure), ``export_rows`` runs it page by page against a sink,
``Shape`` turns stored rows into what people and tools read (times as ISO 8601 or Unix seconds,
whole counts as integers, the JSON the tables keep as text as real JSON or flattened CSV
columns), and the writers turn pages into text on a stream. Never writes to the database.

Errors: a bad selection is ``ValueError`` (the caller's mistake, before any query); the sink's
``StorageError``/``StorageUnavailable`` pass through unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, TextIO

from collector.aggregate.quality import LEVELS
from collector.aggregate.rtc import COUNTERS
from collector.storage.schema import (
    ALERTS,
    HTTP_HOUR,
    HTTP_MINUTE,
    MEETINGS,
    RTC_HOUR,
    RTC_MINUTE,
    Dialect,
    Row,
    Table,
)
from protocol.frames import HTTP_LATENCY_BOUNDS_MS

Kind = Literal["rtc", "http", "meetings", "alerts", "rtc_hour", "http_hour"]
Format = Literal["csv", "json", "ndjson"]
TimeFormat = Literal["iso", "unix"]
PAGE_ROWS = 5_000

# The counters of a minute that are whole numbers (bytes, packets, samples, frames); the other
# two are seconds.
_WHOLE_COUNTERS = tuple(c for c in COUNTERS if not c.endswith("_s"))
_STATUS = tuple(f"status_{n}xx" for n in range(1, 6))


@dataclass(frozen=True)
class Exported:
    """What can be exported of a table: its time column, the filters that apply to it, its
    other columns of Unix seconds and its columns of whole counts (kept as DOUBLE)."""

    table: Table
    time_column: str
    filters: frozenset[str]
    times: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()


_RTC_COUNTS = ("samples", "gaps", "resets", *_WHOLE_COUNTERS, "relayed_bytes")
_HTTP_COUNTS = ("requests", *_STATUS, "bytes_in", "bytes_out")
EXPORTS: dict[Kind, Exported] = {
    "rtc": Exported(
        RTC_MINUTE, "minute", frozenset({"meeting", "participant"}), counts=_RTC_COUNTS
    ),
    "http": Exported(HTTP_MINUTE, "minute", frozenset({"service"}), counts=_HTTP_COUNTS),
    "meetings": Exported(
        MEETINGS,
        "started_at",
        frozenset({"meeting"}),
        times=("ended_at",),
        counts=("peak_participants", "bytes_up", "bytes_down", "relayed_bytes"),
    ),
    "alerts": Exported(
        ALERTS, "raised_at", frozenset({"meeting", "participant"}), times=("cleared_at",)
    ),
    "rtc_hour": Exported(
        RTC_HOUR,
        "hour",
        frozenset({"meeting", "participant"}),
        counts=("minutes", *_RTC_COUNTS, "remote_relayed_minutes"),
    ),
    "http_hour": Exported(HTTP_HOUR, "hour", frozenset({"service"}), counts=_HTTP_COUNTS),
}

# Columns the tables keep as JSON text. In JSON and NDJSON they are real JSON values; in CSV,
# one column per element (their names here), or the JSON text where the keys are open-ended.
_LATENCY_COLUMNS = (
    *(f"latency_le_{bound}ms" for bound in HTTP_LATENCY_BOUNDS_MS),
    f"latency_gt_{HTTP_LATENCY_BOUNDS_MS[-1]}ms",
)
NESTED: dict[str, tuple[str, ...] | None] = {
    "latency_hist": _LATENCY_COLUMNS,
    "seconds_by_level": tuple(f"seconds_{level}" for level in LEVELS),
    "relayed_bytes_by_turn_server": None,
}


class Readable(Protocol):
    """A sink that can be read from (both ``SqliteSink`` and ``MysqlSink`` are)."""

    dialect: Dialect

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Selection:
    """Which rows of which table: a time range (``start`` inclusive, ``end`` exclusive, Unix
    seconds) on the table's time column and equality filters on its id columns."""

    what: Kind
    start: float | None = None
    end: float | None = None
    meeting: str | None = None
    participant: str | None = None
    service: str | None = None

    def __post_init__(self) -> None:
        if self.what not in EXPORTS:
            raise ValueError(f"cannot export {self.what!r}: one of {', '.join(EXPORTS)}")
        allowed = EXPORTS[self.what].filters
        for name, value in self._filters():
            if name not in allowed:
                raise ValueError(f"--{name} does not apply to {self.what}")
            if not value:
                raise ValueError(f"--{name} is empty")
        for name, bound in (("start", self.start), ("end", self.end)):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"--{name} is not a finite time")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("--end must be after --start")

    @property
    def table(self) -> Table:
        return EXPORTS[self.what].table

    def _filters(self) -> list[tuple[str, str]]:
        given = (("meeting", self.meeting), ("participant", self.participant))
        return [(n, v) for n, v in (*given, ("service", self.service)) if v is not None]

    def page_query(self, dialect: Dialect, after: Row | None, limit: int) -> tuple[str, list[Any]]:
        """The SQL and parameters of the page that follows the row with key ``after``."""
        q = "`" if dialect == "mysql" else '"'
        mark = "%s" if dialect == "mysql" else "?"

        def name(column: str) -> str:
            return f"{q}{column}{q}"

        where: list[str] = []
        params: list[Any] = []
        for column, value in self._filters():
            where.append(f"{name(column)} = {mark}")
            params.append(value)
        time_column = name(EXPORTS[self.what].time_column)
        if self.start is not None:
            where.append(f"{time_column} >= {mark}")
            params.append(self.start)
        if self.end is not None:
            where.append(f"{time_column} < {mark}")
            params.append(self.end)
        key = self.table.key
        if after is not None:
            # (k1, k2, …) > (v1, v2, …) spelled out: a leading "k1 >= v1" lets both engines
            # seek in the primary key, which row-value comparisons do not always do in MariaDB.
            where.append(f"{name(key[0])} >= {mark}")
            params.append(after[0])
            clause = f"{name(key[-1])} > {mark}"
            clause_params: list[Any] = [after[-1]]
            for column, value in zip(key[-2::-1], after[-2::-1], strict=True):
                clause = f"{name(column)} > {mark} OR ({name(column)} = {mark} AND ({clause}))"
                clause_params = [value, value, *clause_params]
            where.append(f"({clause})")
            params += clause_params
        columns = ", ".join(name(c) for c in self.table.columns)
        sql = f"SELECT {columns} FROM {name(self.table.name)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {', '.join(name(c) for c in key)} LIMIT {int(limit)}"
        return sql, params

    def count_query(self, dialect: Dialect) -> tuple[str, list[Any]]:
        """The SQL and parameters that count the selected rows (for a progress bar's total)."""
        sql, params = self.page_query(dialect, None, 1)
        _, _, rest = sql.partition(" FROM ")
        return "SELECT COUNT(*) FROM " + rest.rpartition(" ORDER BY ")[0], params

    def key_of(self, row: Row) -> Row:
        positions = [self.table.columns.index(c) for c in self.table.key]
        return tuple(row[i] for i in positions)


async def export_rows(
    sink: Readable, selection: Selection, *, page_rows: int = PAGE_ROWS
) -> AsyncGenerator[list[Row], None]:
    """The selected rows in primary-key order, one page (at most ``page_rows`` rows) at a time."""
    if page_rows < 1:
        raise ValueError("page_rows must be at least 1")
    after: Row | None = None
    while True:
        sql, params = selection.page_query(sink.dialect, after, page_rows)
        page = await sink.query(sql, params)
        if page:
            yield page
        if len(page) < page_rows:
            return
        after = selection.key_of(page[-1])


_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_AGO = re.compile(r"-((?:\d+(?:\.\d+)?[smhdw])+)")
_AGO_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from a number, ISO 8601 (``YYYY-MM-DDTHH:MM:SSZ``, an offset or none: without
    an offset it is UTC), ``now``, ``today`` or ``yesterday`` (midnight UTC) or a time before
    now (``-90s``, ``-15m``, ``-1h``, ``-1h30m``, ``-7d``, ``-2w``); ``now`` defaults to the
    clock."""
    text = text.strip()
    lowered = text.lower()
    relative = _AGO.fullmatch(lowered)
    if relative or lowered in ("now", "today", "yesterday"):
        current = time.time() if now is None else now
        if relative:
            parts = _AGO_PART.findall(relative.group(1))
            return current - sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)
        if lowered == "now":
            return current
        midnight = current - current % 86_400
        return midnight if lowered == "today" else midnight - 86_400
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: ISO 8601 (2026-11-29T10:00:00Z), Unix seconds, now, "
                "today, yesterday or a time ago (-15m, -1h, -7d)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite time")
    return value


def default_time_format(fmt: Format) -> TimeFormat:
    """ISO 8601 for CSV (read by people and spreadsheets), Unix seconds for JSON and NDJSON."""
    return "iso" if fmt == "csv" else "unix"


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 in UTC, ``YYYY-MM-DDTHH:MM:SSZ``, with milliseconds
    (``…SS.mmmZ``) when the time has a fraction of a second."""
    moment = datetime.fromtimestamp(seconds, UTC)
    spec = "seconds" if float(seconds).is_integer() else "milliseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _json_value(text: Any) -> Any:
    """A column's JSON text as a value, whole numbers in it as integers."""
    if text is None:
        return None
    value = json.loads(text)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


class Shape:
    """How a stored row is written: times as ISO 8601 (``time="iso"``) or Unix seconds (whole
    ones as integers), whole counts as integers, the JSON-text columns (``NESTED``) as real
    JSON values in JSON and NDJSON and as one column per element in CSV (the JSON text where
    the keys are open-ended). ``columns`` are the names written, ``rows`` shapes a page."""

    def __init__(self, what: Kind, fmt: Format, time_format: TimeFormat) -> None:
        exported = EXPORTS[what]
        times = {exported.time_column, *exported.times}
        counts = set(exported.counts)
        columns: list[str] = []
        self._steps: list[tuple[int, str, tuple[str, ...]]] = []
        for index, column in enumerate(exported.table.columns):
            flat = NESTED.get(column, ())
            if column in NESTED and fmt == "csv" and flat is not None:
                columns.extend(flat)
                self._steps.append((index, "flatten", flat))
                continue
            columns.append(column)
            if column in NESTED:
                self._steps.append((index, "json" if fmt != "csv" else "keep", ()))
            elif column in times and time_format == "iso":
                self._steps.append((index, "iso", ()))
            elif column in counts or column in times:
                self._steps.append((index, "whole", ()))
            else:
                self._steps.append((index, "keep", ()))
        self.columns: tuple[str, ...] = tuple(columns)

    def rows(self, page: Sequence[Row]) -> list[Row]:
        return [self._row(row) for row in page]

    def _row(self, row: Row) -> Row:
        out: list[Any] = []
        for index, step, flat in self._steps:
            value = row[index]
            if step == "keep":
                out.append(value)
            elif step == "whole":
                out.append(_whole(value))
            elif step == "iso":
                out.append(None if value is None else iso_time(value))
            elif step == "json":
                out.append(_json_value(value))
            else:
                out.extend(_flattened(_json_value(value), flat))
        return tuple(out)


def _flattened(value: Any, names: tuple[str, ...]) -> list[Any]:
    """A JSON list's elements, or a JSON object's values in the order of ``names`` (their
    suffixes after the first ``_``; a missing key is 0: nothing was counted there)."""
    if isinstance(value, list):
        return [*value[: len(names)], *[None] * (len(names) - len(value))]
    if isinstance(value, dict):
        return [value.get(name.partition("_")[2], 0) for name in names]
    return [None] * len(names)


class RowWriter(Protocol):
    def begin(self, columns: Sequence[str]) -> None: ...

    def write(self, rows: Sequence[Row]) -> None: ...

    def end(self) -> None: ...


class CsvWriter:
    """RFC 4180: a header row, CRLF line ends, fields quoted when needed; None is empty.

    Open a file for it with ``newline=""``, as the csv module asks."""

    def __init__(self, out: TextIO) -> None:
        self._csv = csv.writer(out, lineterminator="\r\n")

    def begin(self, columns: Sequence[str]) -> None:
        self._csv.writerow(columns)

    def write(self, rows: Sequence[Row]) -> None:
        self._csv.writerows(rows)

    def end(self) -> None:
        pass


class JsonWriter:
    """One JSON array of objects, written as it goes: ``[``, objects separated by ``,``, ``]``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._columns: Sequence[str] = ()
        self._first = True

    def begin(self, columns: Sequence[str]) -> None:
        self._columns = columns
        self._out.write("[")

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self._out.write("\n" if self._first else ",\n")
            self._out.write(json.dumps(dict(zip(self._columns, row, strict=True))))
            self._first = False

    def end(self) -> None:
        self._out.write("]\n" if self._first else "\n]\n")


class NdjsonWriter:
    """One JSON object per line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._columns: Sequence[str] = ()

    def begin(self, columns: Sequence[str]) -> None:
        self._columns = columns

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self._out.write(json.dumps(dict(zip(self._columns, row, strict=True))) + "\n")

    def end(self) -> None:
        pass


def row_writer(fmt: Format, out: TextIO) -> RowWriter:
    if fmt == "csv":
        return CsvWriter(out)
    if fmt == "json":
        return JsonWriter(out)
    return NdjsonWriter(out)


async def export_to(
    sink: Readable,
    selection: Selection,
    writer: RowWriter,
    *,
    page_rows: int = PAGE_ROWS,
    progress: Callable[[int], None] | None = None,
    shape: Shape | None = None,
) -> int:
    """Write the selected rows with ``writer``, shaped by ``shape`` (as stored without one);
    return how many. ``progress`` hears the running count after each page. The first page is
    read before anything is written: an export that cannot read (no database, no table) fails
    without output."""
    written = 0
    async with contextlib.aclosing(export_rows(sink, selection, page_rows=page_rows)) as pages:
        page = await anext(pages, None)
        writer.begin(selection.table.columns if shape is None else shape.columns)
        while page is not None:
            writer.write(page if shape is None else shape.rows(page))
            written += len(page)
            if progress is not None:
                progress(written)
            page = await anext(pages, None)
    writer.end()
    return written
