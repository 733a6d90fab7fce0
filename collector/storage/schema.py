"""The tables, as the sinks write them: rows of the engine → column tuples → one upsert per table.

The DDL lives in versioned migration files, ``deploy/migrations/<dialect>/NNNN_name.sql``
(packaged as ``collector/storage/migrations``); this module knows which columns each table has,
which of them are its key, and how to build the multi-row upsert of a dialect. Every write is an
upsert of complete values — never ``col = col + ?`` — so writing a batch twice leaves the same
table content.

Pure: builds strings and tuples, never talks to a database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from collector.aggregate.alerts import AlertEvent
from collector.aggregate.http import HttpMinuteRow
from collector.aggregate.records import MeetingSummary, RtcMinuteRow
from collector.aggregate.rtc import COUNTERS

Dialect = Literal["mysql", "sqlite"]
Row = tuple[Any, ...]

# Every column holds what the protocol allows (PROTOCOL.md §5.1): ids of 128 code points in
# VARCHAR(128) (utf8mb4 counts characters, not bytes), TURN servers of 512 in VARCHAR(512), and
# the meetings' JSON object of TURN servers in MEDIUMTEXT (migration 0004). That object has one
# entry per server, 12 characters per code point at worst (``\ud83d\ude00``); past this many
# characters the servers with the fewest bytes are summed under OTHER_TURN_SERVERS, a key no
# server has (an identifier has no space), so the row stays well inside MEDIUMTEXT and the
# server's max_allowed_packet.
TURN_SERVERS_JSON_MAX_CHARS: Final = 1_000_000
OTHER_TURN_SERVERS: Final = "(other servers)"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    # Columns an upsert leaves alone when the row exists (an alert's raise time, say).
    keep: tuple[str, ...] = ()

    def upsert(self, dialect: Dialect, rows: int) -> str:
        """One multi-row upsert for ``rows`` rows, with placeholders for ``execute``."""
        q = "`" if dialect == "mysql" else '"'
        mark = "%s" if dialect == "mysql" else "?"
        names = ", ".join(f"{q}{c}{q}" for c in self.columns)
        one = "(" + ", ".join([mark] * len(self.columns)) + ")"
        values = ", ".join([one] * rows)
        update = [c for c in self.columns if c not in self.key and c not in self.keep]
        if dialect == "mysql":
            sets = ", ".join(f"{q}{c}{q} = VALUES({q}{c}{q})" for c in update)
            return (
                f"INSERT INTO {q}{self.name}{q} ({names}) VALUES {values} "
                f"ON DUPLICATE KEY UPDATE {sets}"
            )
        sets = ", ".join(f"{q}{c}{q} = excluded.{q}{c}{q}" for c in update)
        keys = ", ".join(f"{q}{c}{q}" for c in self.key)
        return (
            f"INSERT INTO {q}{self.name}{q} ({names}) VALUES {values} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {sets}"
        )


RTC_MINUTE = Table(
    "rtc_minute",
    (
        "meeting",
        "participant",
        "connection",
        "minute",
        "segment",
        "samples",
        "gaps",
        "resets",
        *COUNTERS,
        "rtt_ms_avg",
        "audio_jitter_ms_avg",
        "video_jitter_ms_avg",
        "mos_avg",
        "mos_min",
        "quality_avg",
        "quality_min",
        "relay",
        "turn_server",
        "relayed_bytes",
        # Added by migration 0003: a row of an earlier build, in the spool or a checkpoint,
        # lacks these last columns, which are all nullable (``pad_row``).
        "fps_in_avg",
        "fps_out_avg",
        "width_in",
        "height_in",
        "width_out",
        "height_out",
        "bwe_bps_avg",
        "remote_relayed",
    ),
    key=("meeting", "participant", "connection", "minute", "segment"),
)
HTTP_MINUTE = Table(
    "http_minute",
    (
        "service",
        "route",
        "method",
        "minute",
        "segment",
        "requests",
        "status_1xx",
        "status_2xx",
        "status_3xx",
        "status_4xx",
        "status_5xx",
        "bytes_in",
        "bytes_out",
        "latency_sum_ms",
        "latency_hist",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
    ),
    key=("service", "route", "method", "minute", "segment"),
)
MEETINGS = Table(
    "meetings",
    (
        "meeting",
        "started_at",
        "ended_at",
        "peak_participants",
        "bytes_up",
        "bytes_down",
        "relayed_bytes",
        "relay_cost",
        "relayed_bytes_by_turn_server",
        "quality_avg",
        "quality_worst",
        "seconds_by_level",
    ),
    key=("meeting", "started_at"),
)
ALERTS = Table(
    "alerts",
    (
        "id",
        "raised_at",
        "rule",
        "meeting",
        "participant",
        "severity",
        "value",
        "threshold",
        "cleared_at",
    ),
    key=("id", "raised_at"),
    keep=("value", "threshold"),  # the values that raised it; a clear only sets cleared_at
)
TABLES = (RTC_MINUTE, HTTP_MINUTE, MEETINGS, ALERTS)


def rtc_row(row: RtcMinuteRow) -> Row:
    return (
        row.meeting,
        row.participant,
        row.connection,
        row.minute,
        row.segment,
        row.samples,
        row.gaps,
        row.resets,
        *(row.counters[c] for c in COUNTERS),
        row.rtt_ms_avg,
        row.audio_jitter_ms_avg,
        row.video_jitter_ms_avg,
        row.mos_avg,
        row.mos_min,
        row.quality_avg,
        row.quality_min,
        row.relay,
        row.turn_server,
        row.relayed_bytes,
        row.fps_in_avg,
        row.fps_out_avg,
        row.width_in,
        row.height_in,
        row.width_out,
        row.height_out,
        row.bwe_bps_avg,
        row.remote_relayed,
    )


def http_row(row: HttpMinuteRow) -> Row:
    return (
        row.service,
        row.route,
        row.method,
        row.minute,
        row.segment,
        row.requests,
        *row.status,
        row.bytes_in,
        row.bytes_out,
        row.latency_sum_ms,
        json.dumps(row.latency_hist),
        row.latency.p50,
        row.latency.p95,
        row.latency.p99,
        row.latency.max,
    )


def meeting_row(summary: MeetingSummary) -> Row:
    return (
        summary.meeting,
        summary.started_at,
        summary.ended_at,
        summary.peak_participants,
        summary.bytes_up,
        summary.bytes_down,
        summary.relayed_bytes,
        summary.relay_cost,
        turn_servers_json(summary.relayed_bytes_by_turn_server),
        summary.quality_avg,
        summary.quality_worst,
        json.dumps(summary.seconds_by_level, sort_keys=True),
    )


def turn_servers_json(by_server: dict[str, float]) -> str:
    """The relayed bytes per TURN server as a JSON object of at most
    ``TURN_SERVERS_JSON_MAX_CHARS`` characters: the servers with the most bytes, the rest (if
    any) summed under ``OTHER_TURN_SERVERS``; the values add up to the meeting's total."""
    text = json.dumps(by_server, sort_keys=True)
    if len(text) <= TURN_SERVERS_JSON_MAX_CHARS:
        return text
    kept: dict[str, float] = {}
    other = 0.0
    room = TURN_SERVERS_JSON_MAX_CHARS - len(json.dumps({OTHER_TURN_SERVERS: float(2**63)}))
    for server, relayed in sorted(by_server.items(), key=lambda item: (-item[1], item[0])):
        entry = len(json.dumps({server: relayed})) + 1  # with ", " instead of the braces
        if entry <= room:
            kept[server] = relayed
            room -= entry
        else:
            other += relayed
    kept[OTHER_TURN_SERVERS] = kept.get(OTHER_TURN_SERVERS, 0.0) + other
    return json.dumps(kept, sort_keys=True)


def alert_row(event: AlertEvent) -> Row:
    return (
        event.id,
        event.raised_at,
        event.rule,
        event.key[0],
        event.key[1] if len(event.key) > 1 else None,
        event.severity,
        event.value,
        event.threshold,
        event.at if event.state == "cleared" else None,
    )


@dataclass
class Batch:
    """Rows for each table, ready to write; the unit of a flush, a retry and the spool."""

    rows: dict[str, list[Row]] = field(default_factory=dict)

    def add(self, table: Table, rows: list[Row]) -> None:
        if rows:
            self.rows.setdefault(table.name, []).extend(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def merge(self, other: Batch) -> None:
        for name, rows in other.rows.items():
            self.rows.setdefault(name, []).extend(rows)


TABLES_BY_NAME = {t.name: t for t in TABLES}


def pad_row(table: Table, row: list[Any] | Row) -> Row:
    """``row`` with as many values as ``table`` has columns: a row of an earlier build (spooled
    or checkpointed before an upgrade) lacks the columns a migration added since, which are
    nullable and come last; they are NULL."""
    missing = len(table.columns) - len(row)
    return (*row, *(None,) * missing) if missing > 0 else tuple(row)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The file's statements, without comments, in order."""
        text = "\n".join(line for line in self.sql.splitlines() if not line.startswith("--"))
        return [s.strip() for s in text.split(";") if s.strip()]


_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations(dialect: Dialect, directory: Path | None = None) -> list[Migration]:
    """The migrations of a dialect, in version order."""
    if directory is None:
        base = resources.files("collector.storage") / "migrations" / dialect
        entries = [(entry.name, entry.read_text(encoding="utf-8")) for entry in base.iterdir()]
    else:
        entries = [(p.name, p.read_text(encoding="utf-8")) for p in (directory / dialect).iterdir()]
    found = []
    for name, text in entries:
        match = _MIGRATION.match(name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), text))
    return sorted(found, key=lambda m: m.version)


ROLLUPS: Final = (
    (
        "rtc_minute",
        "rtc_hour",
        ("meeting", "participant", "connection"),
        (
            ("minutes", "COUNT(*)"),
            ("samples", "SUM(samples)"),
            ("gaps", "SUM(gaps)"),
            ("resets", "SUM(resets)"),
            *((c, f"SUM({c})") for c in COUNTERS),
            ("mos_avg", "AVG(mos_avg)"),
            ("mos_min", "MIN(mos_min)"),
            ("quality_avg", "AVG(quality_avg)"),
            ("quality_min", "MIN(quality_min)"),
            ("relayed_bytes", "SUM(relayed_bytes)"),
            ("fps_in_avg", "AVG(fps_in_avg)"),
            ("fps_out_avg", "AVG(fps_out_avg)"),
            ("bwe_bps_avg", "AVG(bwe_bps_avg)"),
            ("remote_relayed_minutes", "SUM(remote_relayed)"),
        ),
    ),
    (
        "http_minute",
        "http_hour",
        ("service", "route", "method"),
        (
            *(
                (c, f"SUM({c})")
                for c in (
                    "requests",
                    "status_1xx",
                    "status_2xx",
                    "status_3xx",
                    "status_4xx",
                    "status_5xx",
                    "bytes_in",
                    "bytes_out",
                    "latency_sum_ms",
                )
            ),
            ("p95_ms_max", "MAX(p95_ms)"),
        ),
    ),
)


def _rollup_table(
    source: str, target: str, keys: tuple[str, ...], sums: tuple[tuple[str, str], ...]
) -> Table:
    """The hour table a roll-up fills: its keys, the hour, then the summed columns."""
    return Table(target, (*keys, "hour", *(column for column, _ in sums)), key=(*keys, "hour"))


RTC_HOUR, HTTP_HOUR = (_rollup_table(*rollup) for rollup in ROLLUPS)


def rollup_sql(
    dialect: Dialect,
    source: str,
    target: str,
    keys: tuple[str, ...],
    sums: tuple[tuple[str, str], ...],
) -> str:
    """Sum the minute rows before a cutoff (the one parameter) into hour rows. An hour row
    that exists is kept (``IGNORE``): a rollup interrupted between insert and delete, run
    again, never rebuilds an hour from the minutes that were already deleted."""
    q = "`" if dialect == "mysql" else '"'
    mark = "%s" if dialect == "mysql" else "?"
    ignore = "INSERT IGNORE" if dialect == "mysql" else "INSERT OR IGNORE"
    key_cols = ", ".join(f"{q}{k}{q}" for k in keys)
    modulo = "%%" if dialect == "mysql" else "%"  # a literal % next to pyformat placeholders
    hour = f"({q}minute{q} - {q}minute{q} {modulo} 3600)"
    columns = ", ".join([key_cols, f"{q}hour{q}", *(f"{q}{c}{q}" for c, _ in sums)])
    selects = ", ".join([key_cols, hour, *(expr for _, expr in sums)])
    return (
        f"{ignore} INTO {q}{target}{q} ({columns}) SELECT {selects} FROM {q}{source}{q} "
        f"WHERE {q}minute{q} < {mark} GROUP BY {key_cols}, {hour}"
    )


def delete_before_sql(dialect: Dialect, table: str, rows: int) -> str:
    """Delete at most ``rows`` rows of ``table`` older than a cutoff (the one parameter)."""
    if dialect == "mysql":
        return f"DELETE FROM `{table}` WHERE `minute` < %s LIMIT {int(rows)}"
    return (
        f'DELETE FROM "{table}" WHERE rowid IN '
        f'(SELECT rowid FROM "{table}" WHERE "minute" < ? LIMIT {int(rows)})'
    )
