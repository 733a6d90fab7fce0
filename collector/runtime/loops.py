"""Event-loop lag: how late the loop runs a task that asked to wake up.

A task sleeps ``interval_s`` over and over; each wake-up later than asked is lag, time in which
no task ran because one was busy (a long engine step, a big checkpoint, a slow callback). The
daemon's other loop, asyncio's, runs trio as a guest on the same thread, so this measures both.
``/healthz`` and ``/metrics`` show the last lag and the largest of the last minute.
"""

from __future__ import annotations

from collections import deque

import msgspec
import trio


class LoopHealth(msgspec.Struct, kw_only=True, gc=False):
    """``loop`` of ``/healthz``: the last lag and the largest of the window, in seconds."""

    lag_s: float
    lag_max_s: float


class LoopLag:
    def __init__(self, interval_s: float = 0.25, window_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.last_s = 0.0
        self.recent: deque[float] = deque(maxlen=max(1, round(window_s / interval_s)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            asked = trio.current_time() + self.interval_s
            await trio.sleep_until(asked)
            self.last_s = max(0.0, trio.current_time() - asked)
            self.recent.append(self.last_s)

    def health(self) -> LoopHealth:
        return LoopHealth(
            lag_s=round(self.last_s, 6), lag_max_s=round(max(self.recent, default=0.0), 6)
        )
