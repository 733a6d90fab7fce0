"""The bridge from trio code to asyncio libraries (asyncmy, redis-py's asyncio client).

``await bridge.run(coro_fn, *args)`` runs ``coro_fn(*args)`` as a task on the asyncio loop and
parks the calling trio task until that asyncio task has finished. Two loops can sit behind the
same interface:

* guest mode (production, see ``collector.runtime.host``): asyncio is the host loop and trio runs
  as its guest in the same thread;
* a dedicated asyncio thread (``open_thread_bridge``): for trio tests and tools, because
  pytest-trio cannot host a guest run.

Guarantees:

* the coroutine's return value or exception reaches the trio caller unchanged;
* trio cancellation cancels the asyncio task and *waits for it to finish* before the caller sees
  ``trio.Cancelled``: a cancelled bridged call never leaves an asyncio task running behind it
  (the price: a coroutine that ignores CancelledError keeps its trio caller waiting; asyncmy and
  redis-py honour it);
* the asyncio task runs in a fresh, empty ``contextvars.Context``: trio's context (structlog
  bindings, anything trio keeps in contextvars) never leaks into asyncio code.

This module never touches the data it carries, never retries, and never lets an asyncio
exception type (``asyncio.CancelledError``) escape into trio code. Its own errors::

    RuntimeFault                  base of the runtime's own errors
     ├── BridgeClosed             the asyncio loop behind the bridge is closed or shutting down
     └── BridgeCancelled          the asyncio side cancelled the call (trio did not ask for it)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar, TypeVarTuple, cast, final

import outcome
import structlog
import trio

from protocol.errors import BwmonError

__all__ = [
    "AsyncioBridge",
    "BridgeCancelled",
    "BridgeClosed",
    "RuntimeFault",
    "open_thread_bridge",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_log = structlog.get_logger()


class RuntimeFault(BwmonError):
    """Base of the errors raised by ``collector.runtime`` itself."""


class BridgeClosed(RuntimeFault):
    """The asyncio loop behind the bridge is closed or shutting down; the call did not run or
    was cut short by the shutdown."""


class BridgeCancelled(RuntimeFault):
    """The asyncio task running the call was cancelled from the asyncio side, not by trio."""


# Marks "the asyncio task ended cancelled" on its way to the trio thread, where the decision
# between trio.Cancelled, BridgeClosed and BridgeCancelled is taken (see _PendingCall.deliver).
_CANCELLED: Final = object()


async def _invoke(fn: Callable[[*Ts], Awaitable[T]], args: tuple[*Ts]) -> T:
    # fn(*args) is called here, inside the asyncio task, not in the trio task: libraries may
    # look up the running asyncio loop while building their awaitable, and a coroutine object
    # is only ever created once the task really runs (so nothing can be "never awaited").
    return await fn(*args)


@final
class _PendingCall(Generic[T]):
    """One bridged call. Fields written in the trio thread are only read in the trio thread and
    vice versa, so the thread bridge needs no lock."""

    __slots__ = (
        "_args",
        "_asyncio_task",
        "_bridge",
        "_fn",
        "_raise_cancel",
        "_settled",
        "_trio_task",
    )

    def __init__(
        self,
        bridge: AsyncioBridge,
        fn: Callable[..., Awaitable[T]],
        args: tuple[object, ...],
        trio_task: trio.lowlevel.Task,
    ) -> None:
        self._bridge = bridge
        self._fn = fn
        self._args = args
        self._trio_task = trio_task
        self._asyncio_task: asyncio.Task[T] | None = None  # asyncio thread only
        self._raise_cancel: trio.lowlevel.RaiseCancelT | None = None  # trio thread only
        self._settled = False  # trio thread only

    # --- asyncio thread -------------------------------------------------------------------

    def start(self) -> None:
        loop = self._bridge._loop
        task = loop.create_task(
            _invoke(self._fn, self._args),
            name=f"bridge:{getattr(self._fn, '__qualname__', repr(self._fn))}",
        )  # the task copies this callback's context: the fresh one from AsyncioBridge._schedule
        self._asyncio_task = task
        task.add_done_callback(self.finished)

    def cancel_asyncio_task(self) -> None:
        # start() always ran before this: both go through the loop's FIFO callback queue and
        # start was queued first.
        if self._asyncio_task is not None:
            self._asyncio_task.cancel("cancelled by trio")

    def finished(self, task: asyncio.Task[T]) -> None:
        result: object
        if task.cancelled():
            result = _CANCELLED
        else:
            # task.exception() also marks the exception as retrieved, so asyncio does not log
            # "Task exception was never retrieved" for an error that trio re-raises.
            exc = task.exception()
            result = outcome.Value(task.result()) if exc is None else outcome.Error(exc)
        # RunFinishedError: the trio run is gone; nobody is left waiting for this result.
        with contextlib.suppress(trio.RunFinishedError):
            self._bridge._trio_token.run_sync_soon(self.deliver, result)

    # --- trio thread ----------------------------------------------------------------------

    def abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        # Abort.FAILED: the trio task keeps waiting until the asyncio task has really ended
        # (an asyncio task left running after its caller was cancelled is the bug this
        # bridge exists to prevent). deliver() then raises the cancellation via raise_cancel,
        # which is how trio documents a deferred abort.
        if self._raise_cancel is None:
            self._raise_cancel = raise_cancel
            try:
                self._bridge._schedule(self.cancel_asyncio_task)
            except RuntimeError:
                # The loop is closed: its teardown cancelled the task already and nothing is
                # left to wait for.
                self._settled = True
                return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED

    def deliver(self, result: object) -> None:
        if self._settled:
            return
        self._settled = True
        delivered: outcome.Outcome[Any]
        if result is not _CANCELLED:
            # Even if trio asked for cancellation meanwhile: the call completed (or failed on
            # its own), and its result says more than Cancelled would. The caller's cancel
            # scope stays cancelled and fires at its next checkpoint.
            delivered = cast("outcome.Outcome[Any]", result)
        elif self._raise_cancel is not None:
            delivered = outcome.capture(self._raise_cancel)
        elif self._bridge._closed:
            delivered = outcome.Error(BridgeClosed("asyncio loop shut down during the call"))
        else:
            delivered = outcome.Error(BridgeCancelled("asyncio task cancelled on the asyncio side"))
        trio.lowlevel.reschedule(self._trio_task, delivered)


@final
class AsyncioBridge:
    """Runs asyncio coroutines for trio tasks. Get one from ``run_guest`` (production) or
    ``open_thread_bridge`` (tests, tools) rather than building it yourself."""

    __slots__ = ("_closed", "_loop", "_loop_thread_id", "_trio_token")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        trio_token: trio.lowlevel.TrioToken,
        *,
        loop_thread_id: int,
    ) -> None:
        self._loop = loop
        self._trio_token = trio_token
        self._loop_thread_id = loop_thread_id
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed or self._loop.is_closed()

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await fn(*args)`` on the asyncio loop and return its result to trio.

        Pass keyword arguments with ``functools.partial``. Raises ``BridgeClosed`` if the loop
        is closed or shutting down, ``BridgeCancelled`` if asyncio code cancelled the task, and
        whatever ``fn`` raised otherwise. If trio cancels the call and the coroutine still
        completes (it swallowed the CancelledError), its result is returned: the work happened,
        and the caller's cancel scope fires at its next checkpoint.
        """
        if trio.lowlevel.current_trio_token() is not self._trio_token:
            raise RuntimeError("this AsyncioBridge belongs to another trio run")
        # A call made in an already-cancelled scope must not start asyncio work at all.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            raise BridgeClosed("the asyncio loop behind this bridge is closed")
        call: _PendingCall[T] = _PendingCall(self, fn, args, trio.lowlevel.current_task())
        try:
            self._schedule(call.start)
        except RuntimeError as exc:  # the loop closed between the check and the call
            raise BridgeClosed("the asyncio loop behind this bridge is closed") from exc
        return cast("T", await trio.lowlevel.wait_task_rescheduled(call.abort))

    def _schedule(self, callback: Callable[[], None]) -> None:
        # A fresh Context per callback so asyncio code never runs in a trio task's context.
        # In guest mode we are on the loop's own thread and can skip call_soon_threadsafe's
        # self-pipe write; in thread mode it is required.
        if threading.get_ident() == self._loop_thread_id:
            self._loop.call_soon(callback, context=contextvars.Context())
        else:
            self._loop.call_soon_threadsafe(callback, context=contextvars.Context())

    def _close(self) -> None:
        """Refuse new calls; calls in flight finish normally or as BridgeClosed."""
        self._closed = True


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Body of the bridge thread: run the loop until stopped, then tear it down the way
    ``asyncio.run`` does, so remaining tasks see CancelledError and nothing is left unclosed."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            _cancel_remaining_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel("asyncio bridge shutting down")
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during asyncio bridge shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


@asynccontextmanager
async def open_thread_bridge(*, shutdown_timeout: float = 5.0) -> AsyncIterator[AsyncioBridge]:
    """Run a new asyncio loop in a dedicated daemon thread and yield a bridge to it.

    For trio tests and tools that cannot host a guest run. On exit, remaining asyncio tasks are
    cancelled and awaited, the loop is closed and the thread joined, all within
    ``shutdown_timeout`` seconds (a thread that overruns it is logged and abandoned).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=_serve_loop, args=(loop,), name="bwmon-asyncio-bridge", daemon=True
    )
    thread.start()
    assert thread.ident is not None
    bridge = AsyncioBridge(loop, trio.lowlevel.current_trio_token(), loop_thread_id=thread.ident)
    try:
        yield bridge
    finally:
        bridge._close()
        # loop.stop is queued behind every call already scheduled, so those calls start and
        # are then cancelled by the teardown in _serve_loop, which wakes their trio callers.
        with contextlib.suppress(RuntimeError):  # already closed: the thread is ending anyway
            loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True), trio.move_on_after(shutdown_timeout):
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
        if thread.is_alive():
            _log.warning(
                "asyncio bridge thread did not stop in time",
                logger=__name__,
                timeout_s=shutdown_timeout,
            )
