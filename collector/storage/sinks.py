"""Where minute rows, meeting summaries and alerts are stored: MySQL/MariaDB or SQLite.

Both sinks have the same three methods — ``migrate``, ``write``, ``close`` — and pass the same
contract tests. A write is one transaction holding one multi-row upsert per table (split only
when a statement would exceed the dialect's limit), so the number of statements per flush does
not grow with the number of streams, and a retried or replayed batch leaves the same content.

- ``MysqlSink``: asyncmy, an asyncio driver, reached through the runtime's ``AsyncioBridge``;
  each session gets ``max_statement_time`` so a slow server cannot hold a flush forever.
- ``SqliteSink``: the standard library's sqlite3 in a worker thread (one at a time): the
  embedded default, so a fresh machine stores data with nothing else installed. A read-only
  sink (``bwmon export``) opens the file read-only and never creates it or its directory.

A dry run of ``migrate`` writes nothing: SQLite reads through a read-only connection, MySQL
inside a ``READ ONLY`` transaction, and neither creates the migrations table.

Errors (the storage branch of the tree, drawn in ``collector/storage/errors.py``), translated
here and nowhere else: SQLite's in ``SqliteSink._run`` (``_SQLITE_ERRORS``), MySQL's in
``MysqlSink._call`` and its probe::

    StorageError            base
     ├── StorageUnavailable the database cannot be reached or did not answer in time: retry later
     ├── RowsRefused        the database refused the rows themselves (a value too long or out of
     │                      range, a constraint): the same rows would fail the same way again
     └── DatabaseMissing    a reader found no SQLite file where the configuration points

``RowsRefused`` is raised only for errors about the data (MySQL's data and integrity errors,
SQLSTATE classes 22 and 23, a trigger's ``SIGNAL``; SQLite's integrity errors and values it
cannot bind); a missing table or column, a lost connection, a timeout or a deadlock is
``StorageUnavailable``, whatever the rows.

``ping`` answers whether the database answers: the flusher's readiness probe. ``open_sink``
builds the configured sink.

Never called from the ingest path: only the flusher awaits a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import asyncmy
import asyncmy.errors
import trio

from collector.config import StorageConfig
from collector.runtime import AsyncioBridge
from collector.storage.errors import DatabaseMissing as DatabaseMissing
from collector.storage.errors import RowsRefused as RowsRefused
from collector.storage.errors import StorageError as StorageError
from collector.storage.errors import StorageUnavailable as StorageUnavailable
from collector.storage.schema import (
    ROLLUPS,
    TABLES_BY_NAME,
    Batch,
    Dialect,
    Migration,
    Row,
    delete_before_sql,
    migrations,
    rollup_sql,
)
from protocol.errors import ExceptionMapping, map_exceptions

MIGRATIONS_TABLE = "bwmon_migrations"
# What the MySQL user needs on its database, and all it needs (deploy/README.md grants exactly
# these, in the order SHOW GRANTS lists them): SELECT, INSERT, UPDATE for upserts, rollups
# (INSERT … SELECT … ON DUPLICATE KEY UPDATE) and exports; DELETE for retention; CREATE, INDEX,
# ALTER for migrations.
MYSQL_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "INDEX", "ALTER")
# Rows per upsert: as many as fit the server's max_allowed_packet (read at connect) at a
# generous 500 bytes per row, within these bounds; halved if the server still refuses one.
MYSQL_ROWS_PER_STATEMENT = 5_000  # before the first connection
MYSQL_MAX_ROWS_PER_STATEMENT = 50_000
MYSQL_MIN_ROWS_PER_STATEMENT = 500
MYSQL_BYTES_PER_ROW = 500
ER_NET_PACKET_TOO_LARGE = 1153
# Errors about the rows, which the server repeats for the same rows (besides asyncmy's DataError
# and IntegrityError, and SQLSTATE classes 22 and 23): a value too long (1406), out of range
# (1264), not valid for its column (1366, 1292), NULL in a NOT NULL column (1048), a duplicate or
# a foreign key (1062, 1451, 1452), a CHECK constraint (MariaDB 4025, MySQL 3819), a trigger's
# SIGNAL (1644), division by zero (1365); and the driver's refusal of a value before sending it
# (NaN or infinity, a ProgrammingError with no error number).
MYSQL_REFUSED_ROWS = frozenset(
    (1048, 1062, 1264, 1292, 1365, 1366, 1406, 1451, 1452, 1644, 3819, 4025)
)
SQLITE_MAX_VARIABLES = 32_766


# asyncmy's errors and the socket's as ours (``MysqlSink._call`` then tells a refusal of the
# rows apart, where it knows whether rows were written).
_MYSQL_ERRORS: ExceptionMapping = {(asyncmy.errors.Error, OSError): StorageUnavailable}
# Whatever fails the probe, the database did not answer it.
_MYSQL_PROBE_ERRORS: ExceptionMapping = {Exception: StorageUnavailable}


def _sqlite_programming_error(message: str) -> StorageError:
    if ": Error binding parameter" in message:  # a value of no SQLite type
        return RowsRefused(message)
    return StorageError(message)


# sqlite3's errors as ours; the first match wins (sqlite3.DatabaseError is the others' base).
_SQLITE_ERRORS: ExceptionMapping = {
    sqlite3.OperationalError: StorageUnavailable,  # locked, busy, disk I/O
    (sqlite3.IntegrityError, sqlite3.DataError, OverflowError): RowsRefused,
    sqlite3.ProgrammingError: _sqlite_programming_error,
    sqlite3.DatabaseError: StorageError,  # not a database, or a damaged one
    OSError: StorageUnavailable,  # the database's directory cannot be made or opened
}


class Sink(Protocol):
    dialect: Dialect
    statements: int  # executed since start, for benchmarks and /healthz

    async def migrate(self, dry_run: bool = False) -> list[str]: ...

    async def write(self, batch: Batch) -> None: ...

    async def ping(self) -> None: ...

    async def retain(self, cutoff: int, batch_rows: int = 5_000) -> dict[str, int]: ...

    async def close(self) -> None: ...


def _chunks(rows: Sequence[Row], size: int) -> list[Sequence[Row]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _pending_sql(applied: set[int], dialect: Dialect) -> list[tuple[Migration, list[str]]]:
    return [(m, m.statements()) for m in migrations(dialect) if m.version not in applied]


def _plan(applied: set[int], dialect: Dialect) -> list[str]:
    """The statements of the migrations not applied yet, in order: what a dry run lists."""
    return [s for _migration, statements in _pending_sql(applied, dialect) for s in statements]


class SqliteSink:
    dialect: Dialect = "sqlite"

    def __init__(
        self, path: Path, statement_timeout_s: float = 10.0, *, read_only: bool = False
    ) -> None:
        self.path = path
        self.statement_timeout_s = statement_timeout_s
        self.read_only = read_only
        self.statements = 0
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.read_only:
                self._conn = self._open_read_only()
                return self._conn
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.statement_timeout_s, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that cannot write; ``DatabaseMissing`` instead of creating the file.

        Reading a WAL database that no one has open creates its ``-wal`` and ``-shm`` files,
        and a reader's files are left behind: those made here are given to the database's
        owner, so that root running ``bwmon export`` cannot lock the daemon's user out."""
        path = self.path.absolute()
        if not path.is_file():
            raise DatabaseMissing(f"no database at {path}")
        companions = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        existing = {companion for companion in companions if companion.exists()}
        conn = sqlite3.connect(
            f"{path.as_uri()}?mode=ro",
            uri=True,
            timeout=self.statement_timeout_s,
            check_same_thread=False,
        )
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opens the companions now
        owner = path.stat()
        for companion in companions:
            if companion not in existing:
                with contextlib.suppress(OSError):  # absent, or not ours to give away
                    if companion.stat().st_uid != owner.st_uid:
                        os.chown(companion, owner.st_uid, owner.st_gid)
        return conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the sink's worker thread, its errors translated (``_SQLITE_ERRORS``)."""
        with map_exceptions(_SQLITE_ERRORS, f"sqlite {self.path}"):
            return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    async def migrate(self, dry_run: bool = False) -> list[str]:
        return list(await self._run(self._migrate, dry_run))

    def _migrate(self, dry_run: bool) -> list[str]:
        if dry_run:
            if not self.path.exists():  # what a first migrate would do; nothing is created
                return _plan(set(), "sqlite")
            with contextlib.closing(self._open_read_only()) as reader:
                return _plan(_sqlite_applied(reader), "sqlite")
        conn = self._connect()
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done: list[str] = []
        for migration, statements in _pending_sql(_sqlite_applied(conn), "sqlite"):
            done += statements
            with conn:
                # One transaction for the migration and its record: sqlite3 opens none before
                # DDL, and an ALTER TABLE applied alone would fail again at every start.
                conn.execute("BEGIN")
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
        return done

    async def write(self, batch: Batch) -> None:
        await self._run(self._write, batch)

    async def ping(self) -> None:
        """Nothing to ask: the file is local and a write in progress would only queue the
        question behind it."""

    def _write(self, batch: Batch) -> None:
        conn = self._connect()
        with conn:
            for name, rows in batch.rows.items():
                table = TABLES_BY_NAME[name]
                size = max(1, SQLITE_MAX_VARIABLES // len(table.columns))
                for chunk in _chunks(rows, size):
                    conn.execute(
                        table.upsert("sqlite", len(chunk)), [v for row in chunk for v in row]
                    )
                    self.statements += 1

    async def retain(self, cutoff: int, batch_rows: int = 5_000) -> dict[str, int]:
        """Roll minute rows before ``cutoff`` (Unix seconds, on an hour) up into hour rows, then
        delete them in batches of ``batch_rows``; returns the rows deleted per table."""
        deleted: dict[str, int] = await self._run(self._retain, cutoff, batch_rows)
        return deleted

    def _retain(self, cutoff: int, batch_rows: int) -> dict[str, int]:
        conn = self._connect()
        deleted: dict[str, int] = {}
        for source, target, keys, sums in ROLLUPS:
            with conn:
                conn.execute(rollup_sql("sqlite", source, target, keys, sums), (cutoff,))
            deleted[source] = 0
            while True:
                with conn:
                    count = conn.execute(
                        delete_before_sql("sqlite", source, batch_rows), (cutoff,)
                    ).rowcount
                deleted[source] += count
                if count < batch_rows:
                    break
        return deleted

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read rows (tests, export)."""
        return list(await self._run(lambda: self._connect().execute(sql, params).fetchall()))

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


def _sqlite_applied(conn: sqlite3.Connection) -> set[int]:
    """The versions applied to the database (none when it has no migrations table)."""
    present = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone()
    if present is None:
        return set()
    return {v for (v,) in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}


class MysqlSink:
    dialect: Dialect = "mysql"

    def __init__(
        self,
        bridge: AsyncioBridge,
        *,
        host: str = "127.0.0.1",
        port: int = 3306,
        user: str = "root",
        password: str = "",
        database: str = "bwmon",
        statement_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.bridge = bridge
        self.params: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "db": database,
            "connect_timeout": connect_timeout_s,
            "autocommit": False,
            "init_command": f"SET SESSION max_statement_time = {statement_timeout_s:g}",
        }
        self.statement_timeout_s = statement_timeout_s
        self.statements = 0
        self.rows_per_statement = MYSQL_ROWS_PER_STATEMENT
        self._pool: Any = None
        self._probe: Any = None  # the probe's own connection, apart from the writers' pool
        self._probing = trio.Lock()  # one probe at a time on that connection

    async def _call(self, fn: Any, *args: Any, writes_rows: bool = False) -> Any:
        """``fn(pool, *args)`` on the asyncio side, its errors translated; ``RowsRefused`` only
        where ``writes_rows`` (elsewhere a data error is the schema's or ours, not a row's)."""
        try:
            with (
                map_exceptions(_MYSQL_ERRORS, "mysql"),
                trio.fail_after(self.statement_timeout_s + 5),
            ):
                if self._pool is None:
                    self._pool = await self.bridge.run(partial(_create_pool, **self.params))
                    max_packet: int = await self.bridge.run(_max_allowed_packet, self._pool)
                    self.rows_per_statement = max(
                        MYSQL_MIN_ROWS_PER_STATEMENT,
                        min(MYSQL_MAX_ROWS_PER_STATEMENT, max_packet // MYSQL_BYTES_PER_ROW),
                    )
                return await self.bridge.run(fn, self._pool, *args)
        except trio.TooSlowError as exc:
            raise StorageUnavailable("mysql: no answer in time") from exc
        except StorageUnavailable as exc:  # translated: what the driver said is its cause
            said = exc.__cause__ if isinstance(exc.__cause__, asyncmy.errors.Error) else None
            if writes_rows and said is not None and _refuses_rows(said):
                raise RowsRefused(str(exc)) from said  # rolled back; the connection is fine
            await self._drop_pool()
            if said is not None and said.args and said.args[0] == ER_NET_PACKET_TOO_LARGE:
                smallest = self.rows_per_statement <= MYSQL_MIN_ROWS_PER_STATEMENT
                self.rows_per_statement = max(
                    MYSQL_MIN_ROWS_PER_STATEMENT, self.rows_per_statement // 2
                )
                if writes_rows and smallest:  # rows too large for any statement: split the batch
                    raise RowsRefused(str(exc)) from said
            raise

    async def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.bridge.run(_close_pool, pool)

    async def migrate(self, dry_run: bool = False) -> list[str]:
        done: list[str] = await self._call(_mysql_migrate, dry_run)
        return done

    async def write(self, batch: Batch) -> None:
        if self._pool is None:  # connect first: the statement size depends on the server
            await self._call(_max_allowed_packet)
        statements = [
            (TABLES_BY_NAME[name].upsert("mysql", len(chunk)), [v for row in chunk for v in row])
            for name, rows in batch.rows.items()
            for chunk in _chunks(rows, self.rows_per_statement)
        ]
        await self._call(_mysql_execute_all, statements, writes_rows=True)
        self.statements += len(statements)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self._call(_mysql_query, sql, list(params))
        return rows

    async def ping(self) -> None:
        """``SELECT 1`` on a connection of its own (a write in progress holds the pool's), made
        again after any failure. The caller bounds the wait: a server that accepts and never
        answers (stopped, or behind a hung proxy) makes this wait, not fail."""
        async with self._probing:
            await self._ping()

    async def _ping(self) -> None:
        try:
            with map_exceptions(_MYSQL_PROBE_ERRORS, "mysql"):
                if self._probe is None:
                    self._probe = await self.bridge.run(partial(_connect, **self.params))
                await self.bridge.run(_ping, self._probe)
        except BaseException:  # failed, or cancelled by the caller's deadline (the answer may
            await self._drop_probe()  # still come): the next probe connects anew
            raise

    async def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.bridge.run(_close_connection, probe)

    async def retain(self, cutoff: int, batch_rows: int = 5_000) -> dict[str, int]:
        """See ``SqliteSink.retain``; each delete batch is its own short transaction."""
        deleted: dict[str, int] = {}
        for source, target, keys, sums in ROLLUPS:
            await self._call(
                _mysql_execute_all, [(rollup_sql("mysql", source, target, keys, sums), [cutoff])]
            )
            deleted[source] = 0
            while True:
                count: int = await self._call(
                    _mysql_execute_count, delete_before_sql("mysql", source, batch_rows), [cutoff]
                )
                deleted[source] += count
                if count < batch_rows:
                    break
        return deleted

    async def close(self) -> None:
        await self._drop_probe()
        await self._drop_pool()


def _refuses_rows(exc: asyncmy.errors.Error) -> bool:
    """Whether the server refused the rows themselves (the same rows fail again), rather than
    being unreachable, busy or missing a table."""
    if isinstance(exc, asyncmy.errors.DataError | asyncmy.errors.IntegrityError):
        return True
    code = exc.args[0] if exc.args else None
    if isinstance(exc, asyncmy.errors.ProgrammingError) and isinstance(code, str):
        return True  # the driver's own, before sending: a value it cannot write (NaN, inf)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return code in MYSQL_REFUSED_ROWS or sqlstate[:2] in ("22", "23")


def open_sink(
    storage: StorageConfig, bridge: AsyncioBridge | None, *, read_only: bool = False
) -> Sink | None:
    """The configured sink (not connected yet), or None for ``backend = "none"``. A read-only
    SQLite sink never creates or changes the database file (``bwmon export``)."""
    if storage.backend == "none":
        return None
    if storage.backend == "sqlite":
        return SqliteSink(storage.sqlite_file(), storage.statement_timeout_s, read_only=read_only)
    if bridge is None:
        raise ValueError("the MySQL sink needs the asyncio bridge")
    return MysqlSink(
        bridge,
        host=storage.mysql_host,
        port=storage.mysql_port,
        user=storage.mysql_user,
        password=storage.password(),
        database=storage.mysql_database,
        statement_timeout_s=storage.statement_timeout_s,
    )


# asyncio side: these run on the asyncio loop through the bridge.


async def _create_pool(**params: Any) -> Any:

    return await asyncmy.create_pool(minsize=1, maxsize=2, **params)


async def _connect(**params: Any) -> Any:
    return await asyncmy.connect(**params)


async def _close_connection(conn: Any) -> None:
    conn.close()  # the socket only: a server that does not answer gets no QUIT to wait on
    await asyncio.sleep(0)  # the transport closes its socket on the loop's next turn


async def _ping(conn: Any) -> None:
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT 1")
        await cursor.fetchall()
    await conn.commit()  # ends the snapshot: a later probe reads nothing stale


async def _max_allowed_packet(pool: Any) -> int:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("SELECT @@max_allowed_packet")
        ((value,),) = await cursor.fetchall()
        return int(value)


async def _close_pool(pool: Any) -> None:
    pool.close()
    await pool.wait_closed()


async def _mysql_execute_all(pool: Any, statements: list[tuple[str, list[Any]]]) -> None:
    async with pool.acquire() as conn:
        try:
            async with conn.cursor() as cursor:
                for sql, params in statements:
                    await cursor.execute(sql, params)
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise


async def _mysql_execute_count(pool: Any, sql: str, params: list[Any]) -> int:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        count: int = await cursor.execute(sql, params)
        await conn.commit()
        return count


async def _mysql_query(pool: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(sql, params)
        rows = await cursor.fetchall()
        await conn.commit()
        return list(rows)


async def _mysql_migrate(pool: Any, dry_run: bool) -> list[str]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        if dry_run:  # the server refuses any write in this transaction
            await cursor.execute("START TRANSACTION READ ONLY")
        # Looked up, not CREATE TABLE IF NOT EXISTS: a dry run creates nothing, and an existing
        # table would cost a server warning on every start.
        await cursor.execute(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (MIGRATIONS_TABLE,),
        )
        ((present,),) = await cursor.fetchall()
        applied: set[int] = set()
        if present:
            await cursor.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")
            applied = {v for (v,) in await cursor.fetchall()}
        elif not dry_run:
            await cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INT PRIMARY KEY, "
                "name VARCHAR(200) NOT NULL, applied_at DOUBLE NOT NULL)"
            )
        if dry_run:
            await conn.rollback()
            return _plan(applied, "mysql")
        done: list[str] = []
        for migration, statements in _pending_sql(applied, "mysql"):
            done += statements
            for statement in statements:  # DDL commits implicitly in MySQL
                await cursor.execute(statement)
            await cursor.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} VALUES (%s, %s, %s)",
                (migration.version, migration.name, time.time()),
            )
            await conn.commit()
        return done
