"""What an export looks like to people and tools: ISO or Unix times, whole counts as integers,
nested values as real JSON (JSON, NDJSON) or flattened columns (CSV), relative times, the
hourly roll-ups, and the progress a terminal shows. Against SQLite and the real MariaDB."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from collector.storage.export import (
    EXPORTS,
    NESTED,
    Format,
    Kind,
    Selection,
    Shape,
    TimeFormat,
    export_to,
    iso_time,
    parse_time,
    row_writer,
)
from tests.storage.test_export import T0, rtc_rows, sqlite_config
from tests.storage.test_sinks import SUMMARY, sink

__all__ = ["sink"]

NOW = parse_time("2027-01-15T11:25:07.5Z")


def test_relative_times_count_back_from_now() -> None:
    assert parse_time("now", NOW) == NOW
    assert parse_time("-90s", NOW) == NOW - 90
    assert parse_time("-15m", NOW) == NOW - 900
    assert parse_time("-1h", NOW) == NOW - 3600
    assert parse_time("-1h30m", NOW) == NOW - 5400
    assert parse_time("-1.5h", NOW) == NOW - 5400
    assert parse_time(" -7d ", NOW) == NOW - 7 * 86_400
    assert parse_time("-2W", NOW) == NOW - 14 * 86_400
    assert parse_time("today", NOW) == parse_time("2027-01-15T00:00:00Z")
    assert parse_time("Yesterday", NOW) == parse_time("2027-01-14T00:00:00Z")
    before = time.time()
    assert before - 3600 <= parse_time("-1h") <= time.time() - 3600  # the clock by default


@given(st.text(max_size=30))
def test_any_text_is_a_finite_time_or_a_value_error(text: str) -> None:
    try:
        value = parse_time(text, NOW)
    except ValueError as exc:
        message = str(exc)
    else:
        assert math.isfinite(value)
        return
    assert "time" in message


@given(st.integers(min_value=0, max_value=10**13))
def test_iso_times_read_back_to_the_millisecond(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    text = iso_time(seconds)
    assert text.endswith("Z")
    assert ("." in text) == (milliseconds % 1000 != 0)
    assert abs(parse_time(text) - seconds) < 1e-3


def test_iso_times_are_utc_seconds_or_milliseconds() -> None:
    assert iso_time(1_800_000_000) == "2027-01-15T08:00:00Z"
    assert iso_time(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"


def test_every_shaped_column_is_a_column_of_its_table() -> None:
    for exported in EXPORTS.values():
        columns = exported.table.columns
        assert set(exported.times) | set(exported.counts) <= set(columns)
        assert not set(exported.times) & set(exported.counts)


async def export_text(sink: Any, what: Kind, fmt: Format, time_format: TimeFormat) -> str:
    out = io.StringIO(newline="")
    await export_to(
        sink, Selection(what), row_writer(fmt, out), shape=Shape(what, fmt, time_format)
    )
    return out.getvalue()


async def test_json_has_integers_nested_values_and_unix_or_iso_times(sink: Any) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(3))
    http = json.loads(await export_text(sink, "http", "json", "unix"))[0]
    assert http["latency_hist"] == [1] * 12  # a list, not its JSON text
    assert all(type(v) is int for v in http["latency_hist"])
    assert (http["requests"], http["status_2xx"], http["bytes_out"]) == (12, 11, 5000)
    assert all(type(http[c]) is int for c in ("requests", "status_2xx", "bytes_in", "minute"))
    assert http["minute"] == 1_800_000_000
    assert type(http["latency_sum_ms"]) is float  # not a count: stays as stored

    meeting = json.loads((await export_text(sink, "meetings", "ndjson", "iso")).splitlines()[0])
    assert meeting["seconds_by_level"] == SUMMARY.seconds_by_level
    assert meeting["relayed_bytes_by_turn_server"] == {"turn:t1:3478": 500_000}
    assert meeting["started_at"] == "2027-01-15T08:00:00Z"
    assert meeting["ended_at"] == "2027-01-15T08:10:00Z"
    assert (meeting["peak_participants"], meeting["bytes_up"]) == (3, 1_000_000)
    assert type(meeting["bytes_up"]) is int
    assert meeting["relay_cost"] == SUMMARY.relay_cost

    alert = json.loads(await export_text(sink, "alerts", "json", "iso"))[0]
    assert (alert["raised_at"], alert["cleared_at"]) == ("2027-01-15T08:00:10Z", None)

    rtc = json.loads(await export_text(sink, "rtc", "json", "unix"))[0]
    assert type(rtc["video_bytes_sent"]) is float  # 0.25 past a whole byte in these rows
    assert type(rtc["audio_bytes_sent"]) is int
    assert type(rtc["jitter_buffer_delay_s"]) is float  # seconds, not a count


async def test_csv_flattens_nested_values_into_columns(sink: Any) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(3))
    (http,) = csv.DictReader(io.StringIO(await export_text(sink, "http", "csv", "iso")))
    assert "latency_hist" not in http
    latency = [c for c in http if c.startswith("latency_") and c != "latency_sum_ms"]
    assert latency == [*(f"latency_le_{b}ms" for b in (5, 10, 25, 50, 100, 250, 500, 1000)),
                       "latency_le_2500ms", "latency_le_5000ms", "latency_le_10000ms",
                       "latency_gt_10000ms"]  # fmt: skip
    assert [http[c] for c in latency] == ["1"] * 12
    assert (http["minute"], http["requests"], http["bytes_out"]) == (
        "2027-01-15T08:00:00Z", "12", "5000"
    )  # fmt: skip

    (meeting,) = csv.DictReader(io.StringIO(await export_text(sink, "meetings", "csv", "unix")))
    levels = {c: meeting[c] for c in meeting if c.startswith("seconds_")}
    assert levels == {
        "seconds_excellent": "0",  # no second at that level
        "seconds_good": "500",
        "seconds_fair": "100",
        "seconds_poor": "0",
        "seconds_bad": "0",
    }
    # Open-ended keys (TURN servers) cannot be columns: their JSON text, as stored.
    assert json.loads(meeting["relayed_bytes_by_turn_server"]) == {"turn:t1:3478": 500000.0}
    assert meeting["started_at"] == "1800000000"


def test_the_csv_header_names_every_flattened_column_once() -> None:
    for what in EXPORTS:
        columns = EXPORTS[what].table.columns
        for fmt in ("csv", "json", "ndjson"):
            shape = Shape(what, fmt, "iso")
            assert len(set(shape.columns)) == len(shape.columns)
            if fmt != "csv":
                assert shape.columns == columns
            else:
                assert not {"latency_hist", "seconds_by_level"} & set(shape.columns)
                assert set(shape.columns) >= set(columns) - set(NESTED)


async def test_the_hourly_roll_ups_are_exported_with_their_sums(sink: Any) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(10))  # 2 minutes of 5 participants, one http minute
    await sink.retain(cutoff=int(T0) + 3600)
    rows = json.loads(await export_text(sink, "rtc_hour", "json", "iso"))
    assert len(rows) == 5  # one per participant's connection
    p0 = next(r for r in rows if r["participant"] == "p0")
    assert (p0["hour"], p0["minutes"], p0["samples"]) == ("2027-01-15T08:00:00Z", 2, 120)
    assert p0["video_bytes_sent"] == 0.25 + 5.25  # rows 0 and 5 of rtc_rows
    (http,) = json.loads(await export_text(sink, "http_hour", "json", "unix"))
    assert (http["hour"], http["requests"], http["bytes_out"]) == (T0, 12, 5000)
    assert await export_text(sink, "rtc", "json", "iso") == "[]\n"  # rolled up, then deleted
    only = Selection("rtc_hour", participant="p1", start=T0, end=T0 + 3600)
    out = io.StringIO(newline="")
    assert await export_to(sink, only, row_writer("ndjson", out)) == 1


async def test_the_count_query_counts_what_the_pages_give(sink: Any) -> None:
    await sink.migrate()
    await sink.write(rtc_rows(23))
    for selection in (Selection("rtc"), Selection("rtc", participant="p1", start=T0 + 60)):
        sql, params = selection.count_query(sink.dialect)
        ((count,),) = await sink.query(sql, params)
        out = io.StringIO(newline="")
        assert count == await export_to(sink, selection, row_writer("csv", out))


def test_on_a_terminal_the_export_shows_progress_then_a_summary(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, 20)
    output = tmp_path / "out.csv"
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    command = [sys.executable, "-m", "cli.main", "export", "rtc", "-c", str(config)]
    process = subprocess.Popen(
        [*command, "--output", str(output)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=terminal, env=env, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the command has exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    assert process.wait(timeout=30) == 0
    os.close(controller)
    text = seen.decode(errors="replace")
    assert "/20" in text  # the progress bar knows the total
    assert "bwmon export: 20 rows in " in text
    assert f"to {output}" in text
    with output.open(newline="") as written:
        assert len(list(csv.DictReader(written))) == 20
