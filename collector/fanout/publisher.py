"""The publisher: once per publish interval, the engine's topics → diffs → the channel.

After an engine tick (``on_tick``), and at most once per ``interval_s``, it builds every topic's
state from the engine (``collector.fanout.topics``): this daemon's part of each entity, which
the channel merges with the other daemons' parts. It diffs that against what it published last
and hands the non-empty changes to the channel in one call: at most one delta per topic per
interval, holding only the entities and fields that changed, plus removals. ``meeting:<id>``
topics are built only while someone subscribes to them (``Channel.wanted_topics``); when such a
meeting ends, its topic gets a last delta that removes everything, then is forgotten.

A first reader of a meeting topic (a subscriber's snapshot, ``/api/meetings/{id}``) calls
``prepare``: the topic is requested from every daemon, this daemon publishes its part at once,
and the reader waits (at most ``parts_timeout_s``) until every live daemon has published its
own, so that the first snapshot holds the whole meeting. Each publish tells the channel which
meeting topics this daemon's part is current in (``Channel.parts_published``).

If the channel is unavailable nothing is marked published: the next interval diffs against
the last state that did go out, so no change is lost, only delayed. If the channel lost its
state (``EpochChanged``), everything is published again from scratch.

Never touches a socket itself; the only await is the channel.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from collector.aggregate.alerts import AlertEvent
from collector.aggregate.engine import Engine
from collector.fanout import topics
from collector.fanout.channel import Channel, ChannelUnavailable, EpochChanged
from collector.fanout.health import PublisherHealth
from collector.fanout.hub import change
from collector.logs import get_logger
from collector.runtime.steps import finish_between_tasks
from protocol.subscribe import Entities

log = get_logger("fanout.publisher")

MAX_PENDING_ALERTS = 10_000


class Publisher:
    def __init__(
        self,
        engine: Callable[[], Engine],
        channel: Channel,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine  # a getter: a restored checkpoint replaces the daemon's engine
        self.channel = channel
        self.interval_s = interval_s
        self.clock = clock
        # Two publish intervals for the other daemons to see a request and publish their part.
        self.parts_timeout_s = 2 * interval_s + 1.0
        self._lock = trio.Lock()  # one publish at a time: ``published`` is what went out
        self.published: dict[str, Entities] = {}
        self.pending_alerts: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_ALERTS)
        self._wanted: set[str] = set()
        self._ticked = trio.Event()
        self._tick_at = 0.0  # the time of the engine's last tick
        self._published_tick: float | None = None  # that of the last tick published
        # Why the channel refused the last call (None: it answered): readiness reads it.
        self.channel_error: str | None = None
        self.counters = {
            "publishes": 0,
            "deltas": 0,
            "unavailable": 0,
            "epoch_changes": 0,
            "last_publish_ms": 0.0,
            "prepared": 0,
            "parts_timeouts": 0,  # prepares that served without some daemon's part
        }

    def health(self) -> PublisherHealth:
        return msgspec.convert(self.counters, PublisherHealth)

    def offer_alerts(self, alerts: list[AlertEvent]) -> None:
        """Alert transitions the engine produced; they go out with the next ``alerts`` delta."""
        self.pending_alerts.extend(topics.alert_entity(a) for a in alerts)

    def on_tick(self, now: float) -> None:
        """The engine ticked at ``now``: fresh values to publish."""
        self._tick_at = now
        self._ticked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._ticked.wait()
            self._ticked = trio.Event()
            tick_at, last = self._tick_at, self._published_tick
            # Ticks faster than the publish interval: throttle, on the ticks' own times. When a
            # tick ends, and so when this task wakes, varies with the tick's length under load:
            # throttling on that skipped every other publish (deltas up to 2 intervals late).
            if last is not None and tick_at - last < self.interval_s * 0.9:
                continue
            if await self.publish(self.clock()):
                self._published_tick = tick_at

    async def build(self, now: float) -> dict[str, Entities]:
        """Every topic's state now: the fixed topics, the watched meetings, and an empty state
        for watched topics whose meeting is gone (their last delta removes everything).
        The ``meetings`` topic is built in steps, letting ingest drain between them."""
        engine = self.engine()
        meetings = await finish_between_tasks(topics.meetings_topic_steps(engine, now))
        states = {
            "meetings": meetings,
            "http": topics.http_topic(engine, now),
            "alerts": topics.alerts_topic(engine),
        }
        for topic in self._wanted | {t for t in self.published if t.startswith("meeting:")}:
            meeting = topic.removeprefix("meeting:")
            if meeting in engine.meetings:
                if topic in self._wanted:
                    states[topic] = topics.meeting_topic(engine, meeting, now)
            elif topic in self.published:
                states[topic] = {}
        return states

    async def publish(self, now: float) -> bool:
        """Publish the topics' changes as of ``now``; False if the channel did not take them."""
        started = time.perf_counter()
        async with self._lock:
            try:
                self._wanted = await self.channel.wanted_topics()
                self.channel_error = None
            except ChannelUnavailable as exc:  # keep what was wanted last
                self.channel_error = str(exc)[:300]
            if not await self._send(await self.build(now), now):
                return False
            with contextlib.suppress(ChannelUnavailable):
                await self.channel.parts_published(self._wanted)
        self.counters["publishes"] += 1
        self.counters["last_publish_ms"] = round(1000 * (time.perf_counter() - started), 3)
        return True

    async def prepare(self, topic: str) -> None:
        """Before a first snapshot of ``meeting:<id>``: request it from every daemon, publish
        this daemon's part now, wait (bounded) for the other daemons' parts. Raises
        ``ChannelUnavailable``."""
        await self.channel.request(topic)
        if not self.counters["publishes"]:
            # Nothing of this daemon's is out yet: everything, the requested topic with it (a
            # first publish replaces what an earlier run of this daemon left in the channel).
            if not await self.publish(self.clock()):
                return
        else:
            async with self._lock:
                self._wanted.add(topic)
                now = self.clock()
                engine, meeting = self.engine(), topic.removeprefix("meeting:")
                live = meeting in engine.meetings
                state = topics.meeting_topic(engine, meeting, now) if live else {}
                if (state or topic in self.published) and not await self._send({topic: state}, now):
                    return
                await self.channel.parts_published([topic])
        self.counters["prepared"] += 1
        if not await self.channel.await_parts(topic, self.parts_timeout_s):
            self.counters["parts_timeouts"] += 1
            log.info("parts_timeout", topic=topic, waited_s=self.parts_timeout_s)

    async def _send(self, states: dict[str, Entities], now: float) -> bool:
        """The changes from what was published to ``states`` (with the pending alert
        transitions when ``alerts`` is among them) into the channel; False if it refused."""
        changes = [change(t, self.published.get(t, {}), s) for t, s in states.items()]
        alerts = list(self.pending_alerts) if "alerts" in states else []
        for c in changes:
            if c.topic == "alerts":
                c.events = alerts
        changes = [c for c in changes if c]
        try:
            if changes:
                await self.channel.publish(changes, now)
        except ChannelUnavailable as exc:
            self.counters["unavailable"] += 1
            self.channel_error = str(exc)[:300]
            log.warning("publish_unavailable", error=str(exc))
            return False
        except EpochChanged:
            self.counters["epoch_changes"] += 1
            log.info("channel_epoch_changed", epoch=self.channel.epoch)
            self.published = {}  # the channel starts empty: the next interval sends it all
            return False
        for _ in range(min(len(alerts), len(self.pending_alerts))):
            self.pending_alerts.popleft()  # those offered meanwhile wait for the next publish
        ended = [t for t, s in states.items() if not s and t.startswith("meeting:")]
        self.published.update(states)
        for topic in ended:
            del self.published[topic]
        if ended:
            with contextlib.suppress(ChannelUnavailable):
                await self.channel.forget(ended)
        self.counters["deltas"] += len(changes)
        return True
