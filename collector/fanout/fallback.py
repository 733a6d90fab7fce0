"""The Redis channel with a local fallback: while Redis cannot be reached, this daemon's own
subscribers go on getting this daemon's meetings.

``FallbackChannel`` wraps a ``RedisChannel`` and has the same ``Channel`` interface. Its
``mode`` changes only in ``publish`` (once a publish interval):

* ``redis``: everything goes through Redis, as without the wrapper.
* ``filling``: a publish found Redis unreachable. The wrapper starts a ``DeltaLog`` under a
  fresh epoch and raises ``EpochChanged``, so the publisher sends its whole state at the next
  interval. That state goes into the log, and only then are subscribers told of the new epoch
  (``on_epoch``), so the snapshots they resynchronise with hold every local entity.
* ``local``: publishes go into the log and out to this daemon's subscribers as deltas.
  Meetings aggregated on other daemons are not in this view.
* ``returning``: the Redis channel's reader reached Redis in a round of reads begun after the
  fallback started (``redis_back``). The wrapper raises ``EpochChanged`` again; the whole
  state then goes to Redis (whose copy of this daemon's entities is stale, or was lost), and
  subscribers are told the Redis epoch: snapshots of every daemon's meetings. Should that
  publish fail, the wrapper starts over in ``filling`` with a fresh log and epoch.

Neither the publisher nor the subscribers wait on Redis outside ``redis`` mode (``returning``
tries one publish); the Redis channel's own tasks (reader, keepers) go on trying with backoff.
Deltas the reader delivers outside ``redis`` mode are dropped: the subscribers then hold the
local epoch. Alert transitions published locally do not reach other daemons' subscribers;
the open alerts do, with the state sent on return.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final, NoReturn

import trio

from collector.fanout.channel import (
    ChannelUnavailable,
    Deliver,
    EpochChanged,
    OnEpoch,
    Requests,
    new_epoch,
)
from collector.fanout.health import RedisHealth
from collector.fanout.hub import Change, DeltaLog
from collector.fanout.parts import shown
from collector.fanout.redis_channel import RedisChannel
from collector.logs import get_logger
from protocol.subscribe import Delta, Snapshot

log = get_logger("fanout.fallback")

REDIS: Final = "redis"
FILLING: Final = "filling"  # local log started: the next publish fills it, then on_epoch
LOCAL: Final = "local"
RETURNING: Final = "returning"  # Redis is back: the next publish sends everything there


class FallbackChannel:
    """A ``Channel``: ``redis`` while Redis answers, this daemon's own meetings while not."""

    def __init__(self, redis: RedisChannel, history: int = 120) -> None:
        self.redis = redis
        self.history = history
        self.mode = REDIS
        self._local: DeltaLog | None = None
        self._fell_at = 0.0  # trio time the last fallback started
        self._watched: frozenset[str] = frozenset()
        self._deliver: Deliver | None = None
        self._on_epoch: OnEpoch | None = None
        self._requests = Requests(redis.interest_ttl_s)
        self.fallbacks = 0

    @property
    def epoch(self) -> str:
        local = self._serving_locally()
        return local.epoch if local is not None else self.redis.epoch

    @property
    def counters(self) -> dict[str, int]:
        """The Redis channel's counters and the fallbacks."""
        return {**self.redis.counters, "fallbacks": self.fallbacks}

    def health(self) -> RedisHealth | None:
        return RedisHealth(mode=self.mode, **self.counters)

    @property
    def problem(self) -> str | None:
        """Why subscribers see this daemon's meetings only (None: they see every daemon's)."""
        if self.mode == REDIS:
            return None
        return "redis unreachable: serving this daemon's meetings only"

    async def serve(
        self,
        deliver: Deliver,
        on_epoch: OnEpoch,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._deliver, self._on_epoch = deliver, on_epoch
        await self.redis.serve(self._from_redis, self._epoch_from_redis, task_status=task_status)

    def _from_redis(self, delta: Delta) -> None:
        if self.mode == REDIS and self._deliver is not None:
            self._deliver(delta)

    def _epoch_from_redis(self, epoch: str) -> None:
        if self.mode == REDIS and self._on_epoch is not None:
            self._on_epoch(epoch)

    def watch(self, topics: Collection[str]) -> None:
        self._watched = frozenset(topics)
        self.redis.watch(topics)

    async def publish(self, changes: list[Change], at: float) -> None:
        if self.mode in (REDIS, RETURNING):
            try:
                await self.redis.publish(changes, at)
            except ChannelUnavailable as exc:
                self._fall_back(str(exc))
            if self.mode == RETURNING:
                self.mode, self._local = REDIS, None
                log.info("redis_fallback_ended", epoch=self.redis.epoch)
                self._tell(self.redis.epoch)  # subscribers resynchronise from Redis
            return
        local = self._local
        assert local is not None  # set whenever the mode is FILLING or LOCAL
        if self.mode == LOCAL and self.redis_back():
            self.mode = RETURNING
            self.redis.start_over()  # what Redis holds of this daemon's may be stale
            raise EpochChanged("redis reachable again: publish everything to it")
        deltas = [local.append(c, at) for c in map(shown, changes) if c]
        if self.mode == FILLING:
            self.mode = LOCAL
            self._tell(local.epoch)  # subscribers resynchronise from the filled log
            return
        if self._deliver is not None:
            for delta in deltas:
                self._deliver(delta)

    def redis_back(self) -> bool:
        """The reader reached Redis in a round of reads begun after the fallback started."""
        reached = self.redis.reached_at
        return reached is not None and reached > self._fell_at

    def _fall_back(self, error: str) -> NoReturn:
        """Start a fresh local log; the publisher must send everything into it."""
        self.mode, self._local = FILLING, DeltaLog(new_epoch(), self.history)
        self._fell_at = trio.current_time()
        self.fallbacks += 1
        log.warning("redis_fallback_started", epoch=self._local.epoch, error=error[:300])
        raise EpochChanged("redis unreachable: publish everything to the local fallback")

    def _tell(self, epoch: str) -> None:
        if self._on_epoch is not None:
            self._on_epoch(epoch)

    def _serving_locally(self) -> DeltaLog | None:
        return self._local if self.mode in (LOCAL, RETURNING) else None

    async def snapshot(self, topic: str) -> Snapshot:
        local = self._serving_locally()
        return local.snapshot(topic) if local is not None else await self.redis.snapshot(topic)

    async def since(self, topic: str, epoch: str | None, seq: int | None) -> list[Delta] | None:
        local = self._serving_locally()
        if local is not None:
            return local.since(topic, epoch, seq)
        return await self.redis.since(topic, epoch, seq)

    async def wanted_topics(self) -> set[str]:
        if self.mode in (FILLING, LOCAL):  # no Redis call while it is unreachable
            return {t for t in self._watched if t.startswith("meeting:")} | self._requests.live()
        return await self.redis.wanted_topics()

    async def request(self, topic: str) -> None:
        if self.mode in (FILLING, LOCAL):
            self._requests.add(topic)
            return
        await self.redis.request(topic)

    async def parts_published(self, topics: Collection[str]) -> None:
        if self.mode == REDIS:
            await self.redis.parts_published(topics)

    async def await_parts(self, topic: str, timeout_s: float) -> bool:
        if self.mode in (FILLING, LOCAL):
            return True  # this daemon's part is all it serves
        return await self.redis.await_parts(topic, timeout_s)

    async def forget(self, topics: Iterable[str]) -> None:
        if self._local is not None and self.mode in (FILLING, LOCAL):
            self._local.forget(topics)
            return
        await self.redis.forget(topics)

    async def aclose(self) -> None:
        await self.redis.aclose()
