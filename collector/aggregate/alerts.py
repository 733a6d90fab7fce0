"""Alert rules: raise on "N of the last M samples", clear with hysteresis, never storm.

A rule watches one metric of one scope (a participant, or a meeting). Each tick's value is one
sample; a ``None`` (not measured this interval) is no sample at all. The rule **raises** when
``raise_count`` of the last ``raise_window`` samples breach ``raise_threshold`` (and, if
``min_duration_s`` is set, the breach has lasted that long), and **clears** only when
``clear_count`` of the last ``clear_window`` samples are on the good side of the separate
``clear_threshold`` — a value between the two thresholds keeps a raised alert raised.

Anti-flapping: after an alert clears, the same rule may not raise again for the same key
before ``min_interval_s``; raises in that time are counted in ``suppressed``, not emitted.

The defaults follow the reference table (``DEFAULT_RULES``). Not rules here: the
bandwidth-limited encoder (a quality reason, ``cpu``/bitrate), ICE disconnected / no media (the
lifecycle's silence timeout ends the participant) and the relay cost budget (meeting summaries
carry the cost; a budget needs the daily storage of a later issue).

Pure: no I/O, no clock reads; time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
Scope = Literal["participant", "meeting"]


class AlertRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    name: str
    metric: str  # rtt_ms | jitter_ms | loss_pct | mos | relay_tcp
    above: bool = True  # True: a breach is value > raise_threshold; False: value < it
    raise_threshold: float
    clear_threshold: float
    raise_count: int = 3
    raise_window: int = 5
    clear_count: int = 5
    clear_window: int = 5
    min_duration_s: float = 0.0
    severity: Severity = "warning"
    scope: Scope = "participant"
    min_interval_s: float = 60.0


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(name="high_rtt", metric="rtt_ms", raise_threshold=400, clear_threshold=300),
    AlertRule(name="high_jitter", metric="jitter_ms", raise_threshold=30, clear_threshold=30),
    AlertRule(name="packet_loss", metric="loss_pct", raise_threshold=1, clear_threshold=1),
    AlertRule(
        name="packet_loss_critical",
        metric="loss_pct",
        raise_threshold=5,
        clear_threshold=5,
        severity="critical",
    ),
    AlertRule(name="low_mos", metric="mos", above=False, raise_threshold=3.5, clear_threshold=3.5),
    AlertRule(
        name="low_mos_critical",
        metric="mos",
        above=False,
        raise_threshold=3.0,
        clear_threshold=3.0,
        min_duration_s=30,
        severity="critical",
    ),
    AlertRule(
        name="relay_tcp",
        metric="relay_tcp",
        raise_threshold=0.5,
        clear_threshold=0.5,
        raise_count=1,
        raise_window=1,
        clear_count=1,
        clear_window=1,
    ),
)


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the same from raise to clear; a new one for the next raise
    rule: str
    key: tuple[str, ...]  # (meeting,) or (meeting, participant)
    state: Literal["raised", "cleared"]
    severity: Severity
    value: float | None
    threshold: float
    at: float
    raised_at: float


class _RuleState:
    """One rule for one key: the last samples as bit masks, and the raised alert if any."""

    __slots__ = ("bad", "breach_since", "cleared_at", "good", "raised", "raises", "samples")

    def __init__(self) -> None:
        self.bad = 0  # bit i: sample i back breached the raise threshold
        self.good = 0  # bit i: sample i back was on the good side of the clear threshold
        self.samples = 0
        self.breach_since: float | None = None
        self.raised: AlertEvent | None = None
        self.raises = 0
        self.cleared_at: float | None = None


def _breaches(rule: AlertRule, value: float) -> bool:
    return value > rule.raise_threshold if rule.above else value < rule.raise_threshold


def _recent(state: _RuleState, rule: AlertRule, now: float) -> bool:
    """Whether a clear is recent enough that the anti-flapping interval still needs it."""
    return state.cleared_at is not None and now - state.cleared_at < rule.min_interval_s


def _ones(mask: int, window: int) -> int:
    return (mask & ((1 << window) - 1)).bit_count()


class AlertEngine:
    def __init__(self, rules: Iterable[AlertRule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)
        self._state: dict[tuple[str, ...], dict[str, _RuleState]] = {}
        self.suppressed = 0

    def observe(
        self, key: tuple[str, ...], scope: str, metrics: Mapping[str, float | None], now: float
    ) -> list[AlertEvent]:
        """One sample of ``metrics`` for ``key``; returns the alerts raised or cleared."""
        events: list[AlertEvent] = []
        for rule in self.rules:
            if rule.scope != scope:
                continue
            value = metrics.get(rule.metric)
            if value is None:
                continue
            states = self._state.get(key)
            state = states.get(rule.name) if states is not None else None
            if state is None:
                # A healthy sample with no recent breach changes nothing: keep no state, so a
                # healthy participant costs neither memory nor time here.
                if not _breaches(rule, value):
                    continue
                if states is None:
                    states = self._state[key] = {}
                state = states[rule.name] = _RuleState()
            event = self._sample(rule, state, key, value, now)
            if event is not None:
                events.append(event)
            elif state.raised is None and not state.bad and not _recent(state, rule, now):
                assert states is not None
                del states[rule.name]  # back to idle: nothing left to remember
                if not states:
                    del self._state[key]
        return events

    def _sample(
        self, rule: AlertRule, state: _RuleState, key: tuple[str, ...], value: float, now: float
    ) -> AlertEvent | None:
        breach = _breaches(rule, value)
        good = value < rule.clear_threshold if rule.above else value >= rule.clear_threshold
        if rule.above and rule.clear_threshold == rule.raise_threshold:
            good = value <= rule.clear_threshold
        state.bad = (state.bad << 1 | breach) & ((1 << rule.raise_window) - 1)
        state.good = (state.good << 1 | good) & 0xFFFFFFFF
        state.samples += 1
        if breach:
            if state.breach_since is None:
                state.breach_since = now
        else:
            state.breach_since = None
        if state.raised is None:
            if _ones(state.bad, rule.raise_window) < rule.raise_count:
                return None
            if rule.min_duration_s and (
                state.breach_since is None or now - state.breach_since < rule.min_duration_s
            ):
                return None
            if state.cleared_at is not None and now - state.cleared_at < rule.min_interval_s:
                self.suppressed += 1
                return None
            state.raises += 1
            state.raised = AlertEvent(
                id=f"{rule.name}:{'/'.join(key)}:{state.raises}",
                rule=rule.name,
                key=key,
                state="raised",
                severity=rule.severity,
                value=value,
                threshold=rule.raise_threshold,
                at=now,
                raised_at=now,
            )
            return state.raised
        if _ones(state.good, rule.clear_window) < rule.clear_count:
            return None
        return self._clear(rule, state, value, now)

    def _clear(
        self, rule: AlertRule, state: _RuleState, value: float | None, now: float
    ) -> AlertEvent:
        raised = state.raised
        assert raised is not None
        state.raised = None
        state.cleared_at = now
        state.bad = 0
        return msgspec.structs.replace(
            raised, state="cleared", value=value, threshold=rule.clear_threshold, at=now
        )

    def forget(self, key: tuple[str, ...], now: float) -> list[AlertEvent]:
        """``key`` is gone (left, ended): clear its raised alerts and drop its state."""
        states = self._state.pop(key, None)
        if not states:
            return []
        rules = {rule.name: rule for rule in self.rules}
        return [
            self._clear(rules[name], state, None, now)
            for name, state in states.items()
            if state.raised is not None
        ]

    def active(self) -> list[AlertEvent]:
        return [
            state.raised
            for states in self._state.values()
            for state in states.values()
            if state.raised is not None
        ]
