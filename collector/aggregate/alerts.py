"""Alert rules: raise on "N of the last M samples", clear with hysteresis, never storm.

The job: turn a stream of per-interval metrics (one ``observe`` per participant or meeting per
tick) into a short list of alert transitions — ``raised`` and, later, ``cleared`` with the same
id — that an operator can act on. What it must never do: read the clock, log, or touch storage or
sockets; time comes in as ``now`` and events go out as return values, so every behaviour here is
testable in virtual time and the engine can run inside the aggregation tick without awaiting.

How a rule decides, for one scope key (``(meeting,)`` or ``(meeting, participant)``):

* Each value of the rule's metric is one **sample**. ``None`` (not measured this interval) and NaN
  are no sample at all: they neither breach nor heal, and do not move the window.
* A sample **breaches** when it is beyond ``raise_threshold`` (``>`` with ``above=True``, ``<``
  with ``above=False``). The rule **raises** on a breaching sample once ``raise_count`` of the
  last ``raise_window`` samples breached — and, with ``min_duration_s``, the current unbroken run
  of breaching samples started at least that long ago ("MOS < 3.0 for 30 s").
* A sample is **good** when it is at or on the healthy side of ``clear_threshold`` (``<=`` with
  ``above=True``, ``>=`` with ``above=False``). A raised alert **clears** once ``clear_count`` of
  the last ``clear_window`` samples since the raise were good. The clear threshold is separate
  from the raise threshold, so a value between the two keeps a raised alert raised
  (hysteresis); with equal thresholds every sample is exactly one of breaching or good.
* **Anti-flapping**: after an alert of a rule and key clears, that rule may not raise again for
  that key before ``min_interval_s`` has passed. A raise it holds back is counted once in
  ``AlertEngine.suppressed`` (once per episode of the raise condition, not once per sample) and
  the next breaching sample after the interval, if the condition still holds, raises for real.
  A metric that flaps between bad and good therefore yields at most one raise and one clear per
  ``min_interval_s`` plus the time to raise and clear, whatever the sample rate.

Memory is small and fixed: per key, at most one ``_Watch`` per rule of its scope (two window bit
masks, a few floats), created only on the first breaching sample — a healthy participant costs
nothing — and dropped by ``forget``.

The defaults (``DEFAULT_RULES``) follow the "Alert defaults" table of the WebRTC quality
reference. Rows of that table that are not rules here, because they are computed elsewhere:

* bandwidth-limited encoder — not a threshold on one metric but a share of the interval; the
  quality score applies it as a penalty and names it as a reason (``cpu`` / ``bandwidth``).
* ICE disconnected / no media — silence is lifecycle, not a metric: the aggregation engine's
  silence timeout ends the participant (a ``left`` event with the reason), which ``forget`` turns
  into cleared alerts here.
* relay "info on relay" — the relay kind is participant state, reported as ``relay_changed``
  lifecycle events; only TURN over TCP/TLS is a warning, the ``relay_tcp`` rule below.
* relay cost budget — a per-meeting, per-day sum of relayed bytes priced at the configured rate;
  it needs daily totals from storage, which a per-sample engine does not have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
from msgspec import Meta

Severity = Literal["info", "warning", "critical"]
Scope = Literal["participant", "meeting"]
# What a rule can watch: the keys of the metrics the aggregation engine measures per sample.
Metric = Literal["rtt_ms", "jitter_ms", "loss_pct", "mos", "relay_tcp"]

METRICS: Final[tuple[Metric, ...]] = get_args(Metric)

SCOPES: Final[tuple[Scope, ...]] = ("participant", "meeting")
MAX_WINDOW: Final = 64  # samples; windows are bit masks, so this bounds memory per rule and key

_Window = Annotated[int, Meta(ge=1, le=MAX_WINDOW)]
_Seconds = Annotated[float, Meta(ge=0.0, le=86_400.0)]
_Name = Annotated[str, Meta(min_length=1, max_length=64)]


class AlertRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, gc=False):
    """One alert: which metric, which way is bad, when to raise, when to clear, how loud.

    Built in code for the defaults and decoded from the config file for the rest, so invalid
    combinations are refused here (as a ``ValueError``, which ``msgspec.convert`` reports as a
    ``ValidationError`` with the path) rather than misbehaving at run time.
    """

    name: _Name  # unique among the rules in force, e.g. "high_rtt"
    metric: Metric  # one of METRICS: a typo is refused, never a rule that cannot fire
    above: bool = True  # True: a breach is value > raise_threshold; False: value < it
    raise_threshold: float
    clear_threshold: float  # hysteresis: healthy is <= this (above) or >= this (below)
    raise_count: _Window = 3
    raise_window: _Window = 5
    clear_count: _Window = 5
    clear_window: _Window = 5
    min_duration_s: _Seconds = 0.0  # the breach must also have lasted this long to raise
    severity: Severity = "warning"
    scope: Scope = "participant"
    min_interval_s: _Seconds = 60.0  # after a clear, no new raise of this rule and key before

    def __post_init__(self) -> None:
        if self.metric not in METRICS:  # a rule built in code; decoding checked the Literal
            raise ValueError(f"unknown metric {self.metric!r}; expected one of: {METRICS}")
        if not (math.isfinite(self.raise_threshold) and math.isfinite(self.clear_threshold)):
            raise ValueError("raise_threshold and clear_threshold must be finite numbers")
        if self.raise_count > self.raise_window:
            raise ValueError("raise_count must not exceed raise_window")
        if self.clear_count > self.clear_window:
            raise ValueError("clear_count must not exceed clear_window")
        # An inverted pair would make one value both a breach and healthy: raise/clear ping-pong.
        if self.above and self.clear_threshold > self.raise_threshold:
            raise ValueError("clear_threshold must not be above raise_threshold when above=true")
        if not self.above and self.clear_threshold < self.raise_threshold:
            raise ValueError("clear_threshold must not be below raise_threshold when above=false")


DEFAULT_RULES: Final[tuple[AlertRule, ...]] = (
    # > 400 ms in 3 of 5; clear < 300 ms in 5 of 5.
    AlertRule(name="high_rtt", metric="rtt_ms", raise_threshold=400.0, clear_threshold=300.0),
    # > 30 ms in 3 of 5; clear at or below 30 ms in 5 of 5.
    AlertRule(name="high_jitter", metric="jitter_ms", raise_threshold=30.0, clear_threshold=30.0),
    # > 1 % in 3 of 5 (warning); clear at or below in 5 of 5.
    AlertRule(name="packet_loss", metric="loss_pct", raise_threshold=1.0, clear_threshold=1.0),
    # > 5 % in 3 of 5 (critical); clear at or below in 5 of 5.
    AlertRule(
        name="packet_loss_critical",
        metric="loss_pct",
        raise_threshold=5.0,
        clear_threshold=5.0,
        severity="critical",
    ),
    # < 3.5 in 3 of 5 (warning); clear at or above 3.5 in 5 of 5.
    AlertRule(name="low_mos", metric="mos", above=False, raise_threshold=3.5, clear_threshold=3.5),
    # < 3.0 for 30 s (critical); clear at or above 3.0 in 5 of 5.
    AlertRule(
        name="low_mos_critical",
        metric="mos",
        above=False,
        raise_threshold=3.0,
        clear_threshold=3.0,
        min_duration_s=30.0,
        severity="critical",
    ),
    # relay over TURN/TCP or TURN/TLS (metric 1.0, else 0.0): warning at once, clear at once.
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


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A transition of one alert instance; the raise and its clear share ``id``."""

    id: str  # "<rule>:<key joined by />:<n>@<raised_at in ms>", n counting raises of rule+key
    rule: str
    key: tuple[str, ...]  # (meeting,) or (meeting, participant)
    state: Literal["raised", "cleared"]
    severity: Severity
    value: float | None  # the sample that caused the transition; None when the key went away
    threshold: float  # raise_threshold on a raise, clear_threshold on a clear
    at: float
    raised_at: float


class _Watch:
    """One rule watching one key: the recent samples as bit masks, and the raised alert if any.

    Bit 0 is the newest sample; masks are cut to the rule's window on every shift.
    """

    __slots__ = ("bad", "breach_since", "cleared_at", "good", "held", "raised", "raises")

    def __init__(self) -> None:
        self.bad = 0  # breached raise_threshold; last raise_window samples
        self.good = 0  # healthy side of clear_threshold; last clear_window samples since raise
        self.breach_since: float | None = None  # start of the current unbroken breach run
        self.raised: AlertEvent | None = None
        self.raises = 0
        self.cleared_at: float | None = None
        self.held = False  # a raise is being suppressed; count it once, not once per sample


def _breaches(rule: AlertRule, value: float) -> bool:
    return value > rule.raise_threshold if rule.above else value < rule.raise_threshold


def _healthy(rule: AlertRule, value: float) -> bool:
    return value <= rule.clear_threshold if rule.above else value >= rule.clear_threshold


class AlertEngine:
    """Evaluates the rules for every key it is shown; returns transitions, keeps no history.

    ``suppressed`` counts raises held back by a rule's ``min_interval_s`` (anti-flapping).
    """

    def __init__(self, rules: Sequence[AlertRule] = DEFAULT_RULES) -> None:
        self._use(rules)
        self._watches: dict[tuple[str, ...], dict[str, _Watch]] = {}
        # Keys by their first element (the meeting), so forgetting a key finds the keys it
        # prefixes without scanning every key: ``forget`` runs on every participant leave.
        self._keys_by_meeting: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        self.suppressed = 0

    def _use(self, rules: Sequence[AlertRule]) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            # State is kept per rule name; two rules of one name would share (and corrupt) it.
            raise ValueError(f"alert rule names must be unique: {', '.join(duplicates)}")
        self.rules: tuple[AlertRule, ...] = tuple(rules)
        self._by_scope: dict[str, tuple[AlertRule, ...]] = {
            scope: tuple(rule for rule in self.rules if rule.scope == scope) for scope in SCOPES
        }

    def has_rules(self, scope: Scope) -> bool:
        """Whether any rule in force watches keys of ``scope``."""
        return bool(self._by_scope[scope])

    def set_rules(self, rules: Sequence[AlertRule], now: float) -> list[AlertEvent]:
        """Put ``rules`` in force (a reload); the clears of alerts whose rule went away.

        A rule that keeps its name, metric and scope keeps what it has seen and its raised
        alerts: new thresholds and windows apply from the next sample. A rule that went away,
        or now watches another metric or scope, clears its raised alerts and forgets."""
        old = {rule.name: rule for rule in self.rules}
        self._use(rules)
        kept = {
            rule.name
            for rule in self.rules
            if (previous := old.get(rule.name)) is not None
            and (previous.metric, previous.scope) == (rule.metric, rule.scope)
        }
        events: list[AlertEvent] = []
        for watches in self._watches.values():
            for name in [name for name in watches if name not in kept]:
                watch = watches.pop(name)
                if watch.raised is not None:
                    events.append(self._clear(old[name].clear_threshold, watch, None, now))
        return events

    def observe(
        self, key: tuple[str, ...], scope: str, metrics: Mapping[str, float | None], now: float
    ) -> list[AlertEvent]:
        """One sample of ``metrics`` for ``key`` under the rules of ``scope``; the transitions.

        A metric that is missing, ``None`` or NaN is no sample for its rules this time.
        """
        rules = self._by_scope.get(scope)
        if rules is None:
            raise ValueError(f"unknown alert scope {scope!r}; expected one of {SCOPES}")
        events: list[AlertEvent] = []
        watches = self._watches.get(key)
        for rule in rules:
            value = metrics.get(rule.metric)
            if value is None or math.isnan(value):
                continue
            watch = watches.get(rule.name) if watches is not None else None
            if watch is None:
                # Until its first breach a rule has nothing to remember for this key.
                if not _breaches(rule, value):
                    continue
                if watches is None:
                    watches = self._watches[key] = {}
                    self._keys_by_meeting.setdefault(key[:1], set()).add(key)
                watch = watches[rule.name] = _Watch()
            event = self._sample(rule, watch, key, value, now)
            if event is not None:
                events.append(event)
        return events

    def forget(self, key: tuple[str, ...], now: float) -> list[AlertEvent]:
        """``key`` is gone (left, timed out, meeting ended): clear its raised alerts, drop it.

        Forgetting a meeting ``(meeting,)`` also forgets its participants' keys, so a caller
        that only ends the meeting leaks no state.
        """
        candidates = (
            self._keys_by_meeting.get(key[:1], set())
            if key
            else {k for keys in self._keys_by_meeting.values() for k in keys}
        )
        gone = sorted(k for k in candidates if k[: len(key)] == key)
        by_name = {rule.name: rule for rule in self.rules}
        events: list[AlertEvent] = []
        for k in gone:
            siblings = self._keys_by_meeting[k[:1]]
            siblings.discard(k)
            if not siblings:
                del self._keys_by_meeting[k[:1]]
            for name, watch in self._watches.pop(k).items():
                if watch.raised is not None:
                    events.append(self._clear(by_name[name].clear_threshold, watch, None, now))
        return events

    def state(self) -> list[list[Any]]:
        """What a checkpoint keeps: every watch, with its key, its rule's name, metric, scope
        and clear threshold (so that a restart under other rules can clear what they no
        longer watch), in plain values."""
        by_name = {rule.name: rule for rule in self.rules}
        return [
            [
                list(key),
                name,
                by_name[name].metric,
                by_name[name].scope,
                by_name[name].clear_threshold,
                watch.bad,
                watch.good,
                watch.breach_since,
                msgspec.to_builtins(watch.raised) if watch.raised is not None else None,
                watch.raises,
                watch.cleared_at,
                watch.held,
            ]
            for key, watches in self._watches.items()
            for name, watch in watches.items()
        ]

    def restore(self, state: Sequence[Sequence[Any]], now: float) -> list[AlertEvent]:
        """Load ``state`` (from ``state()``) into this engine, which watches nothing yet: raised
        alerts stay raised under their ids, and clear as if the daemon had never stopped. The
        clears of raised alerts whose rule is gone, or now watches another metric or scope
        (as ``set_rules``)."""
        by_name = {rule.name: rule for rule in self.rules}
        events: list[AlertEvent] = []
        for entry in state:
            key_list, name, metric, scope, clear_threshold, *fields = entry
            key = tuple(key_list)
            watch = _Watch()
            (
                watch.bad,
                watch.good,
                watch.breach_since,
                raised,
                watch.raises,
                watch.cleared_at,
                watch.held,
            ) = fields
            watch.raised = msgspec.convert(raised, AlertEvent) if raised is not None else None
            rule = by_name.get(name)
            if rule is None or (rule.metric, rule.scope) != (metric, scope):
                if watch.raised is not None:
                    events.append(self._clear(clear_threshold, watch, None, now))
                continue
            self._watches.setdefault(key, {})[name] = watch
            self._keys_by_meeting.setdefault(key[:1], set()).add(key)
        return events

    def active(self) -> list[AlertEvent]:
        """The alerts raised and not yet cleared, as their raise events."""
        return [
            watch.raised
            for watches in self._watches.values()
            for watch in watches.values()
            if watch.raised is not None
        ]

    def _sample(
        self, rule: AlertRule, watch: _Watch, key: tuple[str, ...], value: float, now: float
    ) -> AlertEvent | None:
        breach = _breaches(rule, value)
        watch.bad = ((watch.bad << 1) | breach) & ((1 << rule.raise_window) - 1)
        if not breach:
            watch.breach_since = None
        elif watch.breach_since is None:
            watch.breach_since = now

        if watch.raised is not None:
            healthy = _healthy(rule, value)
            watch.good = ((watch.good << 1) | healthy) & ((1 << rule.clear_window) - 1)
            if watch.good.bit_count() >= rule.clear_count:
                return self._clear(rule.clear_threshold, watch, value, now)
            return None

        if not (
            breach
            and watch.bad.bit_count() >= rule.raise_count
            and watch.breach_since is not None
            and now - watch.breach_since >= rule.min_duration_s
        ):
            watch.held = False
            return None
        if watch.cleared_at is not None and now - watch.cleared_at < rule.min_interval_s:
            if not watch.held:
                self.suppressed += 1
                watch.held = True
            return None

        watch.raises += 1
        watch.held = False
        watch.good = 0  # clearing counts healthy samples after the raise only
        watch.raised = AlertEvent(
            id=f"{rule.name}:{'/'.join(key)}:{watch.raises}@{round(now * 1000)}",
            rule=rule.name,
            key=key,
            state="raised",
            severity=rule.severity,
            value=value,
            threshold=rule.raise_threshold,
            at=now,
            raised_at=now,
        )
        return watch.raised

    @staticmethod
    def _clear(
        clear_threshold: float, watch: _Watch, value: float | None, now: float
    ) -> AlertEvent:
        raised = watch.raised
        assert raised is not None
        watch.raised = None
        watch.cleared_at = now
        # The next raise needs a fresh N of M: breaches from before the clear do not count.
        watch.bad = 0
        watch.breach_since = None
        return msgspec.structs.replace(
            raised, state="cleared", value=value, threshold=clear_threshold, at=now
        )
