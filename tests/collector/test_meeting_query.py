"""``meeting_query``: the parameters of ``GET /api/meetings`` parsed or refused with a clear
message, filters that compose, an order with unknown values last, pages that add up to the
count, and the quality distribution."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.http.meeting_query import (
    QUERY_LEVELS,
    MeetingQuery,
    distribution,
    parse_query,
    select,
)


def summary(
    participants: int = 2,
    level: str | None = "good",
    quality: int | None = 70,
    relay_share: float = 0.0,
    alerts: int = 0,
    relay_cost: float = 0.0,
) -> dict[str, Any]:
    return {
        "participants": participants,
        "level": level,
        "quality": quality,
        "relay_share": relay_share,
        "alerts": alerts,
        "relay_cost": relay_cost,
    }


MEETINGS = {
    "standup": summary(quality=90, level="excellent"),
    "retro": summary(participants=5, quality=30, level="poor", relay_share=0.2, alerts=2),
    "new": summary(participants=1, quality=None, level=None),
    "review": summary(participants=3, quality=30, level="poor", relay_cost=1.5),
}


def ids(query: MeetingQuery) -> list[str]:
    return [meeting for meeting, _ in select(MEETINGS, query)[1]]


def test_no_parameters_is_every_meeting_by_id() -> None:
    assert parse_query({}) == MeetingQuery()
    assert select(MEETINGS, MeetingQuery()) == (4, sorted(MEETINGS.items()))


def test_each_filter() -> None:
    assert ids(parse_query({"q": "re"})) == ["retro", "review"]
    assert ids(parse_query({"level": "poor,unknown"})) == ["new", "retro", "review"]
    assert ids(parse_query({"relay": "true"})) == ["retro"]
    assert ids(parse_query({"relay": "false"})) == ["new", "review", "standup"]
    assert ids(parse_query({"alerts": "true"})) == ["retro"]
    assert ids(parse_query({"alerts": "false", "level": "poor"})) == ["review"]


def test_worst_first_keeps_unknown_last_and_ties_by_id() -> None:
    assert ids(parse_query({"sort": "quality"})) == ["retro", "review", "standup", "new"]
    assert ids(parse_query({"sort": "-quality"})) == ["standup", "retro", "review", "new"]
    assert ids(parse_query({"sort": "-participants"})) == ["retro", "review", "standup", "new"]
    assert ids(parse_query({"sort": "-relay_cost"}))[0] == "review"
    assert ids(parse_query({"sort": "-id"})) == ["standup", "review", "retro", "new"]


def test_a_page_and_the_total() -> None:
    total, page = select(MEETINGS, parse_query({"sort": "quality", "limit": "2", "offset": "1"}))
    assert total == 4
    assert [m for m, _ in page] == ["review", "standup"]
    assert select(MEETINGS, parse_query({"offset": "9"})) == (4, [])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "1"}, "unknown parameter: since"),
        (
            {"level": "good,awful"},
            "level 'awful': each one of excellent, good, fair, poor, bad, unknown",
        ),
        ({"relay": "yes"}, "relay 'yes': true or false"),
        ({"alerts": "1"}, "alerts '1': true or false"),
        (
            {"sort": "name"},
            "sort 'name': one of id, quality, participants, up_bps, down_bps, "
            "relay_share, relay_cost, alerts, started_at, '-' before it for descending",
        ),
        ({"limit": "0"}, "limit '0': a whole number from 1 to 10_000"),
        ({"limit": "10001"}, "limit '10001': a whole number from 1 to 10_000"),
        ({"offset": "-1"}, "offset '-1': a whole number from 0 or more"),
    ],
)
def test_bad_parameters_say_what_is_wrong(query: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_query(query)


def test_distribution_counts_every_level() -> None:
    assert distribution(MEETINGS) == {
        "meetings": {"excellent": 1, "good": 0, "fair": 0, "poor": 2, "bad": 0, "unknown": 1},
        "participants": {
            "excellent": 2,
            "good": 0,
            "fair": 0,
            "poor": 8,
            "bad": 0,
            "unknown": 1,
        },
    }


summaries = st.builds(
    summary,
    participants=st.integers(0, 50),
    level=st.sampled_from((*QUERY_LEVELS[:-1], None)),
    quality=st.one_of(st.none(), st.integers(0, 100)),
    relay_share=st.sampled_from((0.0, 0.5, 1.0)),
    alerts=st.integers(0, 3),
    relay_cost=st.floats(0, 10),
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "q": st.sampled_from(("a", "b", "ab")),
        "level": st.lists(st.sampled_from(QUERY_LEVELS), min_size=1, unique=True).map(",".join),
        "relay": st.sampled_from(("true", "false")),
        "alerts": st.sampled_from(("true", "false")),
        "sort": st.sampled_from(("id", "-id", "quality", "-quality", "-relay_cost", "alerts")),
    },
)


@given(st.dictionaries(st.text("abc", min_size=1, max_size=3), summaries), queries, queries)
def test_filters_compose_and_pages_add_up(
    meetings: dict[str, dict[str, Any]], first: dict[str, str], second: dict[str, str]
) -> None:
    second = {name: value for name, value in second.items() if name not in first}
    both = first | second
    total, everything = select(meetings, parse_query(both))
    assert total == len(everything)
    # Filtering by the union of the parameters is filtering by one, then by the other.
    once = dict(select(meetings, parse_query(first))[1])
    twice = select(once, parse_query(second))[1]
    assert {m for m, _ in twice} == {m for m, _ in everything}
    # Pages of 2 put together are the whole list, in order.
    pages = [
        select(meetings, parse_query(both | {"limit": "2", "offset": str(offset)}))
        for offset in range(0, total + 2, 2)
    ]
    assert all(count == total for count, _ in pages)
    assert [item for _, page in pages for item in page] == everything
