"""``migrate --dry-run`` writes nothing, on SQLite and on the real MariaDB; what the MySQL driver
warns about reaches the log as structured events, never as raw lines."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncmy
import pytest
import trio

from collector.runtime import open_thread_bridge
from collector.storage.schema import Dialect, migrations
from collector.storage.sinks import MIGRATIONS_TABLE, MysqlSink, SqliteSink
from tests.helpers import admin, bwmon


def mysql_migrate(database: str, dry_run: bool) -> list[str]:
    async def run() -> list[str]:
        async with open_thread_bridge() as bridge:
            sink = MysqlSink(bridge, user="root", database=database)
            try:
                return await sink.migrate(dry_run=dry_run)
            finally:
                await sink.close()

    return trio.run(run)


def sqlite_migrate(path: Path, dry_run: bool) -> list[str]:
    async def run() -> list[str]:
        sink = SqliteSink(path)
        try:
            return await sink.migrate(dry_run=dry_run)
        finally:
            await sink.close()

    return trio.run(run)


def mysql_state(database: str) -> list[Any]:
    """Every table of the database: its definition and a checksum of its rows."""
    tables = admin(
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = '{database}' ORDER BY table_name"
    )
    return [
        (
            admin(f"SHOW CREATE TABLE `{name}`", database),
            admin(f"CHECKSUM TABLE `{name}`", database),
        )
        for (name,) in tables
    ]


def sqlite_state(path: Path) -> tuple[str, list[Any]]:
    """The database file's bytes (a digest) and its tables."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        tables = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    return digest, tables


def forget_newest_migration(database: str) -> None:
    """Make the newest migration pending again, its tables left in place."""

    async def run() -> None:
        conn = await asyncmy.connect(
            host="127.0.0.1", user="root", password="", db=database, autocommit=True
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(
                    f"DELETE FROM {MIGRATIONS_TABLE} ORDER BY version DESC LIMIT 1"
                )
        finally:
            conn.close()

    asyncio.run(run())


def expected_plan(dialect: Dialect, before: str) -> list[str]:
    """What a dry run must list: every migration of an empty database, the newest one after
    ``forget_newest_migration``, nothing once all are applied."""
    pending = {"partly migrated": migrations(dialect)[-1:], "migrated": []}.get(
        before, migrations(dialect)
    )
    return [statement for migration in pending for statement in migration.statements()]


@pytest.mark.parametrize("before", ["empty", "partly migrated", "migrated"])
def test_a_mysql_dry_run_changes_nothing(database: str, before: str) -> None:
    if before != "empty":
        mysql_migrate(database, dry_run=False)
    if before == "partly migrated":
        forget_newest_migration(database)
    state = mysql_state(database)
    assert mysql_migrate(database, dry_run=True) == expected_plan("mysql", before)
    assert mysql_state(database) == state
    assert (state == []) is (before == "empty")  # not even the migrations table was made


@pytest.mark.parametrize("before", ["empty file", "partly migrated", "migrated"])
def test_a_sqlite_dry_run_changes_nothing(tmp_path: Path, before: str) -> None:
    path = tmp_path / "bwmon.db"
    if before == "empty file":
        sqlite3.connect(path).close()
    else:
        sqlite_migrate(path, dry_run=False)
    if before == "partly migrated":
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = "
                f"(SELECT MAX(version) FROM {MIGRATIONS_TABLE})"
            )
    state = sqlite_state(path)
    assert sqlite_migrate(path, dry_run=True) == expected_plan("sqlite", before)
    assert sqlite_state(path) == state


def test_a_sqlite_dry_run_without_a_database_creates_nothing(tmp_path: Path) -> None:
    planned = sqlite_migrate(tmp_path / "state" / "bwmon.db", dry_run=True)
    assert any("CREATE TABLE IF NOT EXISTS rtc_minute" in s for s in planned)
    assert list(tmp_path.iterdir()) == []


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of a JSON log, parsed: a line that is not a JSON object fails the test."""
    events = []
    for line in stderr.splitlines():
        event = json.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    return events


def test_migrating_a_migrated_mysql_database_logs_only_json(tmp_path: Path, database: str) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'mysql'\nmysql_user = 'root'\nmysql_database = '{database}'\n"
        "[log]\nformat = 'json'\n"
    )
    assert bwmon("migrate", "--config", str(config)).returncode == 0
    for args in (["--dry-run"], []):
        again = bwmon("migrate", "--config", str(config), *args)
        assert again.returncode == 0, again.stderr
        *log, summary = again.stderr.splitlines()
        assert summary.startswith("bwmon migrate: ")
        json_lines("\n".join(log))
        assert "already exists" not in again.stderr


WARNING_SCRIPT = """
import sys
import trio
from collector.logs import configure
from collector.runtime import open_thread_bridge
from collector.storage.sinks import MysqlSink

configure("info", "json")

async def main():
    async with open_thread_bridge() as bridge:
        sink = MysqlSink(bridge, user="root", database=sys.argv[1])
        try:
            print(await sink.query("SELECT CAST('12abc' AS SIGNED)"))
        finally:
            await sink.close()

trio.run(main)
"""


def test_a_driver_warning_is_a_structured_log_event(database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WARNING_SCRIPT, database],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[(12,)]\n"  # the warning went to the log, not to stdout
    (event,) = json_lines(result.stderr)
    assert event["event"] == "library_log"
    assert event["level"] == "warning"
    assert event["component"] == "asyncmy"
    assert event["message"] == "Truncated incorrect INTEGER value: '12abc'"
