"""Alert rules: N of M to raise, hysteresis to clear, stable ids, no storms."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from collector.aggregate.alerts import DEFAULT_RULES, AlertEngine, AlertRule

KEY = ("m1", "p1")
RTT = AlertRule(name="high_rtt", metric="rtt_ms", raise_threshold=400, clear_threshold=300)


def feed(engine: AlertEngine, values: Sequence[float | None], start: float = 0.0) -> list[str]:
    """Feed one rtt sample per second; return 'raised@t' / 'cleared@t' transitions."""
    return [
        f"{event.state}@{int(event.at)}"
        for t, value in enumerate(values)
        for event in engine.observe(KEY, "participant", {"rtt_ms": value}, start + t)
    ]


def test_raises_on_the_third_breach_of_five_not_the_second() -> None:
    assert feed(AlertEngine([RTT]), [500, 100, 500, 100]) == []
    assert feed(AlertEngine([RTT]), [500, 100, 500, 100, 500]) == ["raised@4"]


def test_two_breaches_in_every_five_never_raise() -> None:
    assert feed(AlertEngine([RTT]), [500, 100, 100, 500, 100] * 6) == []


def test_clear_needs_five_of_five_below_the_clear_threshold() -> None:
    # 350 ms is below the raise threshold but above the clear one: still raised (hysteresis).
    engine = AlertEngine([RTT])
    assert feed(engine, [500, 500, 500] + [350] * 10) == ["raised@2"]
    assert feed(engine, [250] * 4, start=13) == []
    assert feed(engine, [250], start=17) == ["cleared@17"]


def test_the_same_id_from_raise_to_clear_and_a_new_one_next_time() -> None:
    engine = AlertEngine([msgspec.structs.replace(RTT, min_interval_s=0)])
    events = []
    for t, value in enumerate([500] * 3 + [100] * 5 + [500] * 3):
        events += engine.observe(KEY, "participant", {"rtt_ms": value}, float(t))
    assert [e.state for e in events] == ["raised", "cleared", "raised"]
    assert events[0].id == events[1].id != events[2].id
    assert events[1].raised_at == 2.0


def test_none_is_not_a_sample() -> None:
    assert feed(AlertEngine([RTT]), [500, None, None, 500, None, 500]) == ["raised@5"]


def test_critical_low_mos_needs_thirty_seconds() -> None:
    (rule,) = [r for r in DEFAULT_RULES if r.name == "low_mos_critical"]
    engine = AlertEngine([rule])
    transitions = [
        (event.state, event.at)
        for t in range(40)
        for event in engine.observe(KEY, "participant", {"mos": 2.5}, float(t))
    ]
    assert transitions == [("raised", 30.0)]


def test_a_flapping_metric_does_not_storm() -> None:
    engine = AlertEngine([RTT])
    values: list[float | None] = [500, 500, 500, 100, 100, 100, 100, 100] * 75  # 10 minutes
    transitions = feed(engine, values)
    # Without the minimum interval this pattern raises and clears every 8 s: 150 events.
    assert 2 <= len(transitions) <= 22
    assert engine.suppressed > 50


def test_forget_clears_what_is_raised() -> None:
    engine = AlertEngine([RTT])
    feed(engine, [500] * 3)
    assert len(engine.active()) == 1
    (event,) = engine.forget(KEY, 99.0)
    assert (event.state, event.at, event.value) == ("cleared", 99.0, None)
    assert engine.active() == []
    assert engine.forget(KEY, 100.0) == []


def test_rules_see_only_their_scope() -> None:
    meeting_rule = msgspec.structs.replace(RTT, scope="meeting")
    engine = AlertEngine([meeting_rule])
    assert feed(engine, [500] * 5) == []  # participant observations
    events = [engine.observe(("m1",), "meeting", {"rtt_ms": 500}, float(t)) for t in range(3)]
    assert [len(e) for e in events] == [0, 0, 1]


def test_rules_from_config_reject_unknown_fields() -> None:
    rule = msgspec.convert(
        {"name": "x", "metric": "rtt_ms", "raise_threshold": 1, "clear_threshold": 1}, AlertRule
    )
    assert rule.raise_count == 3
    with pytest.raises(msgspec.ValidationError, match="treshold"):
        msgspec.convert(
            {"name": "x", "metric": "m", "raise_threshold": 1, "clear_threshold": 1, "treshold": 2},
            AlertRule,
        )


def test_default_rules_follow_the_reference() -> None:
    rules = {r.name: r for r in DEFAULT_RULES}
    assert (rules["high_rtt"].raise_threshold, rules["high_rtt"].clear_threshold) == (400, 300)
    assert rules["packet_loss_critical"].severity == "critical"
    assert rules["low_mos"].above is False
