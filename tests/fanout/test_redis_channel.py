"""The Redis channel against a real Redis: the semantics of the in-process channel, shared by
several daemons (here: several ``RedisChannel`` objects on one prefix), and a Redis restart.

The shared Redis at 127.0.0.1:6379 gets a random key prefix per test (deleted afterwards); the
restart test runs a ``redis-server`` of its own on a free port.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio
from structlog.testing import capture_logs

from collector.fanout.channel import ChannelUnavailable, EpochChanged
from collector.fanout.hub import Change, change
from collector.fanout.redis_channel import RedisChannel
from collector.runtime import AsyncioBridge, open_thread_bridge
from protocol.subscribe import Delta, Entities, apply
from tests.helpers import RedisServer, free_port, wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"bwmon-test-{secrets.token_hex(6)}"
    yield name
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client to look at (or tamper with) the keys the channel writes."""
    with redis.Redis.from_url(REDIS_URL) as client:
        yield client


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_thread_bridge() as bridge:
        yield bridge


@asynccontextmanager
async def redis_channel(
    bridge: AsyncioBridge, prefix: str, url: str = REDIS_URL, **settings: Any
) -> AsyncIterator[RedisChannel]:
    channel = RedisChannel(bridge, url, prefix=prefix, **settings)
    try:
        yield channel
    finally:
        await channel.aclose()


class Daemon:
    """What a daemon's fan-out gives a channel's ``serve``: it records deltas and epochs."""

    def __init__(self) -> None:
        self.deltas: list[Delta] = []
        self.epochs: list[str] = []

    def deliver(self, delta: Delta) -> None:
        self.deltas.append(delta)

    def on_epoch(self, epoch: str) -> None:
        self.epochs.append(epoch)

    def of(self, topic: str) -> list[Delta]:
        return [d for d in self.deltas if d.topic == topic]


def without_none(entities: Entities) -> Entities:
    """A client that applies deltas holds a removed field as None; a snapshot omits it."""
    return {e: {k: v for k, v in f.items() if v is not None} for e, f in entities.items()}


STATES: list[Entities] = [
    {"a": {"x": 1, "y": 2.5}, "b": {"x": "s"}},
    {"a": {"x": 2, "y": 2.5}, "b": {"x": "s"}, "c": {"z": [1, 2]}},
    {"a": {"x": 2}, "c": {"z": [1, 2], "w": {"deep": True}}},  # a.y and b removed
    {"a": {"x": 3}, "c": {"z": [1, 2], "w": {"deep": True}}, "b": {"x": "again"}},
]


async def publish_states(channel: RedisChannel, topic: str, start: float = 100.0) -> None:
    published: Entities = {}
    for i, state in enumerate(STATES):
        alerts = Change("alerts", {}, [], events=[{"rule": "loss", "n": i}])
        await channel.publish([change(topic, published, state), alerts], start + i)
        published = state


async def test_publish_snapshot_and_since(bridge: AsyncioBridge, prefix: str) -> None:
    async with redis_channel(bridge, prefix, history=50) as channel:
        await publish_states(channel, "meetings")
        epoch = channel.epoch
        assert epoch

        snapshot = await channel.snapshot("meetings")
        assert (snapshot.topic, snapshot.epoch, snapshot.seq, snapshot.at) == (
            "meetings",
            epoch,
            4,
            103.0,
        )
        assert snapshot.full
        assert snapshot.entities == STATES[-1]

        deltas = await channel.since("meetings", epoch, 0)
        assert deltas is not None
        assert [(d.seq, d.prev, d.at, d.epoch) for d in deltas] == [
            (i + 1, i, 100.0 + i, epoch) for i in range(4)
        ]
        applied: Entities = {}
        for delta in deltas:
            apply(applied, delta)
        assert without_none(applied) == snapshot.entities
        assert deltas[2].removed == ["b"]
        assert deltas[2].changed["a"] == {"y": None}

        assert await channel.since("meetings", epoch, 4) == []
        assert await channel.since("meetings", epoch, 2) == deltas[2:]
        assert await channel.since("meetings", "another-epoch", 2) is None
        assert await channel.since("meetings", epoch, 5) is None
        assert await channel.since("meetings", epoch, None) is None
        assert await channel.since("meetings", None, 2) is None

        alerts = await channel.since("alerts", epoch, 0)
        assert alerts is not None
        assert [d.alerts for d in alerts] == [[{"rule": "loss", "n": i}] for i in range(4)]
        assert [d.seq for d in alerts] == [1, 2, 3, 4]

        unknown = await channel.snapshot("meeting:nobody")
        assert (unknown.seq, unknown.entities, unknown.epoch) == (0, {}, epoch)
        assert await channel.since("meeting:nobody", epoch, 0) == []


async def test_since_is_bounded_by_history_and_trimming(
    bridge: AsyncioBridge, prefix: str, raw: redis.Redis
) -> None:
    async with redis_channel(bridge, prefix, history=5) as channel:
        for i in range(8):
            await channel.publish([change("http", {}, {"r": {"n": i}})], float(i))
        epoch = channel.epoch
        assert await channel.since("http", epoch, 2) is None  # 6 behind, history 5
        held = await channel.since("http", epoch, 3)
        assert held is not None
        assert [d.seq for d in held] == [4, 5, 6, 7, 8]

        raw.xtrim(f"{prefix}:log:http", maxlen=2, approximate=False)  # as MAXLEN ~ may do
        assert await channel.since("http", epoch, 5) is None
        tail = await channel.since("http", epoch, 6)
        assert tail is not None
        assert [d.seq for d in tail] == [7, 8]


async def test_changes_built_without_values_update_the_stored_entity(
    bridge: AsyncioBridge, prefix: str
) -> None:
    async with redis_channel(bridge, prefix) as channel:
        await channel.publish([Change("http", {"r": {"a": 1, "b": 2}}, [])], 1.0)
        await channel.publish([Change("http", {"r": {"b": 3}, "s": {"c": 4}}, [])], 2.0)
        snapshot = await channel.snapshot("http")
        assert snapshot.entities == {"r": {"a": 1, "b": 3}, "s": {"c": 4}}


async def test_two_daemons_share_epoch_state_and_order(bridge: AsyncioBridge, prefix: str) -> None:
    a_daemon, b_daemon = Daemon(), Daemon()
    async with (
        redis_channel(bridge, prefix) as a,
        redis_channel(bridge, prefix) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(a.serve, a_daemon.deliver, a_daemon.on_epoch)
        await nursery.start(b.serve, b_daemon.deliver, b_daemon.on_epoch)
        for channel in (a, b):
            channel.watch({"meetings", "alerts"})
            await channel.snapshot("meetings")  # as a subscriber session does
            await channel.snapshot("alerts")
        assert a.epoch == b.epoch != ""

        # A's changes reach B's subscribers, in order, and B's snapshot holds A's entities.
        await publish_states(a, "meetings")
        await wait_for(lambda: len(b_daemon.of("meetings")) == 4)
        assert [(d.seq, d.prev) for d in b_daemon.of("meetings")] == [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3),
        ]
        assert b_daemon.of("meetings") == await a.since("meetings", a.epoch, 0)
        assert (await b.snapshot("meetings")).entities == STATES[-1]

        # A blocked read (B's reader is idle in XREAD) does not hold up B's other commands.
        for _ in range(3):
            started = trio.current_time()
            await b.snapshot("meetings")
            assert trio.current_time() - started < 0.3

        # Both publish to one topic at once: one order, seen alike by both daemons.
        async def publish_alerts(channel: RedisChannel, name: str) -> None:
            for i in range(10):
                event = {"from": name, "n": i}
                await channel.publish([Change("alerts", {}, [], events=[event])], float(i))

        async with trio.open_nursery() as publishers:
            publishers.start_soon(publish_alerts, a, "a")
            publishers.start_soon(publish_alerts, b, "b")
        await wait_for(lambda: len(a_daemon.of("alerts")) == len(b_daemon.of("alerts")) == 24)
        alerts = b_daemon.of("alerts")
        assert [(d.seq, d.prev) for d in alerts] == [(s, s - 1) for s in range(1, 25)]
        assert alerts == a_daemon.of("alerts")
        events = [e for d in alerts[4:] for e in d.alerts]
        assert sorted((e["from"], e["n"]) for e in events) == [
            (name, i) for name in "ab" for i in range(10)
        ]
        for name in "ab":  # each daemon's own publishes keep their order
            assert [e["n"] for e in events if e["from"] == name] == list(range(10))
        assert a_daemon.epochs == b_daemon.epochs == []
        nursery.cancel_scope.cancel()


async def test_interest_is_shared_and_expires(bridge: AsyncioBridge, prefix: str) -> None:
    async with (
        redis_channel(bridge, prefix, interest_ttl_s=1.5) as a,
        redis_channel(bridge, prefix, interest_ttl_s=1.5) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(a.serve, Daemon().deliver, Daemon().on_epoch)
        await nursery.start(b.serve, Daemon().deliver, Daemon().on_epoch)
        assert await a.wanted_topics() == set()

        b.watch({"meeting:x", "meetings"})
        with trio.fail_after(2):
            while "meeting:x" not in await a.wanted_topics():  # noqa: ASYNC110 - set elsewhere
                await trio.sleep(0.05)
        assert await a.wanted_topics() == {"meeting:x"}  # only meeting topics
        a.watch({"meeting:local"})
        assert await a.wanted_topics() == {"meeting:x", "meeting:local"}
        a.watch(set())

        await trio.sleep(2)  # refreshed meanwhile: still wanted after more than one TTL
        assert "meeting:x" in await a.wanted_topics()

        b.watch(set())
        unwatched = trio.current_time()
        with trio.fail_after(3):
            while "meeting:x" in await a.wanted_topics():  # noqa: ASYNC110 - expires in Redis
                await trio.sleep(0.05)
        assert trio.current_time() - unwatched > 0.5  # it expired; nobody removed it
        nursery.cancel_scope.cancel()


async def test_forget_deletes_emptied_topics_and_keeps_the_sequence(
    bridge: AsyncioBridge, prefix: str, raw: redis.Redis
) -> None:
    state: Entities = {"p1": {"mos": 4.2}}
    async with redis_channel(bridge, prefix) as channel:
        await channel.publish([change("meeting:x", {}, state), change("meeting:y", {}, state)], 1.0)
        await channel.publish([change("meeting:x", state, {})], 2.0)
        await channel.forget(["meeting:x", "meeting:y", "meeting:never"])

        assert raw.exists(f"{prefix}:state:meeting:x", f"{prefix}:log:meeting:x") == 0
        assert raw.exists(f"{prefix}:state:meeting:y", f"{prefix}:log:meeting:y") == 2
        assert raw.ttl(f"{prefix}:meta:meeting:x") > 3600  # goes away later
        assert raw.ttl(f"{prefix}:meta:meeting:y") == -1
        assert raw.exists(f"{prefix}:meta:meeting:never") == 0
        snapshot = await channel.snapshot("meeting:x")
        assert (snapshot.seq, snapshot.entities) == (2, {})

        # The same meeting id again: its numbers go on, none is reused under this epoch.
        await channel.publish([change("meeting:x", {}, state)], 3.0)
        snapshot = await channel.snapshot("meeting:x")
        assert (snapshot.seq, snapshot.entities) == (3, state)
        assert raw.ttl(f"{prefix}:meta:meeting:x") == -1


async def test_unreachable_redis_neither_blocks_start_nor_leaks_the_url(
    bridge: AsyncioBridge, prefix: str
) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    with capture_logs() as logs:
        async with (
            redis_channel(bridge, prefix, url, retry_max_s=0.5) as channel,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(1):
                await nursery.start(channel.serve, Daemon().deliver, Daemon().on_epoch)
            channel.watch({"meetings"})
            with pytest.raises(ChannelUnavailable) as raised:
                await channel.publish([change("meetings", {}, {"m": {"n": 1}})], 1.0)
            with pytest.raises(ChannelUnavailable):
                await channel.snapshot("meetings")
            with pytest.raises(ChannelUnavailable):
                await channel.wanted_topics()
            await trio.sleep(1.2)  # a few retries of serve's reader
            nursery.cancel_scope.cancel()
    assert "s3cret" not in str(raised.value)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "redis_channel_unavailable"  # once per outage, not once per retry
    ]
    assert "s3cret" not in repr(logs)


async def test_redis_restart_changes_the_epoch_and_everything_is_published_again(
    bridge: AsyncioBridge,
) -> None:
    port = free_port()
    server = RedisServer(port)
    url = f"redis://127.0.0.1:{port}/0"
    before: Entities = {"m1": {"n": 1}, "m2": {"n": 2}}
    after: Entities = {"m1": {"n": 10}, "m3": {"n": 3}}
    a_daemon, b_daemon = Daemon(), Daemon()
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            redis_channel(bridge, "bwmon", url, retry_max_s=0.5) as a,
            redis_channel(bridge, "bwmon", url, retry_max_s=0.5) as b,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(a.serve, a_daemon.deliver, a_daemon.on_epoch)
            await nursery.start(b.serve, b_daemon.deliver, b_daemon.on_epoch)
            b.watch({"meetings"})
            await b.snapshot("meetings")
            await a.publish([change("meetings", {}, before)], 1.0)
            first = a.epoch
            await wait_for(lambda: len(b_daemon.deltas) == 1)
            assert b.epoch == first

            await trio.to_thread.run_sync(server.stop)
            with pytest.raises(ChannelUnavailable):
                await a.publish([change("meetings", before, after)], 2.0)
            with pytest.raises(ChannelUnavailable):
                await b.snapshot("meetings")
            await trio.sleep(0.7)  # both readers fail and back off; neither serve ends

            await trio.to_thread.run_sync(server.start)  # empty: as without persistence
            await wait_for(lambda: bool(a_daemon.epochs and b_daemon.epochs), timeout_s=10)
            second = a.epoch
            assert second != first
            assert a_daemon.epochs == b_daemon.epochs == [second]
            assert b.epoch == second

            # The publisher is told once, even though the reader adopted the epoch first.
            with pytest.raises(EpochChanged):
                await a.publish([change("meetings", before, after)], 3.0)
            await a.publish([change("meetings", {}, after)], 4.0)  # everything again
            await a.publish([change("meetings", after, after | {"m4": {"n": 4}})], 5.0)

            snapshot = await b.snapshot("meetings")
            assert (snapshot.epoch, snapshot.seq) == (second, 2)
            assert snapshot.entities == after | {"m4": {"n": 4}}
            await wait_for(lambda: len(b_daemon.deltas) == 3)
            assert [(d.epoch, d.seq, d.prev) for d in b_daemon.deltas] == [
                (first, 1, 0),
                (second, 1, 0),
                (second, 2, 1),
            ]
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_a_dead_daemons_entities_are_removed_and_everyone_sees_them_go(
    bridge: AsyncioBridge, prefix: str, raw: redis.Redis
) -> None:
    b_daemon = Daemon()
    async with (
        redis_channel(bridge, prefix, daemon_ttl_s=1.0) as a,
        redis_channel(bridge, prefix, daemon_ttl_s=1.0) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(b.serve, b_daemon.deliver, Daemon().on_epoch)
        b.watch({"meetings", "meeting:m1"})
        await b.snapshot("meetings")
        # A never serves: its registration is not kept, as if it was killed after publishing.
        await a.publish(
            [
                change("meetings", {}, {"m1": {"n": 1}, "shared": {"participants": 1}}),
                change("meeting:m1", {}, {"p1": {"mos": 4.1}, "p2": {"mos": 3.9}}),
            ],
            1.0,
        )
        b_part = {"m2": {"n": 2}, "shared": {"participants": 2}}
        await b.publish([change("meetings", {}, b_part)], 2.0)
        await wait_for(lambda: len(b_daemon.deltas) == 3)
        assert raw.zscore(f"{prefix}:daemons", a.daemon_id) is not None
        both = {"m1": {"n": 1}, "m2": {"n": 2}, "shared": {"participants": 3}}
        assert (await b.snapshot("meetings")).entities == both

        # B's keeper reaps A within a TTL and a third of it: A's part of "shared" goes too.
        await wait_for(lambda: b.counters["daemons_reaped"] == 1, timeout_s=3)
        assert b.counters["entities_reaped"] == 4
        await wait_for(lambda: len(b_daemon.deltas) == 5)
        removals = {d.topic: (d.seq, d.removed, d.changed) for d in b_daemon.deltas[3:]}
        assert removals == {
            "meetings": (3, ["m1"], {"shared": {"participants": 2}}),
            "meeting:m1": (2, ["p1", "p2"], {}),
        }
        # B's part of "shared" stays, as does everything of B's.
        assert (await b.snapshot("meetings")).entities == b_part
        assert (await b.snapshot("meeting:m1")).entities == {}
        assert raw.zscore(f"{prefix}:daemons", a.daemon_id) is None
        assert raw.zscore(f"{prefix}:daemons", b.daemon_id) is not None
        assert raw.smembers(f"{prefix}:owned") == {f"{prefix}:meta:meetings".encode()}
        assert raw.ttl(f"{prefix}:log:meeting:m1") > 3600  # emptied: goes away later
        assert raw.ttl(f"{prefix}:log:meetings") == -1

        # B, alive, is never reaped: its keeper keeps it registered without publishing.
        await trio.sleep(1.5)
        assert await a.reap() == 0
        assert "m2" in (await b.snapshot("meetings")).entities
        await b.publish([change("meetings", {"m2": {"n": 2}}, {"m2": {"n": 3}})], 3.0)
        await wait_for(lambda: len(b_daemon.deltas) == 6)
        assert (b_daemon.deltas[-1].seq, b_daemon.deltas[-1].changed) == (4, {"m2": {"n": 3}})
        nursery.cancel_scope.cancel()


async def test_a_daemon_presumed_dead_is_told_and_publishes_everything_again(
    bridge: AsyncioBridge, prefix: str, raw: redis.Redis
) -> None:
    state: Entities = {"m1": {"n": 1}}
    async with (
        redis_channel(bridge, prefix) as a,
        redis_channel(bridge, prefix) as b,
    ):
        await a.publish([change("meetings", {}, state)], 1.0)
        raw.zadd(f"{prefix}:daemons", {a.daemon_id: 0})  # cut off from Redis for a TTL
        assert await b.reap() == 1
        assert (await b.snapshot("meetings")).entities == {}

        with capture_logs() as logs, pytest.raises(EpochChanged):
            await a.publish([change("meetings", state, {"m1": {"n": 2}})], 2.0)
        assert a.counters["presumed_dead"] == 1
        assert [e["event"] for e in logs] == ["redis_channel_presumed_dead"]
        assert (await b.snapshot("meetings")).entities == {}  # nothing of it was published
        await a.publish([change("meetings", {}, {"m1": {"n": 2}})], 3.0)  # everything again
        snapshot = await b.snapshot("meetings")
        assert (snapshot.seq, snapshot.entities) == (3, {"m1": {"n": 2}})
        assert await b.reap() == 0
        assert a.counters["presumed_dead"] == 1
