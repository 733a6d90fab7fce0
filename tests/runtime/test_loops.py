"""Event-loop lag as seen by LoopLag: nothing while the loop is free, the length of a blocking
call when one holds the loop."""

from __future__ import annotations

import time

import trio

from collector.runtime.loops import LoopLag


async def test_a_blocked_loop_shows_as_lag(nursery: trio.Nursery) -> None:
    lag = LoopLag(interval_s=0.01, window_s=0.2)
    await nursery.start(lag.run)
    await trio.sleep(0.05)
    assert lag.health().lag_max_s < 0.15  # the loop was free: only scheduling noise
    time.sleep(0.3)  # noqa: ASYNC251 - a blocking call holds the loop: the point of the test
    await trio.sleep(0.05)
    assert lag.health().lag_max_s >= 0.25
    for _ in range(200):  # the window is 20 samples: the blocked one ages out
        if lag.health().lag_max_s < 0.25:
            break
        await trio.sleep(0.01)
    assert lag.health().lag_max_s < 0.25
