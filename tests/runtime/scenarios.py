"""Bridge checks that must hold in both runtime modes: each takes an ``AsyncioBridge`` and
asserts. ``test_bridge`` runs them under the thread bridge (pytest-trio) and under ``run_guest``
(asyncio host, trio guest), so guest mode is held to the same contract as the test double.

Helpers named ``aio_*`` are asyncio coroutines: they only ever run on the asyncio side.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import sniffio
import trio

from collector.runtime import AsyncioBridge, BridgeCancelled

Scenario = Callable[[AsyncioBridge], Awaitable[None]]

_trio_side_var: contextvars.ContextVar[str] = contextvars.ContextVar("trio_side", default="unset")


class Boom(Exception):
    pass


async def aio_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def aio_echo_after(delay: float, value: int) -> int:
    await asyncio.sleep(delay)
    return value


async def aio_raise(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


async def aio_bridge_task_names() -> list[str]:
    """Names of bridged asyncio tasks still alive, other than the one asking."""
    me = asyncio.current_task()
    names = (t.get_name() for t in asyncio.all_tasks() if t is not me)
    return sorted(name for name in names if name.startswith("bridge:"))


async def aio_sleep_recording(
    record: list[str], notify_started: Callable[[], None], seconds: float
) -> str:
    notify_started()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record.append("asyncio saw CancelledError")
        raise
    finally:
        record.append("asyncio finally")
    return "slept"


def _started_notifier() -> tuple[trio.Event, Callable[[], None]]:
    """An event the asyncio side can set from its own thread (thread mode) or loop (guest)."""
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    return started, partial(token.run_sync_soon, started.set)


async def result_propagates(bridge: AsyncioBridge) -> None:
    assert await bridge.run(aio_add, 2, 3) == 5
    # A plain callable returning a non-coroutine awaitable (like asyncmy.create_pool) works too.
    assert await bridge.run(asyncio.ensure_future, aio_add(4, 5)) == 9


async def exception_propagates(bridge: AsyncioBridge) -> None:
    original = Boom("disk on fire")
    with pytest.raises(Boom, match=r"^disk on fire$") as excinfo:
        await bridge.run(aio_raise, original)
    assert excinfo.value is original

    def not_async() -> Awaitable[None]:
        raise ValueError("raised before any await")

    with pytest.raises(ValueError, match="before any await"):
        await bridge.run(not_async)


async def trio_cancel_cancels_asyncio_task(bridge: AsyncioBridge) -> None:
    record: list[str] = []
    started, notify = _started_notifier()
    cancel_scope = trio.CancelScope()

    async def caller() -> None:
        with cancel_scope:
            try:
                await bridge.run(aio_sleep_recording, record, notify, 10.0)
            finally:
                record.append("trio call ended")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await started.wait()
        cancel_scope.cancel()

    assert cancel_scope.cancelled_caught
    # The asyncio task had finished before bridge.run raised Cancelled.
    assert record == ["asyncio saw CancelledError", "asyncio finally", "trio call ended"]
    assert await bridge.run(aio_bridge_task_names) == []


async def move_on_after_cancels_bridged_sleep(bridge: AsyncioBridge) -> None:
    start = trio.current_time()
    with trio.move_on_after(0.05) as scope:
        await bridge.run(asyncio.sleep, 10)
    assert scope.cancelled_caught
    assert trio.current_time() - start < 2
    assert await bridge.run(aio_bridge_task_names) == []


async def already_cancelled_scope_starts_nothing(bridge: AsyncioBridge) -> None:
    record: list[str] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.run(aio_sleep_recording, record, lambda: record.append("started"), 10.0)
    assert scope.cancelled_caught
    assert record == []


async def completed_despite_cancel_returns_result(bridge: AsyncioBridge) -> None:
    """A coroutine that swallows cancellation and returns: the work happened, so the caller
    gets the result; its cancel scope still fires at the next checkpoint."""
    started, notify = _started_notifier()

    async def aio_stubborn() -> str:
        notify()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    results: list[str] = []
    cancel_scope = trio.CancelScope()

    async def caller() -> None:
        with cancel_scope:
            results.append(await bridge.run(aio_stubborn))
            await trio.lowlevel.checkpoint()
            results.append("not reached")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await started.wait()
        cancel_scope.cancel()
    assert results == ["finished anyway"]
    assert cancel_scope.cancelled_caught


async def asyncio_self_cancel_is_bridge_cancelled(bridge: AsyncioBridge) -> None:
    async def aio_cancel_self() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with pytest.raises(BridgeCancelled):
        await bridge.run(aio_cancel_self)


async def asyncio_other_task_cancel_is_bridge_cancelled(bridge: AsyncioBridge) -> None:
    record: list[str] = []

    async def aio_cancelled_by_sibling() -> None:
        me = asyncio.current_task()
        assert me is not None

        async def aio_canceller() -> None:
            await asyncio.sleep(0.01)
            me.cancel()

        canceller = asyncio.create_task(aio_canceller())
        try:
            await asyncio.sleep(10)
        finally:
            record.append("asyncio finally")
            await canceller

    with pytest.raises(BridgeCancelled):
        await bridge.run(aio_cancelled_by_sibling)
    assert record == ["asyncio finally"]


async def many_concurrent_calls(bridge: AsyncioBridge) -> None:
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await bridge.run(aio_echo_after, random.uniform(0, 0.02), i)

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert results == {i: i for i in range(200)}
    assert await bridge.run(aio_bridge_task_names) == []


async def asyncio_side_gets_clean_context(bridge: AsyncioBridge) -> None:
    async def aio_probe() -> tuple[str, str]:
        return sniffio.current_async_library(), _trio_side_var.get()

    _trio_side_var.set("set in trio")
    assert sniffio.current_async_library() == "trio"
    assert await bridge.run(aio_probe) == ("asyncio", "unset")
    assert _trio_side_var.get() == "set in trio"


SCENARIOS: list[Scenario] = [
    result_propagates,
    exception_propagates,
    trio_cancel_cancels_asyncio_task,
    move_on_after_cancels_bridged_sleep,
    already_cancelled_scope_starts_nothing,
    completed_despite_cancel_returns_result,
    asyncio_self_cancel_is_bridge_cancelled,
    asyncio_other_task_cancel_is_bridge_cancelled,
    many_concurrent_calls,
    asyncio_side_gets_clean_context,
]
