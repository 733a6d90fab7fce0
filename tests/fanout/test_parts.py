"""Parts of one entity from several daemons: the merge rules, the mirror that turns changes of
parts into changes of merged entities, and catching a subscriber up from a position; and the
parts the topics build, merged, against one engine holding everything."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.aggregate.engine import Engine
from collector.aggregate.percentiles import latency_summary
from collector.aggregate.settings import AggregateSettings
from collector.fanout import topics
from collector.fanout.hub import Change
from collector.fanout.parts import (
    Mirror,
    catch_up,
    merge,
    part_id,
    percentile_fields,
    shown,
    split_part,
    visible,
)
from protocol import RtcSample
from protocol.subscribe import Delta, Entities, apply
from tests.helpers import http_sample, video_gauges

MEETING_A = {
    "participants": 2,
    "_relayed": 1,
    "up_bps": 1_230_000.0,
    "down_bps": 2_000_000.0,
    "quality": 71.0,
    "level": "good",
    "relay_share": 0.5,
    "relay_cost": 0.0012,
    "alerts": 1,
    "started_at": 100.5,
}
MEETING_B = {
    "participants": 1,
    "_relayed": 0,
    "up_bps": 505_000.0,
    "down_bps": None,
    "quality": 38.0,
    "level": "poor",
    "relay_share": 0.0,
    "relay_cost": 0.0003,
    "alerts": 0,
    "started_at": 99.0,
}


def test_a_meeting_merges_by_its_fields_rules() -> None:
    assert merge([MEETING_A, MEETING_B]) == {
        "participants": 3,
        "up_bps": 1_740_000.0,  # 1,735,000 to 3 significant digits
        "down_bps": 2_000_000.0,  # a part without a value adds nothing
        "quality": 38.0,
        "level": "poor",
        "relay_share": 0.33,  # 1 relayed of 3, not a mean of the parts' shares
        "relay_cost": 0.0015,
        "alerts": 1,
        "started_at": 99.0,
    }


def test_one_part_is_the_entity_without_hidden_fields() -> None:
    assert merge([MEETING_A]) == {k: v for k, v in MEETING_A.items() if k != "_relayed"}
    assert visible({"_x": 1, "y": 2}) == {"y": 2}


def test_a_participant_on_two_daemons_is_the_worst_of_its_connections() -> None:
    one = {
        "kind": "participant",
        "joined_at": 10.0,
        "up_bps": 100.0,
        "loss_down_pct": 0.5,
        "rtt_ms": 80.0,
        "mos": 4.1,
        "quality": 80.0,
        "level": "excellent",
        "reasons": ["jitter"],
        "relay": "direct",
        "turn_server": None,
        "relayed_bytes": 0.0,
        "connections": 1,
    }
    other = one | {
        "joined_at": 9.0,
        "loss_down_pct": 2.0,
        "rtt_ms": 40.0,
        "mos": 3.5,
        "level": "fair",
        "reasons": ["relay-tcp", "loss"],
        "relay": "turn-tcp",
        "turn_server": "turn:t.example.com",
        "relayed_bytes": 5e6,
    }
    assert merge([one, other]) == one | {
        "joined_at": 9.0,
        "up_bps": 200.0,
        "loss_down_pct": 2.0,
        "rtt_ms": 80.0,
        "mos": 3.5,
        "level": "fair",
        "reasons": ["loss", "jitter", "relay-tcp"],
        "relay": "turn-tcp",
        "turn_server": "turn:t.example.com",
        "relayed_bytes": 5e6,
        "connections": 2,
    }


def test_route_percentiles_come_from_the_summed_histograms() -> None:
    fast = [90, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    slow = [0, 0, 0, 0, 0, 0, 0, 50, 50, 0, 0, 0]
    part: dict[str, Any] = {"service": "api", "requests_per_s": 1.5, "status_per_s": [0, 1.5]}
    merged = merge(
        [
            part | {"_hist": fast, **percentile_fields(fast)},
            part | {"_hist": slow, **percentile_fields(slow), "status_per_s": [0, 0.25]},
        ]
    )
    summed = [a + b for a, b in zip(fast, slow, strict=True)]
    assert merged == {
        "service": "api",
        "requests_per_s": 3.0,
        "status_per_s": [0, 1.75],
        "p50_ms": round(latency_summary(summed).p50 or 0, 1),
        "p95_ms": round(latency_summary(summed).p95 or 0, 1),
        "p99_ms": round(latency_summary(summed).p99 or 0, 1),
    }
    assert merged["p50_ms"] != percentile_fields(fast)["p50_ms"]


def test_part_ids_keep_the_entity_and_the_daemon() -> None:
    assert split_part(part_id("api GET /v1/x", "d1")) == ("api GET /v1/x", "d1")
    assert split_part("standalone") == ("standalone", "")


def test_a_lone_daemons_change_is_shown_without_hidden_fields() -> None:
    change = Change(
        "meetings",
        {"m": {"_relayed": 1, "participants": 2}, "n": {"_relayed": 0}},
        ["gone"],
        events=[{"id": "x"}],
    )
    assert shown(change) == Change("meetings", {"m": {"participants": 2}}, ["gone"], [{"id": "x"}])


# -- the mirror and catching up, for any changes of any daemons' parts --------------------------

DAEMONS = ("d1", "d2", "d3")
ENTITIES = ("m1", "m2", "m3")
Op = tuple[str, str, dict[str, Any] | None]  # (entity, daemon, fields to set | None: remove)

ops = st.lists(
    st.tuples(
        st.sampled_from(ENTITIES),
        st.sampled_from(DAEMONS),
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "participants": st.integers(0, 5),
                    "_relayed": st.integers(0, 5),
                    "up_bps": st.sampled_from([0.0, 1000.0, 2500.0, None]),
                    "quality": st.sampled_from([10.0, 50.0, 95.0, None]),
                    "relay_share": st.just(0.0),
                    "name": st.sampled_from(["x", "y"]),
                },
            ),
        ),
    ),
    max_size=12,
)


def delta_of(ops_: list[Op], seq: int, existing: set[str] | None = None) -> Delta:
    """One delta of the ops; a part that is new (not in ``existing``, which it updates) comes
    with a visible field, as every part the topics build does."""
    existing = set() if existing is None else existing
    changed: Entities = {}
    removed: list[str] = []
    for entity, daemon, fields in ops_:
        raw = part_id(entity, daemon)
        if fields is None:
            changed.pop(raw, None)
            removed.append(raw)
            existing.discard(raw)
        else:
            if raw not in existing:
                changed[raw] = {"kind": "meeting"}
                existing.add(raw)
            changed.setdefault(raw, {}).update(fields)
    return Delta(
        topic="meetings",
        epoch="e",
        seq=seq,
        prev=seq - 1,
        at=float(seq),
        changed=changed,
        removed=removed,
    )


def without_none(entities: Entities) -> Entities:
    return {e: {k: v for k, v in f.items() if v is not None} for e, f in entities.items()}


def merged_from_scratch(parts: dict[tuple[str, str], dict[str, Any]]) -> Entities:
    by_entity: dict[str, dict[str, dict[str, Any]]] = {}
    for (entity, daemon), fields in parts.items():
        by_entity.setdefault(entity, {})[daemon] = fields
    return {e: merge([ps[d] for d in sorted(ps)]) for e, ps in by_entity.items()}


def run_parts(deltas: list[Delta]) -> list[dict[tuple[str, str], dict[str, Any]]]:
    """The parts after each delta, applied the way the channel's state is."""
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    history: list[dict[tuple[str, str], dict[str, Any]]] = [{}]
    for delta in deltas:
        for raw in delta.removed:
            parts.pop(split_part(raw), None)
        for raw, fields in delta.changed.items():
            parts.setdefault(split_part(raw), {}).update(fields)
        history.append({k: dict(v) for k, v in parts.items()})
    return history


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, min_size=1, max_size=8))
def test_a_subscriber_applying_the_mirrors_deltas_holds_the_merged_parts(
    rounds: list[list[Op]],
) -> None:
    existing: set[str] = set()
    deltas = [delta_of(r, seq, existing) for seq, r in enumerate(rounds, start=1)]
    mirror = Mirror()
    client: Entities = {}
    for delta, parts in zip(deltas, run_parts(deltas)[1:], strict=True):
        shown_delta = mirror.apply_delta(delta)
        assert shown_delta is not None
        apply(client, shown_delta)
        # A field that went away is null to a client that applies deltas (§12.4).
        assert without_none(client) == without_none(merged_from_scratch(parts))
        assert without_none(mirror.entities) == without_none(client)
        assert mirror.seq == delta.seq


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, min_size=2, max_size=8), st.data())
def test_catching_up_from_any_position_gives_the_merged_parts_now(
    rounds: list[list[Op]], data: st.DataObject
) -> None:
    existing: set[str] = set()
    deltas = [delta_of(r, seq, existing) for seq, r in enumerate(rounds, start=1)]
    history = run_parts(deltas)
    held = data.draw(st.integers(0, len(deltas) - 1))
    client = merged_from_scratch(history[held])
    now = Mirror.of(((e, d, f) for (e, d), f in history[-1].items()), len(deltas))
    caught = catch_up(deltas[held:], now)
    assert caught[0].prev == held
    assert caught[-1].seq == len(deltas)
    for delta in caught:
        apply(client, delta)
    assert without_none(client) == without_none(merged_from_scratch(history[-1]))
    assert without_none(client) == without_none(now.entities)


def test_one_daemons_deltas_catch_up_as_they_were_published() -> None:
    existing: set[str] = set()
    deltas = [
        delta_of([("m1", "d1", {"participants": 1, "_relayed": 0})], 1, existing),
        delta_of([("m1", "d1", {"participants": 2, "_relayed": 1})], 2, existing),
        delta_of([("m1", "d1", {"_relayed": 0})], 3, existing),
        delta_of([("m2", "d1", {"participants": 1}), ("m1", "d1", None)], 4, existing),
    ]
    now = Mirror.of([("m2", "d1", {"kind": "meeting", "participants": 1})], 4)
    caught = catch_up(deltas[1:], now)
    assert [(d.seq, d.prev, d.changed, d.removed) for d in caught] == [
        (2, 1, {"m1": {"participants": 2}}, []),
        (3, 2, {}, []),  # only a hidden field changed
        (4, 3, {"m2": {"kind": "meeting", "participants": 1}}, ["m1"]),
    ]


def test_a_mirror_refuses_a_delta_that_does_not_follow() -> None:
    mirror = Mirror(seq=4)
    assert mirror.apply_delta(delta_of([("m1", "d1", {"participants": 1})], 6)) is None
    assert mirror.entities == {}


# -- the topics' parts, merged, are what one engine with everything shows -----------------------


def sample(participant: str, seq: int, bytes_per_s: int, t0: float) -> RtcSample:
    return RtcSample(
        meeting="m",
        participant=participant,
        connection="pc",
        seq=seq,
        client_ts=1000 * (t0 + seq),
        video_bytes_sent=bytes_per_s * seq,
        video_bytes_received=bytes_per_s * seq // 2,
        video_packets_received=100 * seq,
        video_packets_lost=seq if participant == "carol" else 0,
        rtt_ms=50.0 + seq,
        local_candidate="relay" if participant == "bob" else "host",
        relay_protocol="tcp" if participant == "bob" else None,
    )


def feed(engines: dict[str, Engine], where: dict[str, str], seconds: int, t0: float) -> float:
    """Each participant's samples into the engine ``where`` names, a tick a second."""
    rates = {"alice": 100_000, "bob": 60_000, "carol": 30_000}
    for seq in range(1, seconds + 1):
        for participant, name in where.items():
            engines[name].add([sample(participant, seq, rates[participant], t0)], t0 + seq - 0.5)
        for engine in engines.values():
            engine.tick(t0 + seq)
    return t0 + seconds


def test_a_meeting_split_over_two_daemons_merges_into_what_one_daemon_shows() -> None:
    t0 = 1_796_550_000.0  # an epoch time, as the daemon's clock gives
    split = {"a": Engine(), "b": Engine()}
    whole = {"one": Engine()}
    now = feed(split, {"alice": "a", "bob": "b", "carol": "b"}, 10, t0)
    feed(whole, {"alice": "one", "bob": "one", "carol": "one"}, 10, t0)

    parts = [topics.meetings_topic(split[name], now)["m"] for name in ("a", "b")]
    assert merge(parts) == visible(topics.meetings_topic(whole["one"], now)["m"])
    assert merge(parts)["participants"] == 3
    assert merge(parts)["relay_share"] == 0.33

    a, b = (topics.meeting_topic(split[name], "m", now) for name in ("a", "b"))
    assert not a.keys() & b.keys()  # participants and their points: one daemon each
    assert {**a, **b} == topics.meeting_topic(whole["one"], "m", now)


def test_a_participant_whose_connections_reach_two_daemons_is_one_participant() -> None:
    """alice's two peer connections land on two daemons: the merge of their parts of her is
    what one daemon holding both connections shows (rates to their 3 significant digits)."""
    t0 = 1_796_550_000.0
    split, whole = {"pc1": Engine(), "pc2": Engine()}, Engine()
    gauges = {
        "pc1": video_gauges((29.97, 30.0), (1280, 720), (1280, 720), 1_500_000.0)
        | {"local_candidate": "relay", "relay_protocol": "tcp", "turn_url": "turn:t.example"},
        "pc2": video_gauges((14.6, 30.0), (640, 360), (1920, 1080), 1_234_567.0)
        | {"local_candidate": "srflx", "remote_candidate": "relay"},
    }
    for seq in range(1, 8):
        for connection, engine in split.items():
            frame = msgspec.structs.replace(
                sample("alice", seq, 40_000 if connection == "pc1" else 90_000, t0),
                connection=connection,
                **gauges[connection],
            )
            engine.add([frame], t0 + seq - 0.5)
            whole.add([frame], t0 + seq - 0.5)
        for engine in (*split.values(), whole):
            engine.tick(t0 + seq)
    now = t0 + 7
    merged = merge([topics.meeting_topic(e, "m", now)["alice"] for e in split.values()])
    expected = visible(topics.meeting_topic(whole, "m", now)["alice"])
    rates = ("up_bps", "down_bps", "bwe_bps")
    assert {k: v for k, v in merged.items() if k not in rates} == {
        k: v for k, v in expected.items() if k not in rates
    }
    for k in rates:
        assert merged[k] == pytest.approx(expected[k], rel=0.01)
    assert (merged["connections"], merged["relay"], merged["remote_relayed"]) == (
        2,
        "turn-tcp",
        True,
    )
    assert (merged["width_in"], merged["height_in"], merged["fps_in"]) == (640, 360, 15.0)


def test_a_stream_whose_samples_moved_to_another_daemon_sums_what_each_counted() -> None:
    """A connection rehashed to a second daemon mid-call: each counted its own samples (the
    second's first is a baseline), the merged totals are their sum, ``q`` the newest."""
    t0 = 1_796_550_000.0
    first, second = Engine(), Engine()
    for seq in range(0, 10):
        engine = first if seq < 5 else second
        engine.add([sample("alice", seq, 10_000, t0)], t0 + seq)
    parts = [topics.meeting_topic(e, "m", t0 + 10)["alice pc"] for e in (first, second)]
    assert [p["bytes"][2] for p in parts] == [40_000, 40_000]  # 4 samples of 10 kB each
    merged = merge(parts)
    assert (merged["q"], merged["bytes"]) == (9, [0, 0, 80_000, 40_000, 0, 0])


def test_a_route_served_through_two_daemons_merges_into_what_one_daemon_shows() -> None:
    t0 = 1_796_550_000.0
    split, whole = (Engine(), Engine()), Engine()
    for seq in range(1, 6):
        for i, engine in enumerate(split):
            grown = http_sample(seq * (i + 1))  # the second instance twice as busy
            frame = msgspec.structs.replace(grown, instance=f"web-{i}", seq=seq)
            engine.add([frame], t0 + seq)
            whole.add([frame], t0 + seq)
    (key,) = topics.http_topic(whole, t0 + 5)
    merged = merge([topics.http_topic(engine, t0 + 5)[key] for engine in split])
    assert merged == visible(topics.http_topic(whole, t0 + 5)[key])
    assert merged["requests_per_s"] > topics.http_topic(split[1], t0 + 5)[key]["requests_per_s"]


@pytest.mark.parametrize("bucket_s", [1.0, 0.5])
def test_a_participants_series_keeps_every_point_at_epoch_times(bucket_s: float) -> None:
    engine = Engine(AggregateSettings(bucket_s=bucket_s, window_buckets=60))
    t0 = float(int(time.time()))  # the daemon's clock: ten digits of seconds
    ticks = 70
    for seq in range(1, ticks + 1):
        now = t0 + seq * bucket_s
        engine.add([sample("alice", seq, 100_000, t0)], now - bucket_s / 2)
        engine.tick(now)
    entities = topics.meeting_topic(engine, "m", now)
    points = {k: e for k, e in entities.items() if e["kind"] == "point"}
    assert len(points) == 60  # the whole live window, not one point
    assert all(k == topics.point_id("alice", e["t"]) for k, e in points.items())
    assert topics.point_id("alice", 1_796_550_000.0) == "alice@1796550000"
    assert topics.point_id("alice", 1_796_550_000.5) == "alice@1796550000.5"
