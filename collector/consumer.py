"""The trio side of aggregation: feed the engine (from the WebSocket queue and directly from UDP
ingest), tick it on time.

``FrameConsumer.consume`` takes decoded batches from the bounded ingest channel (WebSocket
sessions: each with its session's boot nonce) and ``FrameConsumer.apply`` gets UDP ingest's
batches directly; each hands its batch to ``Engine.add`` with the daemon's time of arrival (one
clock read per batch, never per frame);
``FrameConsumer.tick`` calls ``Engine.tick`` once per bucket and drains what the engine
produced: rows go to storage and alerts to fan-out (``on_output``), and ``after_tick`` tells the
publisher that fresh values are there. ``on_openings`` gets the records of the streams a batch
opened (``Engine.openings``) right after it, with no await in between: the daemon journals
them. The most recent events, alerts and summaries are also kept in small bounded buffers for
inspection.

Never awaits anything but the channel and the timer: no database, no Redis, no subscriber.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec
import trio

from collector.aggregate.engine import Engine, Output
from collector.logs import get_logger
from protocol import Frame

log = get_logger("consumer")

RECENT = 100

# What a WebSocket session queues: its decoded frames and the ``boot`` of its hello.
SessionBatch: TypeAlias = tuple[list[Frame], str]


class ConsumerHealth(msgspec.Struct, kw_only=True, gc=False):
    """``consumer`` of ``/healthz``."""

    batches: int
    frames_by_kind: dict[str, int]
    produced: dict[str, int]  # what the engine produced, by kind
    engine_errors: int
    last_tick_age_s: float | None  # None: no tick yet (starting up)


class FrameConsumer:
    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        on_output: Callable[[Output], None] | None = None,
        after_tick: Callable[[float], None] | None = None,
        on_openings: Callable[[list[list[Any]]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_openings = on_openings  # the streams a batch opened, before the next batch
        self.on_output = on_output
        self.after_tick = after_tick
        self.clock = clock
        self.batches = 0
        self.engine_errors = 0
        self.produced: dict[str, int] = {
            "rtc_rows": 0,
            "http_rows": 0,
            "events": 0,
            "alerts": 0,
            "summaries": 0,
        }
        self.recent_alerts: deque[Any] = deque(maxlen=RECENT)
        self.recent_events: deque[Any] = deque(maxlen=RECENT)
        self.recent_summaries: deque[Any] = deque(maxlen=RECENT)

    async def consume(
        self,
        batches: trio.MemoryReceiveChannel[SessionBatch],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async for batch, boot in batches:
            self.apply(batch, boot)

    def apply(self, batch: list[Frame], boot: str | None = None) -> None:
        """Aggregate one batch now: the WebSocket sessions' batches from the queue
        (``consume``, with the session's ``boot``), UDP ingest's as it reads them (a direct
        call: collector/ingest/udp.py)."""
        self.batches += 1
        try:
            self.engine.add(batch, self.clock(), boot)
        except Exception:
            self._failed("add")
        if self.engine.openings and self.on_openings is not None:
            self.on_openings(self.engine.take_openings())

    async def tick(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick the engine at every bucket boundary of the daemon's clock."""
        bucket_s = self.engine.settings.bucket_s
        task_status.started()
        while True:
            now = self.clock()
            await trio.sleep(bucket_s - now % bucket_s)
            now = self.clock()
            try:
                for _ in self.engine.tick_steps(now):
                    await trio.lowlevel.checkpoint()  # let ingest drain between steps
            except Exception:
                self._failed("tick")
            self.take(self.engine.drain())
            if self.after_tick is not None:
                self.after_tick(now)

    def _failed(self, step: str) -> None:
        # A bug in the engine must not stop ingest: log it loudly, count it, go on.
        self.engine_errors += 1
        log.exception("engine_failed", step=step)

    def take(self, output: Output) -> None:
        """Count what the engine produced and hand it on (to storage and fan-out)."""
        produced = self.produced
        produced["rtc_rows"] += len(output.rtc_rows)
        produced["http_rows"] += len(output.http_rows)
        produced["events"] += len(output.events)
        produced["alerts"] += len(output.alerts)
        produced["summaries"] += len(output.summaries)
        self.recent_alerts.extend(output.alerts)
        self.recent_events.extend(output.events)
        self.recent_summaries.extend(output.summaries)
        if self.on_output is not None:
            self.on_output(output)

    def health(self, started_wall: float = 0.0) -> ConsumerHealth:
        """``started_wall``: when this run started (``time.time()``); a tick before it, an
        earlier run's restored from the checkpoint, counts as one at that instant, so a daemon
        that was down longer than the stall limit is not stalled before its first tick."""
        last = self.engine.last_tick
        age = None if last is None else round(max(0.0, time.time() - max(last, started_wall)), 3)
        return ConsumerHealth(
            batches=self.batches,
            frames_by_kind=dict(sorted(self.engine.frames_by_kind.items())),
            produced=dict(self.produced),
            engine_errors=self.engine_errors,
            last_tick_age_s=age,
        )
