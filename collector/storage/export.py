"""Reading stored rows back out: ``bwmon export`` streams a table as CSV, JSON or NDJSON.

A table is read in pages with keyset pagination on its primary key — each page is
``WHERE key > last key of the previous page ORDER BY key LIMIT n`` — so memory stays at one page
whatever the table's size, a page costs the same at the end of the table as at its start (no
``OFFSET``), and a row written during the export is never seen twice.

``Selection`` builds the SQL (pure), ``export_rows`` runs it page by page against a sink, and
the writers turn pages into text on a stream. Never writes to the database.

Errors: a bad selection is ``ValueError`` (the caller's mistake, before any query); the sink's
``StorageError``/``StorageUnavailable`` pass through unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

from collector.storage.schema import ALERTS, HTTP_MINUTE, MEETINGS, RTC_MINUTE, Dialect, Row, Table

Kind = Literal["rtc", "http", "meetings", "alerts"]
Format = Literal["csv", "json", "ndjson"]
PAGE_ROWS = 5_000


@dataclass(frozen=True)
class Exported:
    """What can be exported of a table: its time column and the filters that apply to it."""

    table: Table
    time_column: str
    filters: frozenset[str]


EXPORTS: dict[Kind, Exported] = {
    "rtc": Exported(RTC_MINUTE, "minute", frozenset({"meeting", "participant"})),
    "http": Exported(HTTP_MINUTE, "minute", frozenset({"service"})),
    "meetings": Exported(MEETINGS, "started_at", frozenset({"meeting"})),
    "alerts": Exported(ALERTS, "raised_at", frozenset({"meeting", "participant"})),
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


def parse_time(text: str) -> float:
    """Unix seconds from a number (``1764410400``) or ISO 8601 (``2026-11-29T10:00:00Z``);
    an ISO time without an offset is UTC."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither ISO 8601 (2026-11-29T10:00:00Z) nor Unix seconds"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite time")
    return value


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
) -> int:
    """Write the selected rows with ``writer``; return how many. ``progress`` hears the running
    count after each page. The first page is read before anything is written: an export that
    cannot read (no database, no table) fails without output."""
    written = 0
    async with contextlib.aclosing(export_rows(sink, selection, page_rows=page_rows)) as pages:
        page = await anext(pages, None)
        writer.begin(selection.table.columns)
        while page is not None:
            writer.write(page)
            written += len(page)
            if progress is not None:
                progress(written)
            page = await anext(pages, None)
    writer.end()
    return written
