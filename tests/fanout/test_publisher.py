"""The publisher under virtual time: at most one delta per topic per interval, only what changed,
removals, alert transitions, and nothing lost while the channel is away."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from collector.aggregate.engine import Engine
from collector.aggregate.settings import AggregateSettings
from collector.consumer import FrameConsumer, SessionBatch
from collector.fanout.channel import ChannelUnavailable, LocalChannel
from collector.fanout.hub import Change
from collector.fanout.publisher import Publisher
from protocol import Frame, HttpSample, RtcSample
from protocol.subscribe import Delta, Entities, apply


def sample(meeting: str, seq: int, rtt_ms: float = 40.0) -> RtcSample:
    """One participant per meeting sending 1 Mbit/s (125,000 bytes per one-second sample)."""
    return RtcSample(
        meeting=meeting,
        participant="p1",
        connection="pc1",
        seq=seq,
        client_ts=1_764_000_000_000.0 + 1000 * seq,
        video_bytes_sent=125_000 * seq,
        video_packets_sent=100 * seq,
        rtt_ms=rtt_ms,
    )


class Rig:
    """Engine, consumer, publisher and in-process channel on trio's (virtual) clock."""

    def __init__(self, interval_s: float, settings: AggregateSettings | None = None) -> None:
        self.engine = Engine(settings or AggregateSettings(participant_timeout_s=5))
        self.channel = LocalChannel()
        self.deltas: list[Delta] = []
        self.publisher = Publisher(
            lambda: self.engine, self.channel, interval_s, clock=trio.current_time
        )
        self.consumer = FrameConsumer(
            self.engine,
            clock=trio.current_time,
            on_output=lambda out: self.publisher.offer_alerts(out.alerts),
            after_tick=self.publisher.on_tick,
        )
        self.frames, self._frames_out = trio.open_memory_channel[SessionBatch](1000)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.channel.serve, self.deltas.append, lambda _epoch: None)
        await nursery.start(self.consumer.consume, self._frames_out)
        await nursery.start(self.consumer.tick)
        await nursery.start(self.publisher.run)

    def of(self, topic: str) -> list[Delta]:
        return [d for d in self.deltas if d.topic == topic]


async def run_for(seconds: float, *tasks: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(task)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_changes_between_publishes_make_one_delta_per_topic_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(interval_s=2.0)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def join_many() -> None:  # a new meeting every 0.1 s: ten changes per tick
            for i in range(40):
                await rig.frames.send(([sample(f"m{i}", 1)], "boot"))
                await trio.sleep(0.1)

        await run_for(12, join_many)
        nursery.cancel_scope.cancel()
    meetings = rig.of("meetings")
    assert len(meetings) >= 3
    ats = [d.at for d in meetings]
    assert all(b - a >= 2.0 * 0.9 for a, b in itertools.pairwise(ats)), ats
    assert [d.seq for d in meetings] == list(range(1, len(meetings) + 1))
    assert all(d.prev == d.seq - 1 for d in meetings)
    state: Entities = {}
    for delta in meetings:
        apply(state, delta)
    assert sorted(state) == sorted(f"m{i}" for i in range(40))


async def test_a_delta_holds_only_changed_fields_and_nothing_when_nothing_changed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = AggregateSettings(participant_timeout_s=5, meeting_end_after_s=3)
    rig = Rig(interval_s=1.0, settings=settings)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def steady() -> None:  # one sample per second, mid-bucket: a constant rate
            await trio.sleep(0.5)
            for seq in range(1, 16):
                await rig.frames.send(([sample("steady", seq), sample("short", seq)], "boot"))
                if seq == 12:
                    break
                await trio.sleep(1)
            for seq in range(13, 30):
                await trio.sleep(1)
                await rig.frames.send(([sample("steady", seq)], "boot"))

        await run_for(25, steady)
        nursery.cancel_scope.cancel()
    meetings = rig.of("meetings")
    first = meetings[0].changed["steady"]
    assert set(first) >= {"participants", "up_bps", "down_bps", "level", "started_at"}
    later = [d for d in meetings[1:] if "steady" in d.changed]
    assert later, "the rate ramps up over the first ticks"
    assert all("started_at" not in d.changed["steady"] for d in later)
    assert all("participants" not in d.changed["steady"] for d in later)
    # Once the 5-tick mean has settled, "steady" stops appearing: no change, no delta.
    settled = [d for d in meetings if d.at > 8 and "steady" in d.changed]
    assert settled == []
    # "short" went silent at 11.5 s: its participant leaves after 5 s, then the meeting ends
    # and goes away in a delta's removals.
    assert any(d.changed.get("short", {}).get("participants") == 0 for d in meetings)
    assert any("short" in d.removed for d in meetings)
    ats = [d.at for d in meetings]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(ats))


async def test_alert_transitions_go_out_on_the_alerts_topic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(interval_s=1.0, settings=AggregateSettings(participant_timeout_s=30))
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def bad_then_good() -> None:
            await trio.sleep(0.5)
            for seq in range(1, 30):
                await rig.frames.send(
                    ([sample("m", seq, rtt_ms=900.0 if seq < 8 else 50.0)], "boot")
                )
                await trio.sleep(1)

        await run_for(28, bad_then_good)
        nursery.cancel_scope.cancel()
    alerts = rig.of("alerts")
    transitions = [(a["rule"], a["state"]) for d in alerts for a in d.alerts]
    assert transitions == [("high_rtt", "raised"), ("high_rtt", "cleared")]
    raised = next(d for d in alerts if d.alerts and d.alerts[0]["state"] == "raised")
    (alert_id,) = raised.changed
    assert raised.changed[alert_id]["key"] == ["m", "p1"]
    cleared = next(d for d in alerts if d.alerts and d.alerts[0]["state"] == "cleared")
    assert cleared.removed == [alert_id]


class FlakyChannel(LocalChannel):
    """An in-process channel that refuses to publish while ``down``."""

    down = False

    async def publish(self, changes: list[Change], at: float) -> None:
        if self.down:
            raise ChannelUnavailable("injected outage")
        await super().publish(changes, at)


async def test_nothing_is_lost_while_the_channel_is_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outage_s = 3.0
    rig = Rig(interval_s=1.0)
    rig.channel = FlakyChannel()
    rig.publisher.channel = rig.channel
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def scenario() -> None:
            await rig.frames.send(([sample("before", 1)], "boot"))
            await trio.sleep(2.5)
            assert isinstance(rig.channel, FlakyChannel)
            rig.channel.down = True
            await rig.frames.send(([sample("during", 1)], "boot"))
            await trio.sleep(outage_s)
            assert rig.publisher.channel_error == "injected outage"  # /readyz: not ready
            rig.channel.down = False

        await run_for(10, scenario)
        nursery.cancel_scope.cancel()
    assert rig.publisher.counters["unavailable"] >= 2
    assert rig.publisher.channel_error is None
    state: Entities = {}
    for delta in rig.of("meetings"):
        apply(state, delta)
    # "before" timed out and left during the outage; its removal was not lost.
    assert sorted(state) == sorted(rig.engine.meetings)
    snapshot = await rig.channel.snapshot("meetings")
    assert snapshot.entities == state


async def test_meeting_topics_are_built_while_wanted_and_emptied_when_the_meeting_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = AggregateSettings(participant_timeout_s=3, meeting_end_after_s=2)
    rig = Rig(interval_s=1.0, settings=settings)
    rig.channel.watch({"meeting:m"})
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def talk() -> None:
            await trio.sleep(0.5)
            for seq in range(1, 6):
                await rig.frames.send(([sample("m", seq), sample("other", seq)], "boot"))
                await trio.sleep(1)

        await run_for(15, talk)
        nursery.cancel_scope.cancel()
    topics = {d.topic for d in rig.deltas}
    assert "meeting:m" in topics
    assert "meeting:other" not in topics
    state: Entities = {}
    kinds: set[Any] = set()
    for delta in rig.of("meeting:m"):
        apply(state, delta)
        kinds |= {f.get("kind") for f in delta.changed.values() if "kind" in f}
    assert kinds == {"participant", "point", "stream"}
    assert state == {}  # the meeting ended: its last delta removed everything
    assert "meeting:m" not in rig.publisher.published


async def test_an_http_route_that_expired_leaves_the_http_topic_in_a_removal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(interval_s=1.0)  # http_idle_s: 600 by default

    def http(route: str, seq: int) -> HttpSample:
        return HttpSample(
            service="api",
            instance="web-1",
            boot="b00t",
            route=route,
            method="GET",
            seq=seq,
            client_ts=1.0,
            requests=10 * seq,
            status=[0, 10 * seq, 0, 0, 0],
            bytes_in=0,
            bytes_out=1_000 * seq,
            latency_hist=[10 * seq] + [0] * 11,
            latency_sum_ms=float(seq),
        )

    async with trio.open_nursery() as nursery:
        await rig.start(nursery)

        async def serve() -> None:  # /gone: 10 samples, then silence; /kept: a sample a second
            await trio.sleep(0.5)
            for seq in range(700):
                batch: list[Frame] = [http("/kept", seq)]
                if seq < 10:
                    batch.append(http("/gone", seq))
                await rig.frames.send((batch, "boot"))
                await trio.sleep(1)

        await run_for(650, serve)
        nursery.cancel_scope.cancel()
    deltas = rig.of("http")
    removals = [d for d in deltas if d.removed]
    assert [(d.removed, d.at >= 9.5 + 600) for d in removals] == [(["api GET /gone"], True)]
    state: Entities = {}
    for delta in deltas:
        apply(state, delta)
    assert list(state) == ["api GET /kept"]
    assert (await rig.channel.snapshot("http")).entities == state
    assert rig.engine.stats()["http_routes_expired"] == 1


@pytest.mark.parametrize(("interval_s", "published"), [(1.0, 10), (2.0, 5)])
async def test_ticks_are_throttled_on_their_own_times_however_long_they_take(
    autojump_clock: trio.testing.MockClock, interval_s: float, published: int
) -> None:
    """Ticks come each second but end 50-300 ms after their second (a tick takes longer under
    load): a publish interval of 1 s publishes every one of them, none a second late; one of
    2 s every other one."""
    publisher = Publisher(
        lambda: Engine(AggregateSettings()), LocalChannel(), interval_s, clock=trio.current_time
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        for second in range(1, 11):
            await trio.sleep_until(second + (0.3 if second % 2 else 0.05))
            publisher.on_tick(float(second))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert publisher.counters["publishes"] == published
