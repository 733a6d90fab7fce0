"""The alerts for ``GET /api/alerts`` (docs/API.md): the open ones as the ``alerts`` topic
holds them, and the recent ones (open or cleared) as the ``alerts`` table stores them.

No second copy of either: the topic is the live engine's open alerts, the table is what
``bwmon export alerts`` reads. Both come out in one shape, newest raise first:
``{"id", "rule", "severity", "meeting", "participant", "raised_at", "cleared_at", "value",
"threshold"}`` (``participant`` null for a meeting-wide rule; ``value`` the sample that raised
it, ``threshold`` the rule's raise threshold).

Reading the table keeps at most ``limit`` rows in memory however many were raised since
``since`` (a bounded heap over the pages ``export_rows`` streams).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from collector.storage.export import Readable, Selection, export_rows, parse_time
from collector.storage.schema import ALERTS

PARAMETERS: Final = frozenset({"since", "limit", "meeting"})
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1_000
DEFAULT_SPAN_S: Final = 86_400.0  # recent: raised in the last day unless ``since`` says

Alert = dict[str, Any]


@dataclass(frozen=True)
class AlertQuery:
    since: float
    limit: int = DEFAULT_LIMIT
    meeting: str | None = None


def parse_query(query: Mapping[str, str], now: float) -> AlertQuery:
    unknown = sorted(set(query) - PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameter: {', '.join(unknown)}")
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit {text!r}: a whole number from 1 to {MAX_LIMIT}")
    since = query.get("since")
    return AlertQuery(
        since=now - DEFAULT_SPAN_S if since is None else parse_time(since, now),
        limit=int(text),
        meeting=query.get("meeting") or None,
    )


def open_alerts(entities: Mapping[str, Mapping[str, Any]], query: AlertQuery) -> list[Alert]:
    """The ``alerts`` topic's entities of ``query.meeting`` (all without one), newest first, at
    most ``query.limit``."""
    found = []
    for fields in entities.values():
        key = list(fields["key"])
        if query.meeting is not None and key[0] != query.meeting:
            continue
        found.append(
            {
                "id": fields["id"],
                "rule": fields["rule"],
                "severity": fields["severity"],
                "meeting": key[0],
                "participant": key[1] if len(key) > 1 else None,
                "raised_at": fields["raised_at"],
                "cleared_at": None,
                "value": fields["value"],
                "threshold": fields["threshold"],
            }
        )
    return heapq.nlargest(query.limit, found, key=_newest)


async def recent(sink: Readable, query: AlertQuery, *, page_rows: int) -> list[Alert]:
    """The stored alerts raised at or after ``query.since`` (of ``query.meeting``), newest
    first, at most ``query.limit``; raises ``StorageError`` as the export does."""
    selection = Selection("alerts", start=query.since, meeting=query.meeting)
    kept: list[tuple[float, str, Alert]] = []  # a min-heap: the oldest kept on top
    pages = export_rows(sink, selection, page_rows=page_rows)
    try:
        async for page in pages:
            for row in page:
                alert = dict(zip(ALERTS.columns, row, strict=True))
                item = (float(alert["raised_at"]), str(alert["id"]), alert)
                if len(kept) < query.limit:
                    heapq.heappush(kept, item)
                elif item[:2] > kept[0][:2]:
                    heapq.heapreplace(kept, item)
    finally:
        await pages.aclose()
    return [alert for *_, alert in sorted(kept, key=lambda item: item[:2], reverse=True)]


def _newest(alert: Alert) -> tuple[float, str]:
    return (float(alert["raised_at"]), str(alert["id"]))
