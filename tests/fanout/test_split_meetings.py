"""One meeting whose participants reach two daemons (alice daemon A, bob daemon B), on the real
Redis: every view merges both daemons' parts — the ``meetings`` topic on either channel, a first
``meeting:<id>`` snapshot, ``/api`` — and the part of a daemon presumed dead leaves alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from collector.aggregate.engine import Engine
from collector.config import from_dict
from collector.fanout.publisher import Publisher
from collector.fanout.redis_channel import RedisChannel
from collector.http.api import Api
from collector.http.server import Headers, Request, Response
from collector.runtime import AsyncioBridge
from collector.storage.state import daemon_id
from protocol import RtcSample
from tests.fanout.test_redis_channel import REDIS_URL, bridge, prefix

__all__ = ["bridge", "prefix"]  # the Redis channel tests' fixtures

T0 = 1_796_550_000.0  # epoch seconds, as the daemon's clock gives


def sample(participant: str, seq: int, bytes_per_s: int) -> RtcSample:
    return RtcSample(
        meeting="standup",
        participant=participant,
        connection="pc",
        seq=seq,
        client_ts=1000 * (T0 + seq),
        video_bytes_sent=bytes_per_s * seq,
        video_bytes_received=bytes_per_s * seq,
        video_packets_received=100 * seq,
        rtt_ms=40.0,
        local_candidate="relay" if participant == "bob" else "host",
    )


@dataclass
class Side:
    """One daemon's aggregation and publishing, on the shared Redis."""

    engine: Engine
    channel: RedisChannel
    publisher: Publisher
    now: float = T0

    def feed(self, participant: str, seconds: int, bytes_per_s: int) -> None:
        for seq in range(1, seconds + 1):
            self.now = T0 + seq
            self.engine.add([sample(participant, seq, bytes_per_s)], self.now - 0.5)
            self.engine.tick(self.now)


@asynccontextmanager
async def side(
    bridge: AsyncioBridge, prefix: str, daemon_ttl_s: float = 10.0
) -> AsyncIterator[Side]:
    channel = RedisChannel(bridge, REDIS_URL, prefix=prefix, daemon_ttl_s=daemon_ttl_s)
    engine = Engine()
    holder: list[Side] = []
    publisher = Publisher(lambda: engine, channel, 0.2, clock=lambda: holder[0].now)
    holder.append(Side(engine, channel, publisher))
    try:
        yield holder[0]
    finally:
        await channel.aclose()


async def keep_publishing(s: Side) -> None:
    """What a daemon's publisher does after each tick."""
    while True:
        await s.publisher.publish(s.now)
        await trio.sleep(0.1)


async def test_every_view_of_a_split_meeting_merges_both_daemons(
    bridge: AsyncioBridge, prefix: str
) -> None:
    async with side(bridge, prefix) as a, side(bridge, prefix, daemon_ttl_s=1.0) as b:
        a.feed("alice", 10, 100_000)
        b.feed("bob", 10, 50_000)
        await a.publisher.publish(a.now)
        await b.publisher.publish(b.now)

        # The meetings topic, the same on either daemon: both participants, both bitrates.
        for s in (a, b):
            meeting = (await s.channel.snapshot("meetings")).entities["standup"]
            assert meeting["participants"] == 2
            assert meeting["up_bps"] == pytest.approx(1_200_000, rel=0.01)
            assert meeting["relay_share"] == 0.5
            assert "_relayed" not in meeting

        # A first reader of the meeting's own topic on A: B publishes its part when it sees the
        # request, and the snapshot holds both participants and both series at once.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_publishing, b)
            with trio.fail_after(5):
                await a.publisher.prepare("meeting:standup")
            snapshot = await a.channel.snapshot("meeting:standup")
            participants = {e for e, f in snapshot.entities.items() if f["kind"] == "participant"}
            assert participants == {"alice", "bob"}
            points = [f for f in snapshot.entities.values() if f["kind"] == "point"]
            assert {p["participant"] for p in points} == {"alice", "bob"}
            assert a.publisher.counters["parts_timeouts"] == 0

            # /api on A answers from the same merged state.
            api = Api(a.channel, None, prepare=a.publisher.prepare)
            request = Request("GET", "/api/meetings", {}, Headers(), "127.0.0.1", None)
            listed = await api.meetings(request)
            assert listed.status == 200
            assert isinstance(listed, Response)
            assert b'"participants":2' in listed.body
            one = await api.meeting(
                Request("GET", "/api/meetings/standup", {}, Headers(), "127.0.0.1", "standup")
            )
            assert one.status == 200
            assert isinstance(one, Response)
            assert b'"bob"' in one.body
            nursery.cancel_scope.cancel()

        # B dies (stops publishing and keeping alive): its part leaves, A's stays.
        with trio.fail_after(5):
            while not await a.channel.reap():  # noqa: ASYNC110 - expires in Redis
                await trio.sleep(0.2)
        meeting = (await a.channel.snapshot("meetings")).entities["standup"]
        assert (meeting["participants"], meeting["relay_share"]) == (1, 0.0)
        left = await a.channel.snapshot("meeting:standup")
        assert {f.get("participant", e) for e, f in left.entities.items()} == {"alice"}


async def test_a_first_reader_waits_for_a_silent_daemon_no_longer_than_its_bound(
    bridge: AsyncioBridge, prefix: str
) -> None:
    async with side(bridge, prefix) as a, side(bridge, prefix) as b:
        a.feed("alice", 3, 100_000)
        b.feed("bob", 3, 50_000)
        await a.publisher.publish(a.now)
        await b.publisher.publish(b.now)  # registered, then never publishes again
        a.publisher.parts_timeout_s = 0.5
        with trio.fail_after(3):
            await a.publisher.prepare("meeting:standup")
        assert a.publisher.counters["parts_timeouts"] == 1
        snapshot = await a.channel.snapshot("meeting:standup")
        assert "alice" in snapshot.entities


async def test_a_restarted_daemon_replaces_what_its_earlier_run_left(
    bridge: AsyncioBridge, prefix: str
) -> None:
    """A restart keeps the daemon's id (its state directory): the new run's first publish
    replaces the earlier run's parts, in one delta, instead of adding to them until the earlier
    run is presumed dead."""
    async with (
        side(bridge, prefix) as other,
        side(bridge, prefix) as first,
        side(bridge, prefix) as again,
    ):
        again.channel.daemon_id = first.channel.daemon_id  # the id kept in its state_dir
        other.feed("carol", 3, 10_000)
        first.feed("alice", 3, 100_000)
        await other.publisher.publish(other.now)
        await first.publisher.publish(first.now)
        before = await other.channel.snapshot("meetings")
        assert before.entities["standup"]["participants"] == 2

        again.feed("bob", 3, 50_000)  # alice's state was lost with the earlier run
        await again.publisher.publish(again.now)
        after = await other.channel.snapshot("meetings")
        assert after.seq == before.seq + 1  # one delta
        assert after.entities["standup"]["participants"] == 2  # carol and bob, not three
        deltas = await other.channel.since("meetings", before.epoch, before.seq)
        assert deltas is not None
        assert [d.changed["standup"]["participants"] for d in deltas] == [2]


def test_the_daemon_id_is_kept_in_the_state_directory(tmp_path: Path) -> None:
    storage = from_dict({"storage": {"state_dir": str(tmp_path / "state")}}).storage
    first = daemon_id(storage)
    assert first is not None
    assert (tmp_path / "state" / "daemon-id").read_text().strip() == first
    assert daemon_id(storage) == first
    assert daemon_id(from_dict({"storage": {"backend": "none"}}).storage) is None
