"""The MySQL user of deploy/README.md, with exactly the privileges its GRANT statement lists,
can do everything the daemon and the ``bwmon`` command do on the real MariaDB: migrations (and
their dry run), upserts, retention (rollups and deletes) and exports."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from collector.runtime import open_thread_bridge
from collector.storage.export import Selection, export_to, row_writer
from collector.storage.schema import HTTP_MINUTE, RTC_MINUTE, Batch, http_row, rtc_row
from collector.storage.sinks import MYSQL_PRIVILEGES, MysqlSink
from tests.helpers import admin, bwmon
from tests.storage.test_sinks import batch, http, rtc

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
PASSWORD = "grant-test-pw"


def documented_grant() -> str:
    """The GRANT statement of deploy/README.md."""
    found = re.search(r"GRANT [A-Z, ]+ ON bwmon\.\* TO 'bwmon'@'127\.0\.0\.1'", DEPLOY.read_text())
    assert found is not None, "deploy/README.md has no GRANT for 'bwmon'@'127.0.0.1'"
    return found.group(0)


@pytest.fixture
def limited_user() -> Iterator[tuple[str, str]]:
    """A scratch database and a user holding exactly the documented grants on it."""
    suffix = uuid.uuid4().hex[:10]
    database, user = f"bwmon_grants_{suffix}", f"bwmon_g_{suffix}"
    admin(f"CREATE DATABASE {database}")
    admin(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
    try:
        grant = documented_grant().replace("bwmon.*", f"{database}.*")
        admin(grant.replace("'bwmon'@", f"'{user}'@"))
        usage, on_database = (str(row[0]) for row in admin(f"SHOW GRANTS FOR '{user}'@'127.0.0.1'"))
        assert usage.startswith("GRANT USAGE ON *.*")  # nothing beyond the database
        assert on_database.startswith(f"GRANT {', '.join(MYSQL_PRIVILEGES)} ON `{database}`.*")
        yield database, user
    finally:
        admin(f"DROP USER '{user}'@'127.0.0.1'")
        admin(f"DROP DATABASE {database}")


def test_the_documented_grants_are_the_code_s() -> None:
    assert documented_grant().startswith(f"GRANT {', '.join(MYSQL_PRIVILEGES)} ON")


def test_the_daemon_works_with_exactly_the_documented_grants(
    limited_user: tuple[str, str],
) -> None:
    database, user = limited_user

    async def run() -> None:
        async with open_thread_bridge() as bridge:
            sink = MysqlSink(bridge, user=user, password=PASSWORD, database=database)
            try:
                planned = await sink.migrate(dry_run=True)
                assert await sink.migrate() == planned
                assert await sink.migrate() == []
                hour = 1_800_000_000 - 1_800_000_000 % 3600
                await sink.write(batch(*(rtc(hour + 60 * i) for i in range(3))))
                await sink.write(batch(rtc(hour, video=5.0)))  # an upsert over a stored row
                later = Batch()
                later.add(RTC_MINUTE, [rtc_row(rtc(hour + 3600))])
                later.add(HTTP_MINUTE, [http_row(http(hour + 3600))])
                await sink.write(later)
                deleted = await sink.retain(hour + 3600)
                assert deleted == {"rtc_minute": 3, "http_minute": 1}
                out = io.StringIO()
                assert await export_to(sink, Selection("rtc"), row_writer("csv", out)) == 1
            finally:
                await sink.close()

    trio.run(run)


def test_the_commands_work_with_exactly_the_documented_grants(
    tmp_path: Path, limited_user: tuple[str, str]
) -> None:
    database, user = limited_user
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'mysql'\nmysql_user = '{user}'\n"
        f"mysql_password = '{PASSWORD}'\nmysql_database = '{database}'\n"
    )
    for command in (["migrate", "--dry-run"], ["migrate"], ["export", "meetings"]):
        result = bwmon(*command, "--config", str(config))
        assert result.returncode == 0, (command, result.stderr)
