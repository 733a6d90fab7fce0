"""Search, filter, sort and page the live meetings for ``GET /api/meetings``, and count them
per quality level for ``GET /api/quality`` (docs/API.md).

Both read the merged summaries of the ``meetings`` topic (``{<id>: {"participants", "level",
"relay_share", "alerts", ...}}``) and nothing else, so they answer alike on every daemon of one
channel. Pure: ``parse_query`` turns the request's parameters into a ``MeetingQuery`` or raises
``ValueError`` with the message a 400 carries; ``select`` and ``distribution`` compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from collector.aggregate.quality import LEVELS

UNKNOWN: Final = "unknown"  # no quality yet: before a meeting's first tick
QUERY_LEVELS: Final = (*LEVELS, UNKNOWN)
PARAMETERS: Final = frozenset({"q", "level", "relay", "alerts", "sort", "limit", "offset"})
# Numeric summary fields a list can be sorted by; "id" and "quality" are handled apart.
SORT_FIELDS: Final = (
    "participants",
    "up_bps",
    "down_bps",
    "relay_share",
    "relay_cost",
    "alerts",
    "started_at",
)
SORTS: Final = ("id", "quality", *SORT_FIELDS)
MAX_LIMIT: Final = 10_000
_BOOLEANS: Final = {"true": True, "false": False}

Summary = Mapping[str, Any]


@dataclass(frozen=True)
class MeetingQuery:
    q: str | None = None  # substring of the meeting id
    levels: frozenset[str] | None = None  # worst quality level among these
    relay: bool | None = None  # any participant relayed through TURN
    alerts: bool | None = None  # any open alert
    sort: str = "id"
    descending: bool = False
    limit: int | None = None  # None: every match
    offset: int = 0


def parse_query(query: Mapping[str, str]) -> MeetingQuery:
    unknown = sorted(set(query) - PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameter: {', '.join(unknown)}")
    levels = None
    if "level" in query:
        levels = frozenset(query["level"].split(","))
        bad = sorted(levels - set(QUERY_LEVELS))
        if bad:
            raise ValueError(f"level {','.join(bad)!r}: each one of {', '.join(QUERY_LEVELS)}")
    sort = query.get("sort", "id")
    descending = sort.startswith("-")
    if sort.removeprefix("-") not in SORTS:
        raise ValueError(f"sort {sort!r}: one of {', '.join(SORTS)}, '-' before it for descending")
    limit = _integer(query, "limit", 1, MAX_LIMIT)
    return MeetingQuery(
        q=query.get("q") or None,
        levels=levels,
        relay=_boolean(query, "relay"),
        alerts=_boolean(query, "alerts"),
        sort=sort.removeprefix("-"),
        descending=descending,
        limit=limit,
        offset=_integer(query, "offset", 0, None) or 0,
    )


def _boolean(query: Mapping[str, str], name: str) -> bool | None:
    if name not in query:
        return None
    value = _BOOLEANS.get(query[name])
    if value is None:
        raise ValueError(f"{name} {query[name]!r}: true or false")
    return value


def _integer(query: Mapping[str, str], name: str, low: int, high: int | None) -> int | None:
    if name not in query:
        return None
    text = query[name]
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        top = f" to {high:,}".replace(",", "_") if high is not None else " or more"
        raise ValueError(f"{name} {text!r}: a whole number from {low}{top}")
    return int(text)


def level_of(summary: Summary) -> str:
    level = summary.get("level")
    return level if isinstance(level, str) else UNKNOWN


def matches(meeting: str, summary: Summary, query: MeetingQuery) -> bool:
    if query.q is not None and query.q not in meeting:
        return False
    if query.levels is not None and level_of(summary) not in query.levels:
        return False
    if query.relay is not None and (summary.get("relay_share", 0) > 0) != query.relay:
        return False
    return query.alerts is None or (summary.get("alerts", 0) > 0) == query.alerts


def _value(summary: Summary, sort: str) -> float | None:
    value = summary.get(sort)
    return value if isinstance(value, int | float) else None


def select(
    meetings: Mapping[str, Summary], query: MeetingQuery
) -> tuple[int, list[tuple[str, Summary]]]:
    """The matches' count and the page of them ``query`` asks for, in its order: by the sort
    field, ties by id; meetings without the value (no quality yet) last in either direction."""
    found = sorted(
        ((m, s) for m, s in meetings.items() if matches(m, s, query)),
        key=lambda item: item[0],
        reverse=query.descending and query.sort == "id",
    )
    if query.sort != "id":
        known = [item for item in found if _value(item[1], query.sort) is not None]
        known.sort(key=lambda item: _value(item[1], query.sort) or 0.0, reverse=query.descending)
        found = known + [item for item in found if _value(item[1], query.sort) is None]
    end = None if query.limit is None else query.offset + query.limit
    return len(found), found[query.offset : end]


def distribution(meetings: Mapping[str, Summary]) -> dict[str, dict[str, int]]:
    """Per quality level (``unknown`` too): the meetings whose worst participant is at it, and
    the participants of those meetings."""
    counts = {level: 0 for level in QUERY_LEVELS}
    people = dict(counts)
    for summary in meetings.values():
        level = level_of(summary)
        counts[level] += 1
        people[level] += int(summary.get("participants", 0))
    return {"meetings": counts, "participants": people}
