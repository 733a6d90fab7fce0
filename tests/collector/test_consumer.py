"""The consumer feeds the engine from the ingest channel and ticks it on the daemon's clock."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import trio
import trio.testing

from collector.aggregate.engine import Engine
from collector.consumer import FrameConsumer, SessionBatch
from protocol import Frame
from tests.helpers import event, rtc, wait_for


class FailsOnce:
    """An engine whose first ``add`` fails; the rest is the real engine's (compiled, Engine
    takes no subclass)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failed = False

    def add(self, frames: Iterable[Frame], now: float, boot: str | None = None) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected engine bug")
        self.engine.add(frames, now, boot)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


async def test_frames_reach_the_engine_and_ticks_run_the_lifecycle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    consumer = FrameConsumer(engine, clock=trio.current_time)
    send, receive = trio.open_memory_channel[SessionBatch](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(consumer.consume, receive)
        await nursery.start(consumer.tick)
        await send.send(([event("join"), rtc(1), rtc(2)], "boot"))
        await wait_for(lambda: engine.stats()["participants"] == 1)
        assert engine.stats()["rtc_streams"] == 1
        # No more samples: after the silence timeout and the meeting timeout, it is all over.
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert engine.stats()["meetings"] == 0
    health = consumer.health()
    assert health.frames_by_kind == {"event": 1, "rtc": 2}
    assert health.produced["summaries"] == 1
    assert health.produced["rtc_rows"] == 1
    assert health.engine_errors == 0
    kinds = [e.kind for e in consumer.recent_events]
    assert kinds == ["meeting_started", "joined", "left", "meeting_ended"]


async def test_an_engine_failure_is_counted_and_consuming_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    consumer = FrameConsumer(cast(Engine, FailsOnce(engine)), clock=trio.current_time)
    send, receive = trio.open_memory_channel[SessionBatch](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(consumer.consume, receive)
        await send.send(([rtc(1, participant="lost")], "boot"))
        await send.send(([rtc(1)], "boot"))
        await wait_for(lambda: engine.stats()["rtc_streams"] == 1)
        nursery.cancel_scope.cancel()
    assert consumer.engine_errors == 1
