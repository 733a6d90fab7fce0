"""A sink's bounded queue and its retry schedule."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from collector.aggregate.alerts import AlertEvent
from collector.notifications.delivery import Backoff, SinkQueue, retryable


def event(n: int, state: str = "raised") -> AlertEvent:
    return AlertEvent(
        id=f"r:m:{n}@{n}",
        rule="r",
        key=("m",),
        state="raised" if state == "raised" else "cleared",
        severity="warning",
        value=1.0,
        threshold=0.5,
        at=float(n),
        raised_at=float(n),
    )


@given(st.integers(1, 50), st.integers(0, 200))
def test_a_full_queue_drops_the_oldest_waiting_and_counts_it(capacity: int, offered: int) -> None:
    queue = SinkQueue(capacity)
    queue.extend(event(n) for n in range(offered))
    assert len(queue) == min(capacity, offered)
    assert queue.counters.dropped == max(0, offered - capacity)
    assert [e.at for e in queue] == [float(n) for n in range(max(0, offered - capacity), offered)]


def test_the_transition_being_sent_is_never_the_one_dropped() -> None:
    queue = SinkQueue(2)
    queue.extend([event(1), event(2)])
    assert queue.next() == event(1)
    queue.extend([event(3), event(4)])
    assert [e.at for e in queue] == [1.0, 4.0]
    assert queue.counters.dropped == 2
    queue.failed()
    assert queue.next() == event(1)  # retried, counted as a retry
    assert queue.counters.retried == 1
    queue.delivered()
    assert queue.next() == event(4)
    queue.refused()
    assert queue.next() is None
    assert (queue.counters.sent, queue.counters.rejected, queue.counters.failed) == (1, 1, 1)


@given(
    st.floats(0.01, 10),
    st.floats(1, 600),
    st.integers(1, 200),
    st.none() | st.floats(0, 10_000),
    st.integers(0, 2**32),
)
def test_waits_grow_twofold_stay_under_the_ceiling_and_jitter_at_most_half(
    initial: float, cap: float, attempt: int, retry_after: float | None, seed: int
) -> None:
    backoff = Backoff(initial, max(initial, cap))
    wait = backoff.wait(attempt, random.Random(seed), retry_after)
    ceiling = min(backoff.max_s, initial * 2.0 ** (attempt - 1))
    low = ceiling / 2
    if retry_after is not None:
        low = max(low, min(retry_after, backoff.max_s))
    assert low - 1e-9 <= wait <= max(ceiling, low) + 1e-9
    assert wait <= backoff.max_s + 1e-9


def test_what_is_retried() -> None:
    assert [s for s in (200, 301, 400, 401, 404, 408, 425, 429, 500, 502, 503) if retryable(s)] == [
        408,
        425,
        429,
        500,
        502,
        503,
    ]
