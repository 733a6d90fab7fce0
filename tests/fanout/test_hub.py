"""The hub's diffing, merging and delta log (pure: no loop, no clock)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from collector.fanout.hub import Change, DeltaLog, change, diff, merge
from protocol.subscribe import Delta, Entities, TopicMirror, apply

values = st.one_of(st.integers(-5, 5), st.sampled_from(["good", "poor", "x"]), st.booleans())
fields = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=4)
states = st.dictionaries(st.sampled_from([f"e{i}" for i in range(6)]), fields, max_size=6)


def without_nulls(entities: Entities) -> Entities:
    return {e: {k: v for k, v in f.items() if v is not None} for e, f in entities.items()}


def test_diff_sends_only_what_changed() -> None:
    old: Entities = {
        "m1": {"participants": 2, "up_bps": 1e6, "level": "good"},
        "m2": {"participants": 1, "up_bps": 5e5, "level": "fair"},
        "m3": {"participants": 4, "up_bps": 2e6, "level": "good"},
    }
    new: Entities = {
        "m1": {"participants": 2, "up_bps": 1.1e6, "level": "good"},  # one field
        "m2": {"participants": 1, "up_bps": 5e5, "level": "fair"},  # nothing
        "m4": {"participants": 1, "up_bps": 0.0, "level": None},  # new: whole
    }
    changed, removed = diff(old, new)
    assert changed == {"m1": {"up_bps": 1.1e6}, "m4": new["m4"]}
    assert removed == ["m3"]


def test_a_field_that_went_away_is_sent_as_null() -> None:
    changed, removed = diff({"e": {"a": 1, "b": 2}}, {"e": {"a": 1}})
    assert changed == {"e": {"b": None}}
    assert removed == []


def test_change_carries_every_field_of_changed_entities() -> None:
    c = change("meetings", {"m1": {"a": 1, "b": 2}}, {"m1": {"a": 1, "b": 3}, "m2": {"a": 0}})
    assert c.changed == {"m1": {"b": 3}, "m2": {"a": 0}}
    assert c.values == {"m1": {"a": 1, "b": 3}, "m2": {"a": 0}}
    assert c
    assert not Change("meetings", {}, [])


@given(states, states)
def test_applying_the_diff_gives_the_new_state(old: Entities, new: Entities) -> None:
    changed, removed = diff(old, new)
    state = copy.deepcopy(old)
    apply(state, Delta(topic="t", epoch="e", seq=1, prev=0, at=0, changed=changed, removed=removed))
    assert without_nulls(state) == new


@given(st.lists(states, min_size=2, max_size=6))
def test_a_merged_delta_equals_the_deltas_applied_in_order(history: list[Entities]) -> None:
    log = DeltaLog("e1")
    for before, after in itertools.pairwise(history):
        log.append(change("t", before, after), at=0.0)
    deltas = list(log.topics["t"].deltas)
    one_by_one: Entities = {}
    for delta in deltas:
        apply(one_by_one, delta)
    merged_state: Entities = {}
    merged = merge(deltas)
    apply(merged_state, merged)
    assert merged_state == one_by_one
    assert (merged.prev, merged.seq) == (deltas[0].prev, deltas[-1].seq)


def test_merge_keeps_an_entity_removed_then_created_again_in_both() -> None:
    log = DeltaLog("e1")
    log.append(change("t", {}, {"x": {"a": 1, "b": 2}}), at=1.0)
    first = log.append(change("t", {"x": {"a": 1, "b": 2}}, {}), at=2.0)
    second = log.append(change("t", {}, {"x": {"a": 5}}), at=3.0)
    merged = merge([first, second])
    assert merged.removed == ["x"]
    assert merged.changed == {"x": {"a": 5}}
    held: Entities = {"x": {"a": 1, "b": 2}}
    apply(held, merged)
    assert held == {"x": {"a": 5}}  # no "b" left over from the old entity


def test_merge_keeps_alert_transitions_in_order() -> None:
    log = DeltaLog("e1")
    raised: dict[str, Any] = {"id": "a1", "state": "raised"}
    cleared: dict[str, Any] = {"id": "a1", "state": "cleared"}
    d1 = log.append(Change("alerts", {"a1": raised}, [], events=[raised]), at=1.0)
    d2 = log.append(Change("alerts", {}, ["a1"], events=[cleared]), at=2.0)
    assert merge([d1, d2]).alerts == [raised, cleared]


def test_the_log_replays_what_it_holds_and_asks_for_a_snapshot_otherwise() -> None:
    log = DeltaLog("epoch-a", history=3)
    state: Entities = {}
    for i in range(1, 6):
        new = {"m": {"n": i}}
        log.append(change("meetings", state, new), at=float(i))
        state = new
    assert log.snapshot("meetings").seq == 5
    assert log.snapshot("meetings").entities == {"m": {"n": 5}}
    assert [d.seq for d in log.since("meetings", "epoch-a", 3) or []] == [4, 5]
    assert [d.seq for d in log.since("meetings", "epoch-a", 2) or []] == [3, 4, 5]
    assert log.since("meetings", "epoch-a", 5) == []  # nothing missed
    assert log.since("meetings", "epoch-a", 1) is None  # delta 2 is no longer held
    assert log.since("meetings", "epoch-b", 4) is None  # another epoch: snapshot
    assert log.since("meetings", "epoch-a", 9) is None  # from the future: snapshot
    assert log.since("meetings", "epoch-a", None) is None
    assert log.snapshot("http").seq == 0
    assert log.snapshot("http").entities == {}


def test_a_snapshot_is_built_once_per_seq_and_keeps_the_state_it_was_built_at() -> None:
    log = DeltaLog("epoch-a")
    log.append(change("meetings", {}, {"m": {"n": 1}}), at=1.0)
    first = log.snapshot("meetings")
    assert log.snapshot("meetings") is first  # shared until the next delta
    log.append(change("meetings", {"m": {"n": 1}}, {"m": {"n": 2}, "k": {"n": 1}}), at=2.0)
    second = log.snapshot("meetings")
    assert second is not first
    assert (second.seq, second.entities) == (2, {"m": {"n": 2}, "k": {"n": 1}})
    assert (first.seq, first.entities) == (1, {"m": {"n": 1}})  # not changed by the delta


def test_a_forgotten_topic_goes_on_from_its_last_seq() -> None:
    log = DeltaLog("e")
    log.append(change("meeting:x", {}, {"p": {"a": 1}}), at=1.0)
    log.forget(["meeting:x"])
    assert "meeting:x" in log.topics  # still holds an entity
    log.append(change("meeting:x", {"p": {"a": 1}}, {}), at=2.0)
    log.forget(["meeting:x"])
    assert "meeting:x" not in log.topics
    assert log.since("meeting:x", "e", 1) is None
    # Used again, the topic goes on from its last seq: a subscriber holding seq 2 (the delta
    # that emptied it) must see the next delta follow, never a seq that went back.
    assert log.snapshot("meeting:x").seq == 2
    assert log.since("meeting:x", "e", 2) == []
    again = log.append(change("meeting:x", {}, {"p": {"a": 2}}), at=3.0)
    assert (again.prev, again.seq) == (2, 3)


def test_the_client_mirror_follows_deltas_and_asks_to_resume_on_a_gap() -> None:
    log = DeltaLog("e")
    mirror = TopicMirror("meetings")
    assert mirror.receive(log.snapshot("meetings")) is None
    d1 = log.append(change("meetings", {}, {"m": {"n": 1}}), at=1.0)
    d2 = log.append(change("meetings", {"m": {"n": 1}}, {"m": {"n": 2}}), at=2.0)
    d3 = log.append(change("meetings", {"m": {"n": 2}}, {}), at=3.0)
    assert mirror.receive(d1) is None
    assert mirror.receive(d1) is None  # old news
    resume = mirror.receive(d3)  # d2 went missing
    assert resume is not None
    assert (resume.epoch, resume.seq) == ("e", 1)
    assert mirror.entities == {"m": {"n": 1}}
    assert mirror.receive(merge([d2, d3])) is None
    assert mirror.entities == {}
    assert mirror.seq == 3
    other_epoch = Delta(topic="meetings", epoch="f", seq=4, prev=3, at=4.0)
    assert mirror.receive(other_epoch) is not None
