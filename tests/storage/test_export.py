"""``bwmon export``: keyset pages against SQLite and the real MariaDB, the writers, the command."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from collector.aggregate.engine import Engine
from collector.storage.export import (
    EXPORTS,
    Format,
    Kind,
    Selection,
    export_rows,
    export_to,
    parse_time,
    row_writer,
)
from collector.storage.flusher import batch_of
from collector.storage.schema import ALERTS, MEETINGS, RTC_MINUTE, Batch, Row, alert_row
from collector.storage.schema import meeting_row as summary_row
from collector.storage.sinks import SqliteSink, StorageError
from protocol import RtcSample
from tests.helpers import bwmon
from tests.storage.test_sinks import RAISED, SUMMARY, VIDEO_COLUMNS, batch, rtc, sink

__all__ = ["sink"]  # the two-backend fixture, shared with the sink contract tests

T0 = 1_800_000_000
HOSTILE = "a\"b,c'd;\n--é😀\\"  # quotes, comma, newline, unicode, backslash


def rtc_rows(count: int) -> Batch:
    """``count`` rows over 5 participants (one hostile) and consecutive minutes."""
    people = ["p0", "p1", "p2", "p3", HOSTILE]
    return batch(*(rtc(T0 + 60 * (i // 5), people[i % 5], video=i + 0.25) for i in range(count)))


async def collect(sink: Any, selection: Selection, page_rows: int) -> list[list[Row]]:
    return [page async for page in export_rows(sink, selection, page_rows=page_rows)]


async def all_rows(sink: Any, selection: Selection) -> list[Row]:
    return [row for page in await collect(sink, selection, 1_000_000) for row in page]


@pytest.mark.parametrize("count", [49, 50])
async def test_pages_give_every_row_once_in_key_order(sink: Any, count: int) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(count))
    selection = Selection("rtc")
    pages = await collect(sink, selection, page_rows=7)
    assert [len(p) for p in pages] == [7] * (count // 7) + ([count % 7] if count % 7 else [])
    keys = [selection.key_of(row) for page in pages for row in page]
    assert len(set(keys)) == count
    assert keys == sorted(keys)  # utf8mb4_bin and SQLite's BINARY order as Python's str order
    stored = await sink.query(
        "SELECT meeting, participant, connection, minute, segment FROM rtc_minute"
    )
    assert sorted(keys) == sorted(tuple(k) for k in stored)


async def test_filters_on_time_participant_and_meeting(sink: Any) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(50))  # minutes T0 … T0 + 9 min, 5 rows each
    between = Selection("rtc", start=T0 + 120, end=T0 + 300)  # start kept, end left out
    rows = [r for page in await collect(sink, between, 4) for r in page]
    minutes = RTC_MINUTE.columns.index("minute")
    assert sorted({r[minutes] for r in rows}) == [T0 + 120, T0 + 180, T0 + 240]
    assert len(rows) == 15

    hostile = Selection("rtc", participant=HOSTILE, start=T0 + 60)
    rows = [r for page in await collect(sink, hostile, 3) for r in page]
    assert [r[1] for r in rows] == [HOSTILE] * 9
    assert [r[minutes] for r in rows] == [T0 + 60 * i for i in range(1, 10)]

    assert await all_rows(sink, Selection("rtc", meeting="nobody")) == []
    assert len(await all_rows(sink, Selection("rtc", meeting="m1"))) == 50


async def test_meetings_alerts_and_http_filter_on_their_own_columns(sink: Any) -> None:
    await sink.migrate()
    b = rtc_rows(1)
    b.add(MEETINGS, [summary_row(msgspec.structs.replace(SUMMARY, started_at=T0 + 0.5))])
    b.add(MEETINGS, [summary_row(msgspec.structs.replace(SUMMARY, meeting=HOSTILE))])
    cleared = msgspec.structs.replace(
        RAISED, id="x", key=("m2",), raised_at=T0 + 900.25, state="cleared", at=T0 + 960.5
    )
    b.add(ALERTS, [alert_row(cleared)])
    await sink.write(b)

    meetings = await all_rows(sink, Selection("meetings", start=T0 + 0.5))
    assert [(r[0], r[1]) for r in meetings] == [("m1", T0 + 0.5)]  # started_at, not minute
    assert [r[0] for r in await all_rows(sink, Selection("meetings", meeting=HOSTILE))] == [HOSTILE]

    alerts = await all_rows(sink, Selection("alerts", meeting="m2"))
    assert alerts == [
        ("x", T0 + 900.25, "high_rtt", "m2", None, "warning", 512.0, 400.0, T0 + 960.5)
    ]
    assert [r[0] for r in await all_rows(sink, Selection("alerts", participant="p1"))] == [
        RAISED.id
    ]
    assert await all_rows(sink, Selection("alerts", end=T0 + 10)) == []  # raised at T0 + 10

    assert len(await all_rows(sink, Selection("http", service="api"))) == 1
    assert await all_rows(sink, Selection("http", service="web")) == []


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
async def test_every_format_parses_back_to_the_stored_values(sink: Any, fmt: Format) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(12))
    selection = Selection("rtc")
    stored = await all_rows(sink, selection)
    out = io.StringIO(newline="")
    seen: list[int] = []
    written = await export_to(
        sink, selection, row_writer(fmt, out), page_rows=5, progress=seen.append
    )
    assert written == 12
    assert seen == [5, 10, 12]
    assert parse(fmt, out.getvalue()) == [
        dict(zip(RTC_MINUTE.columns, row, strict=True)) for row in stored
    ]
    assert sum(HOSTILE in row for row in stored) == 2  # participants p0 … p3, HOSTILE


def parse(fmt: Format, text: str) -> list[dict[str, Any]]:
    """Back to Python values; CSV's strings are converted with the types of the columns."""
    if fmt == "json":
        parsed: list[dict[str, Any]] = json.loads(text)
        return parsed
    if fmt == "ndjson":
        assert text.endswith("\n")
        return [json.loads(line) for line in text.split("\n")[:-1]]
    assert text.endswith("\r\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert header == list(RTC_MINUTE.columns)
    return [{c: typed(c, v) for c, v in zip(header, line, strict=True)} for line in reader]


def typed(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in ("meeting", "participant", "connection", "relay", "turn_server"):
        return text
    if column in ("minute", "segment", "samples", "gaps", "resets", "remote_relayed"):
        return int(text)
    if column in ("width_in", "height_in", "width_out", "height_out"):
        return int(text)
    return float(text)


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_an_empty_export_is_still_a_valid_document(fmt: Format) -> None:
    out = io.StringIO(newline="")
    writer = row_writer(fmt, out)
    writer.begin(("a", "b"))
    writer.end()
    assert out.getvalue() == {"csv": "a,b\r\n", "json": "[]\n", "ndjson": ""}[fmt]


@pytest.mark.parametrize(("dialect", "mark", "quote"), [("sqlite", "?", '"'), ("mysql", "%s", "`")])
def test_the_next_page_is_a_keyset_query_in_the_dialect(
    dialect: Any, mark: str, quote: str
) -> None:
    selection = Selection("alerts", start=1.0, participant="p1")
    sql, params = selection.page_query(dialect, ("id-9", 5.5), 100)
    q = quote
    assert sql == (
        f"SELECT {', '.join(f'{q}{c}{q}' for c in ALERTS.columns)} FROM {q}alerts{q} "
        f"WHERE {q}participant{q} = {mark} AND {q}raised_at{q} >= {mark} "
        f"AND {q}id{q} >= {mark} "
        f"AND ({q}id{q} > {mark} OR ({q}id{q} = {mark} AND ({q}raised_at{q} > {mark}))) "
        f"ORDER BY {q}id{q}, {q}raised_at{q} LIMIT 100"
    )
    assert params == ["p1", 1.0, "id-9", "id-9", "id-9", 5.5]
    assert "OFFSET" not in sql


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"what": "rtc", "service": "api"}, "--service does not apply to rtc"),
        ({"what": "http", "participant": "p1"}, "--participant does not apply to http"),
        ({"what": "meetings", "participant": "p1"}, "--participant does not apply"),
        ({"what": "rtc", "meeting": ""}, "--meeting is empty"),
        ({"what": "rtc", "start": 10.0, "end": 10.0}, "--end must be after --start"),
        ({"what": "rtc", "end": float("nan")}, "--end is not a finite time"),
        ({"what": "users"}, "cannot export 'users'"),
    ],
)
def test_a_bad_selection_is_refused_before_any_query(kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection(**kwargs)


def test_times_are_iso_8601_or_unix_seconds() -> None:
    assert parse_time("2026-11-29T10:00:00Z") == 1_795_946_400.0
    assert parse_time("2026-11-29T11:00:00+01:00") == 1_795_946_400.0
    assert parse_time("2026-11-29T10:00:00") == 1_795_946_400.0  # no offset: UTC
    assert parse_time(" 1795946400.5 ") == 1_795_946_400.5
    for bad in ("tomorrow", "inf", "", "-1y", "1h", "- 1h", "-h", "now-1h"):
        with pytest.raises(ValueError, match=r"not a time|not a finite time"):
            parse_time(bad)


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_the_rtc_export_has_the_minutes_frame_rates_resolutions_and_relay(
    sink: Any, fmt: Format
) -> None:
    """From samples to the export: the engine's minute row, stored, read back with the
    frame rates and bandwidth estimate averaged, the last resolutions, the peer's relay."""
    engine = Engine()
    video: dict[str, Any] = dict(width_in=1280, height_in=720, width_out=640, height_out=360)
    path: dict[str, Any] = dict(local_candidate="host", remote_candidate="relay")
    engine.add(
        [sample(1, fps_in=30.0, fps_out=24.0, available_outgoing_bps=1e6, **video, **path)], T0
    )
    engine.add([sample(2, fps_in=25.0, width_in=960, height_in=540)], T0 + 1)
    engine.add([sample(1, participant="quiet")], T0 + 2)  # sent none of them
    engine.close_minutes(T0 + 59)
    await sink.migrate()
    await sink.write(batch_of(engine.drain()))
    out = io.StringIO(newline="")
    assert await export_to(sink, Selection("rtc"), row_writer(fmt, out)) == 2
    exported = {row["participant"]: row for row in parse(fmt, out.getvalue())}
    got = {c: exported["p"][c] for c in VIDEO_COLUMNS}
    assert got == dict(zip(VIDEO_COLUMNS, (27.5, 24.0, 960, 540, 640, 360, 1e6, 1), strict=True))
    assert [exported["quiet"][c] for c in VIDEO_COLUMNS] == [None] * len(VIDEO_COLUMNS)


def sample(seq: int, participant: str = "p", **fields: Any) -> RtcSample:
    return RtcSample(
        meeting="m", participant=participant, connection="c", seq=seq, client_ts=1.0, **fields
    )


def test_every_kind_exports_a_table_with_its_time_column() -> None:
    kinds: list[Kind] = ["rtc", "http", "meetings", "alerts", "rtc_hour", "http_hour"]
    assert list(EXPORTS) == kinds
    for exported in EXPORTS.values():
        assert exported.time_column in exported.table.columns


# The command, as a user runs it.


def sqlite_config(tmp_path: Path, rows: int) -> Path:
    async def fill() -> None:
        sqlite = SqliteSink(tmp_path / "state" / "bwmon.db")
        try:
            await sqlite.migrate()
            await sqlite.write(rtc_rows(rows))
        finally:
            await sqlite.close()

    trio.run(fill)
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path / 'state'}'\n")
    return config


def test_export_command_writes_ndjson_to_stdout(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, 20)
    result = bwmon("export", "rtc", "--config", str(config), "--format", "ndjson")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 20
    assert {tuple(r[c] for c in VIDEO_COLUMNS) for r in rows} == {
        (29.5, 24.25, 1280, 720, 640, 360, 2_500_000.0, 1)
    }
    assert sum(r["participant"] == HOSTILE for r in rows) == 4
    keys = [tuple(r[c] for c in RTC_MINUTE.key) for r in rows]
    assert keys == sorted(keys)


def test_export_command_filters_into_a_csv_file(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, 20)
    output = tmp_path / "out.csv"
    result = bwmon(
        "export", "rtc", "-c", str(config), "--participant", HOSTILE,
        "--start", "2027-01-15T08:01:00Z", "--end", str(T0 + 180), "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    with output.open(newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert [(line["participant"], line["minute"]) for line in lines] == [  # CSV: ISO times
        (HOSTILE, "2027-01-15T08:01:00Z"),
        (HOSTILE, "2027-01-15T08:02:00Z"),
    ]
    assert list(tmp_path.glob(".*.part")) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "api"], "bwmon export: --service does not apply to rtc"),
        (["--start", "soon"], "bwmon export: 'soon' is not a time"),
    ],
)
def test_export_command_refuses_bad_arguments_with_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = bwmon("export", "rtc", "--config", str(sqlite_config(tmp_path, 1)), *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert result.stdout == ""


def test_export_command_from_an_unreachable_mysql_is_one_line_and_exit_1(
    tmp_path: Path,
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nbackend = 'mysql'\nmysql_port = 1\n")
    output = tmp_path / "out.json"
    result = bwmon("export", "alerts", "--config", str(config), "-f", "json", "-o", str(output))
    assert result.returncode == 1
    assert result.stderr.startswith("bwmon export: mysql:")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [config]  # no half-written output left behind


# Read-only: the command never creates a database or a directory, and a relative state_dir is
# relative to the configuration file's directory, wherever the command runs from.


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content ("" for a directory)."""
    return {
        str(p.relative_to(root)): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def test_export_with_a_relative_state_dir_reads_it_from_any_directory(tmp_path: Path) -> None:
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    elsewhere.mkdir()
    sqlite_config(etc, 5)  # fills etc/state/bwmon.db
    config = etc / "collector.toml"
    config.write_text("[storage]\nstate_dir = 'state'\n")
    result = bwmon("export", "rtc", "--config", str(config), "-f", "ndjson", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("relative", [True, False])
def test_export_of_a_missing_database_names_it_creates_nothing_and_prints_nothing(
    tmp_path: Path, relative: bool
) -> None:
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    config = etc / "collector.toml"
    state = "state" if relative else str(tmp_path / "var" / "state")
    config.write_text(f"[storage]\nstate_dir = '{state}'\n")
    before = tree(tmp_path)
    result = bwmon("export", "rtc", "--config", str(config), cwd=elsewhere)
    assert result.returncode == 1
    assert result.stdout == ""
    looked_for = (etc / "state" if relative else tmp_path / "var" / "state") / "bwmon.db"
    assert result.stderr.startswith(f"bwmon export: no database at {looked_for} ")
    assert result.stderr.count("\n") == 1
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "no such table: rtc_minute"), (b"not sqlite\n", "file is not a database")],
    ids=["empty", "not a database"],
)
def test_export_of_a_database_without_rows_to_read_fails_before_writing_and_changes_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "state").mkdir()
    database = tmp_path / "state" / "bwmon.db"
    database.write_bytes(content)  # as made by something else (an empty file is a database)
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nstate_dir = 'state'\n")
    before = tree(tmp_path)
    result = bwmon("export", "rtc", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""  # not even the CSV header
    assert result.stderr == f"bwmon export: sqlite {database}: {message}\n"
    assert tree(tmp_path) == before


async def test_a_failed_first_query_writes_nothing(sink: Any) -> None:
    out = io.StringIO()
    with pytest.raises(StorageError, match="rtc_minute"):  # no table: nothing was migrated
        await export_to(sink, Selection("rtc"), row_writer("csv", out))
    assert out.getvalue() == ""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_reading_the_daemons_database_leaves_it_the_daemons(tmp_path: Path) -> None:
    """The daemon's user owns its SQLite files; reading them as root (``sudo bwmon export``
    while the daemon is stopped) must not leave root-owned ``-wal``/``-shm`` files behind,
    which the daemon could not open for writing."""
    daemon_user = 65534  # nobody
    state = tmp_path / "state"
    config = sqlite_config(tmp_path, 3)
    for path in [state, *state.iterdir()]:
        os.chown(path, daemon_user, daemon_user)
    assert sorted(p.name for p in state.iterdir()) == ["bwmon.db"]  # closed: no companions
    result = bwmon("export", "rtc", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert {p.name: p.stat().st_uid for p in state.iterdir()} == {
        name: daemon_user for name in ("bwmon.db", "bwmon.db-shm", "bwmon.db-wal")
    }
