"""The Redis channel's local fallback against a real ``redis-server`` of the test's own that is
stopped and started again: while it is down, this daemon's subscribers get this daemon's
state under a local epoch; once it is back, the state goes to Redis and they get its epoch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from collector.fanout.channel import ChannelUnavailable, EpochChanged
from collector.fanout.fallback import FallbackChannel
from collector.fanout.hub import change
from collector.fanout.redis_channel import RedisChannel
from collector.runtime import AsyncioBridge, open_thread_bridge
from protocol.subscribe import Entities
from tests.fanout.test_redis_channel import Daemon
from tests.helpers import CuttableProxy, RedisServer, free_port, wait_for


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_thread_bridge() as bridge:
        yield bridge


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Publisher:
    """The publisher's side of the contract: on ``EpochChanged`` send everything next time; on
    ``ChannelUnavailable`` keep what was published and diff again later."""

    def __init__(self, channel: FallbackChannel) -> None:
        self.channel = channel
        self.published: Entities = {}

    async def publish(self, state: Entities, at: float) -> str:
        changes = [c for c in [change("meetings", self.published, state)] if c]
        try:
            await self.channel.publish(changes, at)
        except EpochChanged:
            self.published = {}
            return "everything again"
        except ChannelUnavailable:
            return "unavailable"
        self.published = state
        return "ok"


@pytest.fixture
async def redis(bridge: AsyncioBridge, server: RedisServer) -> AsyncIterator[RedisChannel]:
    channel = RedisChannel(
        bridge, f"redis://127.0.0.1:{server.port}/0", retry_max_s=0.5, connect_timeout_s=0.5
    )
    yield channel
    await channel.aclose()


@asynccontextmanager
async def serving(redis: RedisChannel) -> AsyncIterator[tuple[FallbackChannel, Daemon, Publisher]]:
    """The fallback around ``redis``, served, its subscribers watching ``meetings``."""
    channel = FallbackChannel(redis, history=50)
    subscribers = Daemon()
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.serve, subscribers.deliver, subscribers.on_epoch)
        channel.watch({"meetings"})
        # As a subscriber session does: the reader starts on the topic from this snapshot's
        # position, not from wherever the topic is once it gets to it (a publish in between
        # would otherwise be in no delta).
        await channel.snapshot("meetings")
        yield channel, subscribers, Publisher(channel)
        nursery.cancel_scope.cancel()


def state(channel: FallbackChannel) -> tuple[str, str | None]:
    """The mode and the problem (read afresh: the publishes in between change them)."""
    return channel.mode, channel.problem


async def test_subscribers_get_local_state_while_redis_is_down_and_every_daemons_after(
    redis: RedisChannel, server: RedisServer
) -> None:
    async with serving(redis) as (channel, subscribers, publisher):
        assert await publisher.publish({"m1": {"n": 1}}, 1.0) == "ok"
        await wait_for(lambda: len(subscribers.deltas) == 1)  # through Redis
        shared = channel.epoch
        assert state(channel) == ("redis", None)

        await trio.to_thread.run_sync(server.stop)
        assert await publisher.publish({"m1": {"n": 2}}, 2.0) == "everything again"
        assert channel.mode == "filling"
        assert channel.problem is not None
        assert subscribers.epochs == []  # not before the local state is whole
        assert await publisher.publish({"m1": {"n": 2}, "m2": {"n": 1}}, 3.0) == "ok"
        local = channel.epoch
        assert local != shared
        assert subscribers.epochs == [local]
        snapshot = await channel.snapshot("meetings")
        assert (snapshot.epoch, snapshot.entities) == (local, {"m1": {"n": 2}, "m2": {"n": 1}})
        assert await channel.wanted_topics() == set()  # no Redis round trip to fail

        assert await publisher.publish({"m2": {"n": 5}}, 4.0) == "ok"  # local deltas
        last = subscribers.deltas[-1]
        assert (last.epoch, last.seq, last.changed, last.removed) == (
            local,
            snapshot.seq + 1,
            {"m2": {"n": 5}},
            ["m1"],
        )
        assert await channel.since("meetings", local, snapshot.seq) == [last]
        assert channel.counters["fallbacks"] == 1

        await trio.to_thread.run_sync(server.start)  # empty, as after a restart
        await wait_for(channel.redis_back, timeout_s=10)
        assert await publisher.publish({"m2": {"n": 6}}, 5.0) == "everything again"
        assert channel.mode == "returning"
        results = [await publisher.publish({"m2": {"n": 6}}, 6.0 + i) for i in range(3)]
        assert results[-1] == "ok"  # Redis's new epoch may ask for everything once more
        assert state(channel) == ("redis", None)
        assert channel.epoch == redis.epoch != local
        assert subscribers.epochs == [local, redis.epoch]
        snapshot = await channel.snapshot("meetings")
        assert (snapshot.epoch, snapshot.entities) == (redis.epoch, {"m2": {"n": 6}})

        assert await publisher.publish({"m2": {"n": 7}}, 10.0) == "ok"
        # Through Redis again; the reader may still be delivering the deltas published above.
        await wait_for(lambda: subscribers.deltas[-1].changed == {"m2": {"n": 7}})
        assert subscribers.deltas[-1].epoch == redis.epoch


async def test_a_failed_return_starts_a_fresh_local_epoch(
    redis: RedisChannel, server: RedisServer
) -> None:
    async with serving(redis) as (channel, subscribers, publisher):
        await trio.to_thread.run_sync(server.stop)
        # Started while Redis is down: the first publish falls back at once.
        assert await publisher.publish({"m1": {"n": 1}}, 1.0) == "everything again"
        assert await publisher.publish({"m1": {"n": 1}}, 2.0) == "ok"
        first = channel.epoch
        await trio.to_thread.run_sync(server.start)
        await wait_for(channel.redis_back, timeout_s=10)
        assert await publisher.publish({"m1": {"n": 2}}, 3.0) == "everything again"
        await trio.to_thread.run_sync(server.stop)
        assert await publisher.publish({"m1": {"n": 2}}, 4.0) == "everything again"
        assert channel.mode == "filling"
        assert await publisher.publish({"m1": {"n": 2}}, 5.0) == "ok"
        assert channel.epoch not in (first, "")
        assert subscribers.epochs == [first, channel.epoch]
        assert (await channel.snapshot("meetings")).entities == {"m1": {"n": 2}}
        assert channel.counters["fallbacks"] == 2


async def test_after_a_short_outage_what_ended_meanwhile_leaves_redis(
    bridge: AsyncioBridge, server: RedisServer
) -> None:
    """Redis kept its data while this daemon could not reach it: the daemon's return replaces
    its parts there, so a meeting that ended meanwhile does not stay behind."""
    proxy = CuttableProxy(("127.0.0.1", server.port))
    cut_off = RedisChannel(
        bridge, f"redis://127.0.0.1:{proxy.port}/0", retry_max_s=0.5, connect_timeout_s=0.5
    )
    direct = RedisChannel(bridge, f"redis://127.0.0.1:{server.port}/0")
    try:
        async with serving(cut_off) as (channel, _, publisher):
            assert await publisher.publish({"m1": {"n": 1}, "m2": {"n": 1}}, 1.0) == "ok"
            proxy.cut()
            assert await publisher.publish({"m1": {"n": 2}}, 2.0) == "everything again"
            assert await publisher.publish({"m1": {"n": 2}}, 3.0) == "ok"  # local; m2 ended
            assert channel.mode == "local"
            assert set((await direct.snapshot("meetings")).entities) == {"m1", "m2"}

            proxy.restore()
            await wait_for(channel.redis_back, timeout_s=10)
            assert await publisher.publish({"m1": {"n": 3}}, 4.0) == "everything again"
            assert await publisher.publish({"m1": {"n": 3}}, 5.0) == "ok"
            assert channel.mode == "redis"
            assert (await direct.snapshot("meetings")).entities == {"m1": {"n": 3}}
    finally:
        await direct.aclose()
        await cut_off.aclose()
        proxy.close()
