"""Real asyncio drivers through the bridge, in both modes: redis.asyncio against the Redis at
127.0.0.1:6379 and asyncmy against the MariaDB at 127.0.0.1:3306 (root, no password, database
``test``). No mocks. Each check also asserts that nothing was left unclosed: no warning, no
"Unclosed …"/"Task was destroyed" error from asyncio's logger."""

from __future__ import annotations

import gc
import logging
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import asyncmy
import pytest
import redis.asyncio
import trio

from collector.runtime import AsyncioBridge, run_guest

ServiceCheck = Callable[[AsyncioBridge], Awaitable[None]]

DEADLINE_S = 10
MYSQL: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 3306,
    "user": "root",
    "password": "",
    "db": "test",
}


async def aio_open_redis() -> redis.asyncio.Redis:
    # Built on the asyncio side: the client's pool belongs to that loop.
    return redis.asyncio.Redis(host="127.0.0.1", port=6379, socket_timeout=5)


async def redis_roundtrip(bridge: AsyncioBridge) -> None:
    client = await bridge.run(aio_open_redis)
    key = f"bwmon:test:runtime:{uuid.uuid4().hex}"
    try:
        assert await bridge.run(client.ping) is True
        assert await bridge.run(partial(client.set, key, b"value", ex=60)) is True
        assert await bridge.run(client.get, key) == b"value"
        # A trio-cancelled blocking command must leave the client usable.
        with trio.move_on_after(0.1) as scope:
            await bridge.run(partial(client.blpop, [f"{key}:empty"], timeout=5))
        assert scope.cancelled_caught
        assert await bridge.run(client.ping) is True
    finally:
        with trio.CancelScope(shield=True):
            assert await bridge.run(client.delete, key) == 1
            assert await bridge.run(client.exists, key) == 0
            await bridge.run(client.aclose)


async def aio_select_one(pool: Any) -> Any:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("SELECT 1")
        return await cursor.fetchall()


async def aio_select_sleep(pool: Any, seconds: float) -> Any:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("SELECT SLEEP(%s)", (seconds,))
        return await cursor.fetchall()


async def aio_close_pool(pool: Any) -> None:
    pool.close()
    await pool.wait_closed()


async def mysql_select_one(bridge: AsyncioBridge) -> None:
    pool = await bridge.run(partial(asyncmy.create_pool, minsize=1, maxsize=2, **MYSQL))
    try:
        assert await bridge.run(aio_select_one, pool) == ((1,),)
        # Cancelled mid-statement: asyncmy drops that connection, the pool stays healthy.
        with trio.move_on_after(0.1) as scope:
            await bridge.run(aio_select_sleep, pool, 1)
        assert scope.cancelled_caught
        assert await bridge.run(aio_select_one, pool) == ((1,),)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(aio_close_pool, pool)


CHECKS: list[ServiceCheck] = [redis_roundtrip, mysql_select_one]


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def nothing_left_unclosed() -> Iterator[None]:
    asyncio_log = logging.getLogger("asyncio")
    handler = _ErrorLog()
    asyncio_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        asyncio_log.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert handler.messages == []


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_thread_bridge(check: ServiceCheck, thread_bridge: AsyncioBridge) -> None:
    with nothing_left_unclosed(), trio.fail_after(DEADLINE_S):
        await check(thread_bridge)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_guest_mode(check: ServiceCheck) -> None:
    async def trio_main(bridge: AsyncioBridge) -> None:
        with trio.fail_after(DEADLINE_S):
            await check(bridge)

    with nothing_left_unclosed():
        run_guest(trio_main)
