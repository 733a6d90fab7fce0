"""The hub: topic states, their diffs and a bounded log of deltas. Pure: no I/O, no clock.

A topic's state is a map of entities (id → fields). ``diff`` compares the state published last
with the current one and yields a ``Change``: the changed entities with only their changed
fields, and the removed ids. ``DeltaLog`` is the in-process channel's memory: per topic the
current state, a sequence number under the daemon's epoch and the last deltas, so that a
subscriber who reconnects with (epoch, seq) gets what it missed (``since``) or, once the log has
moved past it, a snapshot. ``merge`` folds consecutive deltas into one (a subscriber that was
behind receives one delta per topic, not a backlog).

Never awaits, never reads the clock: the publisher passes the time.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.subscribe import Delta, Entities, Snapshot, apply


@dataclass(slots=True)
class Change:
    """What one publish tick changed in one topic (before a sequence number is assigned)."""

    topic: str
    changed: Entities
    removed: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # alert transitions
    values: Entities = field(default_factory=dict)  # every field of each changed entity

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed or self.events)


def change(topic: str, old: Entities, new: Entities) -> Change:
    """The ``Change`` of ``topic`` from ``old`` to ``new``."""
    changed, removed = diff(old, new)
    return Change(topic, changed, removed, values={e: new[e] for e in changed})


def diff(old: Entities, new: Entities) -> tuple[Entities, list[str]]:
    """The entities of ``new`` that differ from ``old`` with only their differing fields
    (a field that went away is sent as None), and the ids that ``new`` no longer has."""
    changed: Entities = {}
    for entity, fields in new.items():
        before = old.get(entity)
        if before is None:
            changed[entity] = fields
        elif before != fields:
            delta = {k: v for k, v in fields.items() if before.get(k, _MISSING) != v}
            delta.update(dict.fromkeys(before.keys() - fields.keys()))
            changed[entity] = delta
    removed = [entity for entity in old if entity not in new]
    return changed, removed


_MISSING = object()


def merge(deltas: Sequence[Delta]) -> Delta:
    """One delta equivalent to applying ``deltas`` (consecutive, same topic) in order."""
    if len(deltas) == 1:
        return deltas[0]
    changed: Entities = {}
    removed: set[str] = set()
    alerts: list[dict[str, Any]] = []
    for delta in deltas:
        alerts += delta.alerts
        for entity in delta.removed:
            changed.pop(entity, None)
            removed.add(entity)
        for entity, fields in delta.changed.items():
            current = changed.get(entity)
            if current is None:
                changed[entity] = dict(fields)
            else:
                current.update(fields)
    first, last = deltas[0], deltas[-1]
    # An entity removed and then created again stays in both: the client removes it first,
    # then sets the new entity's fields, so no field of the old one lingers.
    return Delta(
        topic=last.topic,
        epoch=last.epoch,
        seq=last.seq,
        prev=first.prev,
        at=last.at,
        changed=changed,
        removed=sorted(removed),
        alerts=alerts,
    )


@dataclass(slots=True)
class TopicLog:
    state: Entities = field(default_factory=dict)
    seq: int = 0
    at: float = 0.0
    deltas: deque[Delta] = field(default_factory=deque)
    snapshot: Snapshot | None = None  # of this seq, built on first ask, shared


class DeltaLog:
    """Per topic: the current state, its sequence number and the last ``history`` deltas."""

    def __init__(self, epoch: str, history: int = 120, remember: int = 100_000) -> None:
        self.epoch = epoch
        self.history = history
        self.topics: dict[str, TopicLog] = {}
        # The last seq of forgotten topics (at most ``remember``): a meeting id used again goes
        # on from there, so a subscriber still holding that topic never sees a seq go back.
        self.forgotten: OrderedDict[str, int] = OrderedDict()
        self.remember = remember

    def append(self, change: Change, at: float) -> Delta:
        """Record ``change`` as the topic's next delta and return it."""
        log = self.topics.get(change.topic)
        if log is None:
            log = self.topics[change.topic] = TopicLog(
                seq=self.forgotten.pop(change.topic, 0), deltas=deque(maxlen=self.history)
            )
        delta = Delta(
            topic=change.topic,
            epoch=self.epoch,
            seq=log.seq + 1,
            prev=log.seq,
            at=at,
            changed=change.changed,
            removed=change.removed,
            alerts=change.events,
        )
        apply(log.state, delta)
        log.seq, log.at, log.snapshot = delta.seq, at, None
        log.deltas.append(delta)
        return delta

    def snapshot(self, topic: str) -> Snapshot:
        """The topic's state now. Built once per sequence number and shared by everyone who
        asks until the next delta (a thousand dashboards reconnecting at once cost one copy):
        the caller must not change it."""
        log = self.topics.get(topic)
        if log is None:
            seq = self.forgotten.get(topic, 0)
            return Snapshot(topic=topic, epoch=self.epoch, seq=seq, at=0.0, entities={})
        if log.snapshot is None:
            log.snapshot = Snapshot(
                topic=topic,
                epoch=self.epoch,
                seq=log.seq,
                at=log.at,
                entities={entity: dict(fields) for entity, fields in log.state.items()},
            )
        return log.snapshot

    def since(self, topic: str, epoch: str | None, seq: int | None) -> list[Delta] | None:
        """The deltas after ``seq`` (empty: nothing missed), or None when they are no longer
        held, the epoch is another one or ``seq`` is in the future: send a snapshot."""
        if epoch != self.epoch or seq is None:
            return None
        log = self.topics.get(topic) or TopicLog(seq=self.forgotten.get(topic, 0))
        if seq == log.seq:
            return []
        if seq > log.seq or not log.deltas or log.deltas[0].prev > seq:
            return None
        return [delta for delta in log.deltas if delta.seq > seq]

    def forget(self, topics: Iterable[str]) -> None:
        """Drop topics that hold no entity any more (a meeting that ended); remember their
        last seq."""
        for topic in topics:
            log = self.topics.get(topic)
            if log is not None and not log.state:
                del self.topics[topic]
                self.forgotten[topic] = log.seq
                if len(self.forgotten) > self.remember:
                    self.forgotten.popitem(last=False)
