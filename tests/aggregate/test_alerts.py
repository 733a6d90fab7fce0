"""Alert rules: N of M to raise, hysteresis to clear, stable ids, no storms — in virtual time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from collector.aggregate.alerts import DEFAULT_RULES, AlertEngine, AlertEvent, AlertRule

KEY = ("m1", "p1")
RTT = AlertRule(name="high_rtt", metric="rtt_ms", raise_threshold=400, clear_threshold=300)
BAD, MID, GOOD = 500.0, 350.0, 100.0  # above raise; between the thresholds; below clear


def feed(
    engine: AlertEngine,
    values: Sequence[float | None],
    start: float = 0.0,
    metric: str = "rtt_ms",
) -> list[str]:
    """Feed one sample per second from ``start``; the transitions as 'rule raised@t'."""
    return [
        f"{event.rule} {event.state}@{event.at:g}"
        for t, value in enumerate(values)
        for event in engine.observe(KEY, "participant", {metric: value}, start + t)
    ]


def rule(name: str) -> AlertRule:
    (found,) = [r for r in DEFAULT_RULES if r.name == name]
    return found


def test_raises_on_the_third_breach_of_five_not_the_second() -> None:
    engine = AlertEngine([RTT])
    assert feed(engine, [BAD, GOOD, BAD, GOOD]) == []
    assert engine.active() == []
    assert feed(engine, [BAD], start=4) == ["high_rtt raised@4"]
    (raised,) = engine.active()
    assert (raised.value, raised.threshold, raised.severity) == (BAD, 400, "warning")


def test_two_breaches_in_every_five_never_raise() -> None:
    # Every window of 5 holds exactly 2 breaches, for a minute.
    assert feed(AlertEngine([RTT]), [BAD, GOOD, BAD, GOOD, GOOD] * 12) == []


def test_old_breaches_slide_out_of_the_window() -> None:
    # Two breaches, then five healthy samples push them out: two more breaches are not three.
    assert feed(AlertEngine([RTT]), [BAD, BAD] + [GOOD] * 3 + [BAD, BAD]) == []


def test_clear_needs_five_of_five_below_the_clear_threshold() -> None:
    engine = AlertEngine([RTT])
    # 350 ms is below the raise threshold but above the clear one: still raised (hysteresis).
    assert feed(engine, [BAD] * 3 + [MID] * 20) == ["high_rtt raised@2"]
    # Four healthy samples, one in-between, four healthy: still not five in a row.
    assert feed(engine, [GOOD] * 4 + [MID] + [GOOD] * 4, start=23) == []
    assert feed(engine, [GOOD], start=32) == ["high_rtt cleared@32"]
    assert engine.active() == []


def test_at_the_clear_threshold_is_healthy() -> None:
    # high_jitter raises above 30 ms and clears at or below 30 ms (the same threshold).
    engine = AlertEngine([rule("high_jitter")])
    assert feed(engine, [31.0] * 3 + [30.0] * 5, metric="jitter_ms") == [
        "high_jitter raised@2",
        "high_jitter cleared@7",
    ]


def test_after_a_clear_the_next_raise_needs_a_fresh_n_of_m() -> None:
    # 3 of 10 to raise: breaches from before the clear must not count towards the next raise.
    wide = msgspec.structs.replace(RTT, raise_window=10, min_interval_s=0)
    engine = AlertEngine([wide])
    assert feed(engine, [BAD] * 3 + [GOOD] * 5) == ["high_rtt raised@2", "high_rtt cleared@7"]
    assert feed(engine, [BAD, BAD], start=8) == []
    assert feed(engine, [BAD], start=10) == ["high_rtt raised@10"]


def test_a_clear_event_carries_the_clear_threshold_and_value() -> None:
    engine = AlertEngine([RTT])
    events = [
        event
        for t, value in enumerate([BAD] * 3 + [250.0] * 5)
        for event in engine.observe(KEY, "participant", {"rtt_ms": value}, 10.0 + t)
    ]
    assert [(e.state, e.value, e.threshold, e.at, e.raised_at) for e in events] == [
        ("raised", BAD, 400, 12.0, 12.0),
        ("cleared", 250.0, 300, 17.0, 12.0),
    ]


def test_the_same_id_from_raise_to_clear_and_a_new_one_next_time() -> None:
    engine = AlertEngine([msgspec.structs.replace(RTT, min_interval_s=0)])
    events: list[AlertEvent] = []
    # A healthy stretch between the two alerts, so nothing carries over but the counter.
    for t, value in enumerate([BAD] * 3 + [GOOD] * 10 + [BAD] * 3 + [GOOD] * 5):
        events += engine.observe(KEY, "participant", {"rtt_ms": value}, float(t))
    assert [e.state for e in events] == ["raised", "cleared", "raised", "cleared"]
    first, first_clear, second, second_clear = events
    assert first.id == first_clear.id
    assert second.id == second_clear.id
    assert first.id != second.id
    # Deterministic: a second engine fed the same samples names the alerts the same way.
    again = AlertEngine([msgspec.structs.replace(RTT, min_interval_s=0)])
    ids = [
        event.id
        for t, value in enumerate([BAD] * 3 + [GOOD] * 10 + [BAD] * 3)
        for event in again.observe(KEY, "participant", {"rtt_ms": value}, float(t))
    ]
    assert ids == [first.id, first.id, second.id]


def test_ids_differ_even_for_raises_at_the_same_instant() -> None:
    instant = msgspec.structs.replace(rule("relay_tcp"), min_interval_s=0)
    engine = AlertEngine([instant])
    events = [
        event
        for value in [1.0, 0.0, 1.0]
        for event in engine.observe(KEY, "participant", {"relay_tcp": value}, 5.0)
    ]
    assert [e.state for e in events] == ["raised", "cleared", "raised"]
    assert events[0].id != events[2].id


def test_ids_differ_between_keys() -> None:
    engine = AlertEngine([RTT])
    ids = {
        event.id
        for key in [("m1", "p1"), ("m1", "p2"), ("m2", "p1")]
        for t in range(3)
        for event in engine.observe(key, "participant", {"rtt_ms": BAD}, float(t))
    }
    assert len(ids) == 3


def test_none_nan_and_missing_metrics_are_not_samples() -> None:
    engine = AlertEngine([RTT])
    # Gaps neither count as healthy (which would push breaches out) nor as breaches.
    assert feed(engine, [BAD, None, None, None, None, None, BAD, math.nan, BAD]) == [
        "high_rtt raised@8"
    ]
    assert engine.observe(KEY, "participant", {"jitter_ms": 99.0}, 9.0) == []
    # While raised, gaps do not clear it either.
    assert feed(engine, [GOOD, None, GOOD, None, GOOD, GOOD], start=10) == []
    assert feed(engine, [GOOD], start=16) == ["high_rtt cleared@16"]


def test_critical_low_mos_needs_thirty_seconds_of_breach() -> None:
    engine = AlertEngine([rule("low_mos_critical")])
    assert feed(engine, [2.5] * 29, metric="mos") == []  # t = 0 … 28: 28 s so far
    assert feed(engine, [2.5, 2.5], start=29, metric="mos") == ["low_mos_critical raised@30"]
    (raised,) = engine.active()
    assert (raised.severity, raised.raised_at) == ("critical", 30.0)


def test_a_break_in_the_low_mos_run_restarts_the_thirty_seconds() -> None:
    engine = AlertEngine([rule("low_mos_critical")])
    # One healthy sample at t = 20 ends the run; the next starts at t = 21.
    assert feed(engine, [2.5] * 20 + [4.0] + [2.5] * 40, metric="mos") == [
        "low_mos_critical raised@51"
    ]


def test_low_mos_warning_raises_long_before_the_critical_one() -> None:
    engine = AlertEngine(DEFAULT_RULES)
    events = feed(engine, [2.5] * 31, metric="mos")
    assert events == ["low_mos raised@2", "low_mos_critical raised@30"]


def test_a_flapping_metric_does_not_storm() -> None:
    # Ten minutes at one sample per second: 3 s bad, 5 s good, 75 times over.
    values = ([BAD] * 3 + [GOOD] * 5) * 75
    unguarded = AlertEngine([msgspec.structs.replace(RTT, min_interval_s=0)])
    assert len(feed(unguarded, values)) == 150  # raise and clear every 8 s
    assert unguarded.suppressed == 0

    engine = AlertEngine([RTT])  # min_interval_s = 60
    transitions = feed(engine, values)
    # A raise at t = 2 and a clear at t = 7; the next eight would-be raises (t = 10 … 66) come
    # within 60 s of that clear, the ninth (t = 74) does not: one real raise per 9 cycles.
    assert transitions[:4] == [
        "high_rtt raised@2",
        "high_rtt cleared@7",
        "high_rtt raised@74",
        "high_rtt cleared@79",
    ]
    assert len(transitions) == 18
    assert engine.suppressed == 75 - 9  # counted once per would-be raise, not per sample


def test_a_strictly_alternating_metric_stays_raised() -> None:
    # Bad every other second is 3 of 5 (raise) but never 5 healthy in a row (clear).
    engine = AlertEngine([RTT])
    assert feed(engine, [BAD, GOOD] * 300) == ["high_rtt raised@4"]
    assert engine.suppressed == 0


def test_a_suppressed_raise_fires_once_the_interval_is_over() -> None:
    engine = AlertEngine([RTT])
    assert feed(engine, [BAD] * 3 + [GOOD] * 5) == ["high_rtt raised@2", "high_rtt cleared@7"]
    # A lasting breach right after the clear: held back until t = 67, counted once.
    assert feed(engine, [BAD] * 70, start=8) == ["high_rtt raised@67"]
    assert engine.suppressed == 1


def test_forget_clears_what_is_raised_and_drops_the_state() -> None:
    engine = AlertEngine([RTT])
    feed(engine, [BAD] * 3)
    assert len(engine.active()) == 1
    (event,) = engine.forget(KEY, 99.0)
    assert (event.state, event.at, event.value, event.raised_at) == ("cleared", 99.0, None, 2.0)
    assert engine.active() == []
    assert engine.forget(KEY, 100.0) == []
    # The state is gone: one more breach after rejoining is 1 of 5, not the 4th of 5.
    assert feed(engine, [BAD], start=101) == []


def test_forgetting_a_meeting_forgets_its_participants_and_nothing_else() -> None:
    engine = AlertEngine([RTT, msgspec.structs.replace(RTT, name="meeting_rtt", scope="meeting")])
    for t in range(3):
        for key in [("m1", "p1"), ("m1", "p2"), ("m10", "p1")]:
            engine.observe(key, "participant", {"rtt_ms": BAD}, float(t))
        engine.observe(("m1",), "meeting", {"rtt_ms": BAD}, float(t))
    assert len(engine.active()) == 4
    cleared = engine.forget(("m1",), 50.0)
    assert sorted((e.rule, e.key) for e in cleared) == [
        ("high_rtt", ("m1", "p1")),
        ("high_rtt", ("m1", "p2")),
        ("meeting_rtt", ("m1",)),
    ]
    assert [e.key for e in engine.active()] == [("m10", "p1")]


def test_rules_see_only_their_scope() -> None:
    meeting_rule = msgspec.structs.replace(RTT, name="meeting_rtt", scope="meeting")
    engine = AlertEngine([RTT, meeting_rule])
    assert feed(engine, [BAD] * 5) == ["high_rtt raised@2"]  # participant observations only
    events = [
        [e.rule for e in engine.observe(("m1",), "meeting", {"rtt_ms": BAD}, float(t))]
        for t in range(3)
    ]
    assert events == [[], [], ["meeting_rtt"]]
    with pytest.raises(ValueError, match="scope"):
        engine.observe(KEY, "participants", {"rtt_ms": BAD}, 3.0)


def test_default_rules_follow_the_reference_table() -> None:
    def raised(metric: str, value: float, samples: int = 5) -> list[str]:
        engine = AlertEngine(DEFAULT_RULES)
        return [
            e.rule
            for t in range(samples)
            for e in engine.observe(KEY, "participant", {metric: value}, float(t))
        ]

    assert raised("rtt_ms", 400.0) == []  # "> 400": at the threshold is fine
    assert raised("rtt_ms", 401.0) == ["high_rtt"]
    assert raised("jitter_ms", 30.0) == []
    assert raised("jitter_ms", 31.0) == ["high_jitter"]
    assert raised("loss_pct", 2.0) == ["packet_loss"]
    assert raised("loss_pct", 6.0) == ["packet_loss", "packet_loss_critical"]
    assert raised("mos", 3.5) == []
    assert raised("mos", 3.4) == ["low_mos"]
    assert raised("relay_tcp", 0.0) == []
    assert raised("relay_tcp", 1.0, samples=1) == ["relay_tcp"]  # at once: 1 of 1
    severities = {r.name: r.severity for r in DEFAULT_RULES}
    assert severities["packet_loss_critical"] == severities["low_mos_critical"] == "critical"
    assert severities["packet_loss"] == severities["relay_tcp"] == "warning"
    assert {r.scope for r in DEFAULT_RULES} == {"participant"}


def test_high_rtt_clears_below_300_not_below_400() -> None:
    engine = AlertEngine(DEFAULT_RULES)
    assert feed(engine, [450.0] * 3 + [320.0] * 10) == ["high_rtt raised@2"]
    assert feed(engine, [290.0] * 5, start=13) == ["high_rtt cleared@17"]


def test_relay_tcp_clears_as_soon_as_the_call_is_back_on_udp_or_direct() -> None:
    engine = AlertEngine(DEFAULT_RULES)
    assert feed(engine, [1.0, 1.0, 0.0], metric="relay_tcp") == [
        "relay_tcp raised@0",
        "relay_tcp cleared@2",
    ]


RULE_DICT: dict[str, Any] = {
    "name": "x",
    "metric": "rtt_ms",
    "raise_threshold": 1,
    "clear_threshold": 1,
}


def test_rules_from_config_get_the_defaults_and_reject_unknown_fields() -> None:
    rule = msgspec.convert(RULE_DICT, AlertRule)
    assert (rule.raise_count, rule.raise_window, rule.min_interval_s) == (3, 5, 60.0)
    with pytest.raises(msgspec.ValidationError, match="treshold"):
        msgspec.convert({**RULE_DICT, "treshold": 2}, AlertRule)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"raise_count": 6}, "raise_count must not exceed raise_window"),
        ({"clear_count": 6}, "clear_count must not exceed clear_window"),
        ({"raise_window": 65, "raise_count": 3}, "<= 64"),
        ({"raise_count": 0}, ">= 1"),
        ({"clear_threshold": 2}, "clear_threshold must not be above"),
        ({"above": False, "clear_threshold": 0.5}, "clear_threshold must not be below"),
        ({"raise_threshold": math.inf, "clear_threshold": 0}, "finite"),
        ({"min_interval_s": -1}, ">= 0"),
        ({"severity": "loud"}, "severity"),
        ({"scope": "room"}, "scope"),
        ({"name": ""}, "length >= 1"),
    ],
)
def test_rules_from_config_reject_invalid_values(change: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({**RULE_DICT, **change}, AlertRule)


def test_rule_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="high_rtt"):
        AlertEngine([RTT, msgspec.structs.replace(RTT, raise_threshold=500)])


def test_set_rules_applies_new_thresholds_from_the_next_sample_and_keeps_what_was_seen() -> None:
    engine = AlertEngine([RTT])
    assert feed(engine, [MID, MID]) == []  # healthy under 400
    lower = msgspec.structs.replace(RTT, raise_threshold=200, clear_threshold=150)
    assert engine.set_rules([lower], now=2) == []
    # 350 now breaches; the two samples before the change were seen under the old rule.
    assert feed(engine, [MID, MID, MID], start=2) == ["high_rtt raised@4"]
    raised_again_threshold = msgspec.structs.replace(lower, raise_threshold=300)
    assert engine.set_rules([raised_again_threshold], now=5) == []  # same rule: stays raised
    assert [event.rule for event in engine.active()] == ["high_rtt"]


def test_set_rules_clears_the_alerts_of_a_dropped_or_repurposed_rule() -> None:
    jitter = AlertRule(name="jitter", metric="jitter_ms", raise_threshold=30, clear_threshold=20)
    engine = AlertEngine([RTT, jitter])
    for t in range(3):
        engine.observe(KEY, "participant", {"rtt_ms": BAD, "jitter_ms": 50.0}, t)
    assert sorted(event.rule for event in engine.active()) == ["high_rtt", "jitter"]
    on_loss = msgspec.structs.replace(jitter, metric="loss_pct")
    cleared = engine.set_rules([on_loss], now=10)
    assert sorted((event.rule, event.state, event.value) for event in cleared) == [
        ("high_rtt", "cleared", None),
        ("jitter", "cleared", None),
    ]
    assert engine.active() == []
    with pytest.raises(ValueError, match="unique"):
        engine.set_rules([RTT, RTT], now=11)


def _restarted(
    engine: AlertEngine, rules: Sequence[AlertRule], now: float
) -> tuple[AlertEngine, list[AlertEvent]]:
    """A new engine under ``rules`` from ``engine``'s checkpointed state (through MessagePack,
    as a checkpoint goes); the events its restore produced."""
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(engine.state()))
    restarted = AlertEngine(rules)
    return restarted, restarted.restore(state, now)


def test_a_restart_keeps_raised_alerts_and_their_ids_until_they_clear() -> None:
    engine, twin = AlertEngine([RTT]), AlertEngine([RTT])  # the twin never stops
    values = [BAD] * 3 + [GOOD] * 2
    assert feed(engine, values) == feed(twin, values) == ["high_rtt raised@2"]
    restarted, events = _restarted(engine, [RTT], now=5)
    assert events == []
    assert restarted.active() == twin.active()
    # The healthy samples seen before the restart count: three more clear it, as in the twin,
    # with the raise's id.
    after = [
        (e.id, e.state, e.at)
        for t in range(5, 8)
        for e in restarted.observe(KEY, "participant", {"rtt_ms": GOOD}, t)
    ]
    assert after == [(twin.active()[0].id, "cleared", 7)]
    assert feed(twin, [GOOD] * 3, start=5) == ["high_rtt cleared@7"]
    assert restarted.active() == []
    assert restarted.state() == twin.state()


def test_a_restart_keeps_the_window_of_a_rule_not_yet_raised() -> None:
    engine = AlertEngine([RTT])
    assert feed(engine, [BAD, BAD]) == []
    restarted, _ = _restarted(engine, [RTT], now=2)
    assert feed(restarted, [BAD], start=2) == ["high_rtt raised@2"]  # the third of five


def test_a_restart_under_other_rules_clears_what_they_no_longer_watch() -> None:
    jitter = AlertRule(name="jitter", metric="jitter_ms", raise_threshold=30, clear_threshold=20)
    engine = AlertEngine([RTT, jitter])
    for t in range(3):
        engine.observe(KEY, "participant", {"rtt_ms": BAD, "jitter_ms": 50.0}, t)
    raised = {event.rule: event for event in engine.active()}
    on_loss = msgspec.structs.replace(jitter, metric="loss_pct")
    restarted, cleared = _restarted(engine, [on_loss], now=10)
    assert sorted((e.rule, e.id, e.state, e.value, e.threshold, e.at) for e in cleared) == [
        ("high_rtt", raised["high_rtt"].id, "cleared", None, 300, 10),
        ("jitter", raised["jitter"].id, "cleared", None, 20, 10),
    ]
    assert restarted.active() == []
    assert restarted.state() == []
    # Without the jitter rule: its alert clears, high_rtt's stays raised and goes on.
    kept, cleared = _restarted(engine, [RTT], now=10)
    assert [(e.id, e.state) for e in cleared] == [(raised["jitter"].id, "cleared")]
    assert [e.id for e in kept.active()] == [raised["high_rtt"].id]
    assert [e.id for e in kept.forget(KEY[:1], now=11)] == [raised["high_rtt"].id]
