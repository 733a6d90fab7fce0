"""Parts: topic entities that several daemons each hold a part of, merged into one.

A load balancer hashes sources, not meetings: with several daemons on one channel, one meeting's
participants (one route's server instances, even one participant's connections) may reach
different daemons. Each daemon publishes its own *part* of every entity it has: the fields a
subscriber sees, computed from what that daemon aggregates, plus hidden fields (``_relayed``,
``_hist``: names that start with ``_``) that merging needs. The channel keeps every daemon's
part; every view of an entity (a snapshot, a delta, ``/api``) is the ``merge`` of its parts,
field by field:

* summed: counts and volumes (``participants``, ``alerts``, ``connections``, ``relayed_bytes``,
  ``relay_cost``) and rates (``up_bps``, ``down_bps``, ``bwe_bps``, ``*_per_s``; rounded again
  to 3 significant digits), lists element by element (``status_per_s``, ``_hist``, a stream's
  ``bytes``: each daemon counted its own samples of it);
* the earliest: ``started_at``, ``joined_at``; the highest: a stream's ``q`` (its newest
  sample); the worst: the lowest ``quality``, ``mos`` and frame rates, the highest loss,
  ``rtt_ms`` and ``jitter_ms``, the worst ``level`` and
  ``relay``, the resolution with the fewest pixels (width and height of one part), and
  ``remote_relayed`` if any part's; ``reasons``: every part's, in their fixed order;
* derived from the merged fields: ``relay_share`` (relayed participants, ``_relayed``, over
  ``participants``) and ``p50_ms``/``p95_ms``/``p99_ms`` (from the summed latency histogram
  ``_hist``: exact, never an average of percentiles);
* anything else (names, ``kind``, ``turn_server``…): the first part's value that is not null,
  the parts taken in the order of their daemons' ids.

An entity with one part is that part without its hidden fields. A daemon that dies leaves its
parts until they are reaped; their removal changes the merged entities like any other change.

``Mirror`` keeps one topic's parts and merged entities and turns a change of parts into the
change subscribers see. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from collector.aggregate import quality as q
from collector.aggregate.percentiles import latency_summary
from collector.fanout.hub import Change
from collector.fanout.hub import merge as merge_deltas
from protocol.subscribe import Delta, Entities

Fields = dict[str, Any]
# A part's id in a channel that stores the parts of several daemons (Redis): the entity's id,
# then the daemon's. Entity ids never hold a tab (§4.1: no whitespace in identifiers; the
# ``http`` topic's ids join identifiers with spaces).
SEPARATOR: Final = "\t"

_SUMMED: Final = frozenset({"participants", "alerts", "connections", "relayed_bytes", "_relayed"})
_SUMMED_RATES: Final = frozenset(
    {"up_bps", "down_bps", "bwe_bps", "requests_per_s", "bytes_in_per_s", "bytes_out_per_s"}
)
_SUMMED_LISTS: Final = frozenset({"_hist", "bytes"})
_SUMMED_RATE_LISTS: Final = frozenset({"status_per_s"})
_LOWEST: Final = frozenset({"started_at", "joined_at", "quality", "mos", "fps_in", "fps_out"})
_RESOLUTIONS: Final = (("width_in", "height_in"), ("width_out", "height_out"))
_HIGHEST: Final = frozenset(
    {"loss_down_pct", "loss_up_pct", "loss_pct", "rtt_ms", "jitter_ms", "q"}
)
_LEVEL_RANK: Final = {name: i for i, name in enumerate(q.LEVELS)}  # higher: worse
RELAY_RANK: Final = {"direct": 0, "turn-udp": 1, "turn-tcp": 2, "turn-tls": 3}
_PERCENTILES: Final = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))


def part_id(entity: str, daemon: str) -> str:
    return f"{entity}{SEPARATOR}{daemon}"


def split_part(raw: str) -> tuple[str, str]:
    """(entity, daemon) of a part id; an id without a daemon is a part of daemon ``""``."""
    entity, _, daemon = raw.partition(SEPARATOR)
    return entity, daemon


def rate(value: float | None) -> float | None:
    """A rate to 3 significant digits."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    return round(value, 2 - math.floor(math.log10(abs(value))))


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def percentile_fields(histogram: Sequence[float]) -> Fields:
    """``p50_ms``, ``p95_ms`` and ``p99_ms`` of a latency histogram (§4.1), to 0.1 ms."""
    summary = latency_summary([int(c) for c in histogram])
    return {name: rounded(getattr(summary, attr), 1) for name, attr in _PERCENTILES}


def visible(part: Mapping[str, Any]) -> Fields:
    """A part as subscribers see it: without its hidden fields."""
    return {k: v for k, v in part.items() if not k.startswith("_")}


def merge(parts: Sequence[Mapping[str, Any]]) -> Fields:
    """One entity from its parts (in their daemons' order), as the module docstring says."""
    if len(parts) == 1:
        return visible(parts[0])
    names: dict[str, None] = {}
    for part in parts:
        names.update(dict.fromkeys(part))
    merged: Fields = {}
    for name in names:
        values = [v for v in (p.get(name) for p in parts) if v is not None]
        merged[name] = _combine(name, values)
    if "relay_share" in merged and "_relayed" in merged:
        count = merged.get("participants") or 0
        merged["relay_share"] = round(merged["_relayed"] / count, 2) if count else 0.0
    if "_hist" in merged and merged["_hist"] is not None:
        merged.update(percentile_fields(merged["_hist"]))
    for width, height in _RESOLUTIONS:
        known = [
            (p[width] * p[height], p[width], p[height])
            for p in parts
            if p.get(width) is not None and p.get(height) is not None
        ]
        if known:
            _, merged[width], merged[height] = min(known)
    return visible(merged)


def _combine(name: str, values: list[Any]) -> Any:
    if not values:
        return None
    if name in _SUMMED:
        return sum(values)
    if name in _SUMMED_RATES:
        return rate(sum(values))
    if name == "relay_cost":
        return round(sum(values), 4)
    if name in _SUMMED_LISTS or name in _SUMMED_RATE_LISTS:
        columns = [sum(column) for column in zip(*values, strict=False)]
        return [rate(c) for c in columns] if name in _SUMMED_RATE_LISTS else columns
    if name in _LOWEST:
        return min(values)
    if name in _HIGHEST:
        return max(values)
    if name == "level":
        return max(values, key=lambda level: _LEVEL_RANK.get(level, -1))
    if name == "relay":
        return max(values, key=lambda relay: RELAY_RANK.get(relay, 0))
    if name == "remote_relayed":
        return any(values)
    if name == "reasons":
        found = {reason for reasons in values for reason in reasons}
        return [r for r in q.REASONS if r in found] + sorted(found - set(q.REASONS))
    return values[0]


def shown(change: Change) -> Change:
    """A change of the parts of a daemon that is alone in its channel (in process, or cut off
    from Redis) as subscribers see it: each entity is its one part, without hidden fields."""
    changed: Entities = {}
    for entity, fields in change.changed.items():
        seen = visible(fields)
        if seen:
            changed[entity] = seen
    return Change(change.topic, changed, change.removed, events=change.events)


def fields_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> Fields:
    """The fields of ``after`` that differ from ``before``; a field that went away as None."""
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    changed.update(dict.fromkeys(k for k in before if k not in after))
    return changed


class Mirror:
    """One topic's parts by entity and daemon, and the merged entities, at ``seq``."""

    __slots__ = ("entities", "parts", "seq")

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self.parts: dict[str, dict[str, Fields]] = {}
        self.entities: Entities = {}

    @classmethod
    def of(cls, parts: Iterable[tuple[str, str, Mapping[str, Any]]], seq: int = 0) -> Mirror:
        """A mirror of (entity, daemon, fields) parts."""
        mirror = cls(seq)
        mirror.apply([(entity, daemon, dict(f)) for entity, daemon, f in parts], [])
        return mirror

    def apply(
        self,
        changed: Iterable[tuple[str, str, Mapping[str, Any]]],
        removed: Iterable[tuple[str, str]],
    ) -> tuple[Entities, list[str]]:
        """Remove parts, then set fields of parts (a new part with all its fields); returns the
        merged entities' change: the changed fields of each changed entity (a new one with all
        its fields) and the ids of entities that have no part left."""
        touched: dict[str, None] = {}
        for entity, daemon in removed:
            of_entity = self.parts.get(entity)
            if of_entity is not None:
                of_entity.pop(daemon, None)
            touched[entity] = None
        for entity, daemon, fields in changed:
            of_entity = self.parts.setdefault(entity, {})
            part = of_entity.get(daemon)
            if part is None:
                of_entity[daemon] = dict(fields)
            else:
                part.update(fields)
            touched[entity] = None
        out_changed: Entities = {}
        out_removed: list[str] = []
        for entity in touched:
            of_entity = self.parts.get(entity)
            before = self.entities.get(entity)
            if not of_entity:
                self.parts.pop(entity, None)
                if before is not None:
                    del self.entities[entity]
                    out_removed.append(entity)
                continue
            after = merge([of_entity[d] for d in sorted(of_entity)])
            self.entities[entity] = after
            if before is None:
                out_changed[entity] = after
            else:
                diff = fields_diff(before, after)
                if diff:
                    out_changed[entity] = diff
        return out_changed, out_removed

    def apply_delta(self, delta: Delta) -> Delta | None:
        """A delta of part ids (``part_id``) as the delta of merged entities it makes; None
        when it does not follow ``seq`` (the mirror must be loaded again)."""
        if delta.prev != self.seq:
            return None
        changed, removed = self.apply(
            [(*split_part(raw), fields) for raw, fields in delta.changed.items()],
            [split_part(raw) for raw in delta.removed],
        )
        self.seq = delta.seq
        return msgspec.structs.replace(delta, changed=changed, removed=removed)


def catch_up(deltas: Sequence[Delta], now: Mirror) -> list[Delta]:
    """What a subscriber holding the merged entities of ``deltas[0].prev`` needs to reach
    those of ``now`` (the parts at ``deltas[-1].seq``); ``deltas`` are the consecutive deltas of
    part ids in between.

    Where every entity they touch had, all along, at most one part (from one daemon), each
    delta converts alone (its part ids made entity ids, hidden fields dropped): exactly the
    changes as they were published. Otherwise one delta from ``prev`` to the last ``seq``
    removes each entity touched by a daemon whose part is not its only one, and sets it again
    with all its merged fields (removed, then created anew: nothing of the old one lingers)."""
    daemons: dict[str, set[str]] = {}
    for delta in deltas:
        for raw in [*delta.changed, *delta.removed]:
            entity, daemon = split_part(raw)
            daemons.setdefault(entity, set()).add(daemon)
    complex_ = {
        entity
        for entity, touched in daemons.items()
        if len(touched | set(now.parts.get(entity, ()))) > 1
    }
    converted = [_simple(delta, complex_) for delta in deltas]
    if not complex_:
        return converted
    merged = merge_deltas(converted)
    changed = dict(merged.changed)
    changed.update({e: dict(now.entities[e]) for e in complex_ if e in now.entities})
    removed = sorted(set(merged.removed) | complex_)
    return [msgspec.structs.replace(merged, changed=changed, removed=removed)]


def _simple(delta: Delta, leave_out: set[str]) -> Delta:
    """``delta`` with entity ids, without hidden fields, without the entities ``leave_out``."""
    changed: Entities = {}
    for raw, fields in delta.changed.items():
        entity = split_part(raw)[0]
        if entity not in leave_out:
            shown = visible(fields)
            if shown:
                changed[entity] = shown
    removed = [e for e in (split_part(raw)[0] for raw in delta.removed) if e not in leave_out]
    return msgspec.structs.replace(delta, changed=changed, removed=removed)
