"""The bridge contract (tests.runtime.scenarios) in both modes, plus what only one mode has:
closing the thread bridge, and the guest host's own outcome and cancellation handling."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
import sniffio
import trio

from collector.runtime import AsyncioBridge, BridgeClosed, open_thread_bridge, run_guest
from tests.runtime import scenarios
from tests.runtime.scenarios import SCENARIOS, Scenario

DEADLINE_S = 5


def _deadlined(scenario: Scenario) -> Callable[[AsyncioBridge], Awaitable[str]]:
    async def trio_main(bridge: AsyncioBridge) -> str:
        with trio.fail_after(DEADLINE_S):
            await scenario(bridge)
        return "done"

    return trio_main


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_thread_bridge(scenario: Scenario, thread_bridge: AsyncioBridge) -> None:
    with trio.fail_after(DEADLINE_S):
        await scenario(thread_bridge)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_guest_mode(scenario: Scenario) -> None:
    assert run_guest(_deadlined(scenario)) == "done"


async def test_thread_bridge_refuses_calls_after_close() -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_thread_bridge() as bridge:
            assert await bridge.run(scenarios.aio_add, 1, 1) == 2
        assert bridge.closed
        with pytest.raises(BridgeClosed):
            await bridge.run(scenarios.aio_add, 1, 1)
    assert not any(t.name == "bwmon-asyncio-bridge" for t in threading.enumerate())


async def test_thread_bridge_close_ends_calls_in_flight() -> None:
    record: list[str] = []
    outcomes: list[str] = []
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery, open_thread_bridge() as bridge:
            started = trio.Event()
            token = trio.lowlevel.current_trio_token()

            async def caller() -> None:
                try:
                    await bridge.run(
                        scenarios.aio_sleep_recording,
                        record,
                        lambda: token.run_sync_soon(started.set),
                        10.0,
                    )
                except BridgeClosed:
                    outcomes.append("BridgeClosed")

            nursery.start_soon(caller)
            await started.wait()
    assert outcomes == ["BridgeClosed"]
    assert record == ["asyncio saw CancelledError", "asyncio finally"]


async def test_bridge_is_bound_to_its_trio_run() -> None:
    async with open_thread_bridge() as bridge:

        def other_run() -> None:
            async def use_foreign_bridge() -> None:
                await bridge.run(scenarios.aio_add, 1, 2)

            trio.run(use_foreign_bridge)

        with pytest.raises(RuntimeError, match="another trio run"):
            await trio.to_thread.run_sync(other_run)


def test_guest_returns_value_and_raises_unchanged() -> None:
    async def returns(bridge: AsyncioBridge) -> int:
        assert sniffio.current_async_library() == "trio"
        return await bridge.run(scenarios.aio_add, 20, 22)

    assert run_guest(returns) == 42

    original = scenarios.Boom("from trio_main")

    async def raises(bridge: AsyncioBridge) -> None:
        await bridge.run(scenarios.aio_add, 0, 0)
        raise original

    with pytest.raises(scenarios.Boom) as excinfo:
        run_guest(raises)
    assert excinfo.value is original


def test_guest_asyncio_debug_mode() -> None:
    """asyncio's debug mode checks that non-threadsafe calls come from the loop's thread."""
    assert run_guest(_deadlined(scenarios.many_concurrent_calls), debug=True) == "done"


def _host_task() -> asyncio.Task[object]:
    (host,) = (t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_host")  # type: ignore[union-attr]
    return host


def test_host_cancel_unwinds_trio_then_reraises() -> None:
    """What Ctrl-C does (asyncio.Runner cancels the host task) before trio listens for SIGINT:
    trio is cancelled and fully unwound, bridged calls included, then the cancellation
    surfaces from run_guest."""
    record: list[str] = []

    async def trio_main(bridge: AsyncioBridge) -> str:
        started = trio.Event()
        token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:

                async def in_flight() -> None:
                    await bridge.run(
                        scenarios.aio_sleep_recording,
                        record,
                        lambda: token.run_sync_soon(started.set),
                        10.0,
                    )

                nursery.start_soon(in_flight)
                await started.wait()

                async def aio_cancel_host() -> None:
                    _host_task().cancel()

                await bridge.run(aio_cancel_host)
                await trio.sleep(DEADLINE_S)
                record.append("not cancelled")
        finally:
            record.append("trio unwound")
        return "returned normally"

    with pytest.raises(asyncio.CancelledError):
        run_guest(trio_main)
    assert record == ["asyncio saw CancelledError", "asyncio finally", "trio unwound"]


def test_host_cancel_reports_failure_while_unwinding() -> None:
    async def trio_main(bridge: AsyncioBridge) -> None:
        async def aio_cancel_host() -> None:
            _host_task().cancel()

        try:
            await bridge.run(aio_cancel_host)
            await trio.sleep(DEADLINE_S)
        finally:
            raise scenarios.Boom("cleanup failed")

    with pytest.raises(scenarios.Boom, match="cleanup failed"):
        run_guest(trio_main)
