"""Topic entities built from the engine: values by hand, sums over connections, the series
downsampled to at most 60 points, rounding that keeps jitter out of deltas."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from collector.aggregate.engine import Engine
from collector.aggregate.settings import AggregateSettings
from collector.fanout import topics
from collector.fanout.hub import diff
from collector.fanout.parts import rate
from protocol import RtcSample
from tests.helpers import http_sample, video_gauges


def sample(participant: str, connection: str, seq: int, bytes_per_s: int) -> RtcSample:
    return RtcSample(
        meeting="m",
        participant=participant,
        connection=connection,
        seq=seq,
        client_ts=1_764_000_000_000.0 + 1000 * seq,
        video_bytes_sent=bytes_per_s * seq,
        video_bytes_received=bytes_per_s * seq // 2,
        video_packets_received=100 * seq,
        rtt_ms=50.0 + seq,
    )


def run(engine: Engine, seconds: int) -> float:
    """One sample per connection per second, a tick after each; returns the last tick time."""
    t = 1000.0
    for seq in range(1, seconds + 1):
        engine.add(
            [
                sample("alice", "pc1", seq, 100_000),  # 800 kbit/s up
                sample("alice", "pc2", seq, 25_000),  # 200 kbit/s up
                sample("bob", "pc1", seq, 50_000),  # 400 kbit/s up
            ],
            t + seq - 0.5,
        )
        engine.tick(t + seq)
    return t + seconds


def test_meetings_topic_sums_participants_and_names_the_worst_level() -> None:
    engine = Engine()
    now = run(engine, 10)
    (entity,) = topics.meetings_topic(engine, now).values()
    assert entity["participants"] == 2
    assert entity["up_bps"] == pytest.approx(1_400_000)
    assert entity["down_bps"] == pytest.approx(700_000)
    worst = min(p.quality for p in engine.meetings["m"].participants.values() if p.quality)
    assert entity["quality"] == round(worst)
    assert entity["relay_share"] == 0.0
    assert entity["alerts"] == 0


def test_meeting_topic_has_participants_and_one_point_per_tick() -> None:
    engine = Engine()
    now = run(engine, 10)
    entities = topics.meeting_topic(engine, "m", now)
    alice = entities["alice"]
    assert alice["kind"] == "participant"
    assert alice["connections"] == 2
    assert alice["up_bps"] == pytest.approx(1_000_000)  # both connections
    assert alice["rtt_ms"] == pytest.approx(58)  # the worst connection, mean of 5 ticks
    points = [e for e in entities.values() if e["kind"] == "point"]
    assert len(points) == 2 * 9  # the first tick holds a baseline alone: no interval
    latest = entities[f"alice@{now - 1:g}"]
    assert latest["up_bps"] == pytest.approx(1_000_000)
    assert topics.meeting_topic(engine, "gone", now) == {}


def test_meeting_topic_has_each_streams_totals_as_an_entity_of_its_own() -> None:
    """One entity per connection: its boot, last ``q`` and the bytes counted (the first sample,
    ``q`` 1, is a baseline: not in them); a delta carries only what changed of it."""
    engine = Engine()
    now = run(engine, 10)
    entities = topics.meeting_topic(engine, "m", now)
    streams = {k: e for k, e in entities.items() if e["kind"] == "stream"}
    assert sorted(streams) == ["alice pc1", "alice pc2", "bob pc1"]
    assert streams["alice pc2"] == {
        "kind": "stream",
        "participant": "alice",
        "connection": "pc2",
        "boot": None,
        "q": 10,
        "bytes": [0, 0, 25_000 * 9, 12_500 * 9, 0, 0],
    }
    engine.add([sample("alice", "pc2", 11, 25_000)], now + 0.5)
    changed, _ = diff(entities, topics.meeting_topic(engine, "m", now))
    assert changed["alice pc2"] == {"q": 11, "bytes": [0, 0, 25_000 * 10, 12_500 * 10, 0, 0]}
    assert "alice pc1" not in changed


def test_a_long_window_is_downsampled_to_60_points() -> None:
    engine = Engine(AggregateSettings(window_buckets=180))
    now = run(engine, 200)
    entities = topics.meeting_topic(engine, "m", now)
    points = [e for e in entities.values() if e["kind"] == "point" and e["participant"] == "bob"]
    assert len(points) == 60
    assert {p["t"] % 3 for p in points} == {0}  # three buckets per point
    assert all(p["up_bps"] == pytest.approx(400_000) for p in points)


def test_rates_keep_three_significant_digits() -> None:
    assert rate(1_234_567.0) == 1_230_000.0
    assert rate(0.012345) == 0.0123
    assert rate(0.0) == 0.0
    assert rate(None) is None


def test_http_topic_has_rates_and_percentiles() -> None:
    engine = Engine()
    engine.add([http_sample(1)], 1000.0)
    engine.add([http_sample(3)], 1001.0)
    (route,) = topics.http_topic(engine, 1001.0).values()
    assert (route["service"], route["method"], route["route"]) == ("api", "GET", "/v1/items")
    assert route["requests_per_s"] == pytest.approx(20 / 60, rel=1e-2)
    assert route["p50_ms"] is not None


def test_participants_show_frame_rates_resolutions_bandwidth_and_remote_relay() -> None:
    """The last value each connection sent: over alice's two connections the lowest frame
    rates and the smallest resolution, the bandwidth estimates summed (like up_bps), relayed
    if the peer of any is; a sample without them leaves them; bob sent none."""
    engine = Engine()
    gauges: dict[str, dict[str, Any]] = {
        "pc1": video_gauges((29.97, 30.0), (1280, 720), (1280, 720), 1_500_000.0)
        | dict(local_candidate="host", remote_candidate="host"),
        "pc2": video_gauges((14.6, 30.0), (640, 360), (1920, 1080), 1_234_567.0)
        | dict(local_candidate="srflx", remote_candidate="relay"),
    }
    t = 1_800_000_000.0
    for connection, fields in gauges.items():
        first = sample("alice", connection, 1, 100_000)
        engine.add([msgspec.structs.replace(first, **fields)], t)
    engine.add([sample("alice", "pc1", 2, 100_000), sample("bob", "pc1", 1, 50_000)], t + 0.5)
    engine.tick(t + 1)
    entities = topics.meeting_topic(engine, "m", t + 1)
    video = ("fps_in", "fps_out", "width_in", "height_in", "width_out", "height_out")
    alice, bob = entities["alice"], entities["bob"]
    assert [alice[k] for k in video] == [15.0, 30.0, 640, 360, 1280, 720]
    assert alice["bwe_bps"] == 2_730_000.0  # 3 significant digits, as the bitrates
    assert alice["remote_relayed"] is True
    assert alice["relay"] == "direct"  # the peer is relayed, not alice
    assert [bob[k] for k in (*video, "bwe_bps")] == [None] * 7
    assert bob["remote_relayed"] is False
