"""MariaDB from the browser tests. Playwright's sync API keeps an asyncio loop running in the
test's thread, where ``asyncio.run`` (``tests.helpers.admin``) refuses to start: the statements
run in a thread of their own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.helpers import admin


def query(sql: str, database: str | None = None) -> list[tuple[object, ...]]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(admin, sql, database).result()
