"""The daemon's entry point into the two event loops: asyncio as host, trio as its guest.

``run_guest(trio_main)`` calls ``asyncio.run``; the host coroutine starts ``trio_main(bridge)``
with ``trio.lowlevel.start_guest_run`` on the same thread, waits for the trio run to end and
returns or raises its outcome. Both loops share one thread; asyncio libraries are reached from
trio only through the ``AsyncioBridge`` handed to ``trio_main``.

Signals belong to trio: the trio program installs ``trio.open_signal_receiver`` for SIGTERM,
SIGINT and SIGHUP. trio takes ``signal.set_wakeup_fd`` on Unix (asyncio there only uses it for
``loop.add_signal_handler``), so asyncio code must never call ``loop.add_signal_handler``. Until
the trio program listens for SIGINT, asyncio's own SIGINT handling applies: the first Ctrl-C
cancels the host task, which cancels the whole trio run, waits for it to unwind and then lets
``asyncio.run`` raise ``KeyboardInterrupt``.

This module never stops the asyncio loop while trio is still running (trio's state would be left
half torn down), and holds no daemon logic: ``trio_main`` is all of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import outcome
import trio

from collector.runtime.bridge import AsyncioBridge

__all__ = ["run_guest"]

T = TypeVar("T")


class _GuestCancelled(Exception):
    """trio_main was cancelled because the host task was; never leaves this module."""


def run_guest(
    trio_main: Callable[[AsyncioBridge], Awaitable[T]], *, debug: bool | None = None
) -> T:
    """Run ``trio_main(bridge)`` as a trio guest on a new asyncio loop; return its result.

    ``trio_main``'s exception is re-raised unchanged. If the host task is cancelled (Ctrl-C
    before trio listens for SIGINT), the trio run is cancelled and awaited first, then
    ``asyncio.run`` raises ``KeyboardInterrupt`` (or ``CancelledError``), unless ``trio_main``
    failed while unwinding, in which case that failure is raised.
    """
    return asyncio.run(_host(trio_main), debug=debug)


async def _host(trio_main: Callable[[AsyncioBridge], Awaitable[T]]) -> T:
    loop = asyncio.get_running_loop()
    loop_thread_id = threading.get_ident()
    finished: asyncio.Future[outcome.Outcome[T]] = loop.create_future()
    # Created here, entered by the guest: the host can cancel the trio run even before
    # trio_main has taken its first step.
    root_scope = trio.CancelScope()

    async def guest_main() -> T:
        bridge = AsyncioBridge(
            loop, trio.lowlevel.current_trio_token(), loop_thread_id=loop_thread_id
        )
        try:
            with root_scope:
                return await trio_main(bridge)
        finally:
            bridge._close()
        raise _GuestCancelled  # only reached when root_scope swallowed the host's cancel

    def on_trio_done(trio_outcome: outcome.Outcome[T]) -> None:
        if not finished.done():
            finished.set_result(trio_outcome)

    trio.lowlevel.start_guest_run(
        guest_main,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=on_trio_done,
        # asyncio on Unix sets a wakeup fd only for loop.add_signal_handler, which we never
        # use, so trio must own it; the Windows proactor loop always sets one.
        host_uses_signal_set_wakeup_fd=sys.platform == "win32",
    )
    # Documented to work from the host once start_guest_run has returned.
    trio_token = trio.lowlevel.current_trio_token()

    host_cancelled = False
    while not finished.done():
        try:
            # shield: a cancelled host must keep waiting for trio, not abandon the future.
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            host_cancelled = True
            with contextlib.suppress(trio.RunFinishedError):
                trio_token.run_sync_soon(root_scope.cancel)

    trio_outcome = finished.result()
    if host_cancelled:
        if isinstance(trio_outcome, outcome.Error) and not isinstance(
            trio_outcome.error, _GuestCancelled
        ):
            return trio_outcome.unwrap()  # trio_main failed while unwinding: that wins
        # Re-raise the host's cancellation; asyncio.Runner turns it into KeyboardInterrupt
        # when it came from SIGINT.
        raise asyncio.CancelledError
    return trio_outcome.unwrap()
