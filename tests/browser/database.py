"""MariaDB from the browser tests. Playwright's sync API keeps an asyncio loop running in the
test's thread, where ``asyncio.run`` (``tests.helpers.admin``) refuses to start: the statements
run in a thread of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from tests.helpers import admin


def query(sql: str, database: str | None = None) -> list[tuple[object, ...]]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(admin, sql, database).result()


@contextmanager
def scratch_database() -> Iterator[str]:
    """A scratch database, dropped on exit."""
    name = f"bwmon_test_{uuid.uuid4().hex[:10]}"
    query(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        query(f"DROP DATABASE {name}")
