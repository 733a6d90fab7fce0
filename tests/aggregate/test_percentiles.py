"""percentiles: HTTP latency percentiles from the 12-bucket histogram, against hand arithmetic.

Bucket bounds (ms), bucket i holding bound[i-1] < L <= bound[i]:
  0: 0-5  1: 5-10  2: 10-25  3: 25-50  4: 50-100  5: 100-250  6: 250-500  7: 500-1000
  8: 1000-2500  9: 2500-5000  10: 5000-10000  11: > 10000 (open)
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.aggregate.percentiles import (
    LatencySummary,
    delta,
    latency_summary,
    merge,
    percentile,
)
from protocol.frames import HTTP_LATENCY_BUCKETS


def histogram(**counts: int) -> list[int]:
    """A 12-bucket histogram from ``b<index>=count`` keywords, other buckets empty."""
    buckets = [0] * HTTP_LATENCY_BUCKETS
    for name, count in counts.items():
        buckets[int(name.removeprefix("b"))] = count
    return buckets


def test_the_helper_places_counts() -> None:
    assert histogram(b0=1, b11=2) == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]


# --- percentile --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 37.5),  # rank 50 of 100 in bucket 25-50: 25 + 50/100 · 25
        (0.01, 25.25),  # rank 1: 25 + 1/100 · 25
        (0.99, 49.75),  # rank 99: 25 + 99/100 · 25
        (1.0, 50.0),  # rank 100: the upper bound
    ],
)
def test_all_requests_in_one_bucket(q: float, expected: float) -> None:
    assert percentile(histogram(b3=100), q) == pytest.approx(expected)


def test_the_first_bucket_starts_at_zero() -> None:
    # rank 5 of 10 in bucket 0-5: 0 + 5/10 · 5 = 2.5
    assert percentile(histogram(b0=10), 0.5) == pytest.approx(2.5)


# 10 requests ≤ 5 ms, 30 in 10-25 ms, 60 in 25-50 ms; cumulative 10, 10, 40, 100.
SPREAD = histogram(b0=10, b2=30, b3=60)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 5.0),  # rank 10 ends bucket 0: its upper bound; the empty bucket 1 is skipped
        (0.2, 15.0),  # rank 20, 10 into bucket 2: 10 + 10/30 · 15
        (0.4, 25.0),  # rank 40 ends bucket 2
        (0.5, 29.1667),  # rank 50, 10 into bucket 3: 25 + 10/60 · 25 = 25 + 4.1667
        (0.95, 47.9167),  # rank 95, 55 into bucket 3: 25 + 55/60 · 25 = 25 + 22.9167
    ],
)
def test_interpolation_across_buckets(q: float, expected: float) -> None:
    assert percentile(SPREAD, q) == pytest.approx(expected, abs=1e-4)


def test_the_open_last_bucket_reads_at_least_10_seconds() -> None:
    assert percentile(histogram(b11=5), 0.5) == 10000.0
    # 90 fast, 10 beyond 10 s: p90 (rank 90) still ends bucket 0, p95 (rank 95) is in the open one
    slow_tail = histogram(b0=90, b11=10)
    assert percentile(slow_tail, 0.9) == pytest.approx(5.0)
    assert percentile(slow_tail, 0.95) == 10000.0
    assert percentile(slow_tail, 1.0) == 10000.0


def test_an_empty_histogram_has_no_percentile() -> None:
    assert percentile(histogram(), 0.5) is None


@pytest.mark.parametrize("q", [0.0, -0.5, 1.01, float("nan")])
def test_q_outside_zero_to_one_is_rejected(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile(SPREAD, q)


@pytest.mark.parametrize("bad", [[1] * 11, [1] * 13, [*[0] * 11, -1]])
def test_malformed_histograms_are_rejected(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="bucket"):
        percentile(bad, 0.5)


# --- merge and delta ---------------------------------------------------------------------------


def test_merge_of_two_instances_is_the_percentile_of_the_sum() -> None:
    instance_a = histogram(b0=10, b2=10)  # fast instance
    instance_b = histogram(b2=20, b3=60)  # slow instance
    merged = merge(instance_a, instance_b)
    assert merged == histogram(b0=10, b2=30, b3=60)  # == SPREAD
    # p50 of the merged 100 requests: 25 + 10/60 · 25 = 29.1667, not the mean of the two p50s
    # (a: rank 10 ends bucket 0 → 5.0; b: rank 40, 20 into bucket 3 → 25 + 20/60 · 25 = 33.333)
    assert percentile(merged, 0.5) == pytest.approx(29.1667, abs=1e-4)
    assert percentile(instance_a, 0.5) == pytest.approx(5.0)
    assert percentile(instance_b, 0.5) == pytest.approx(33.3333, abs=1e-4)


def test_merge_of_nothing_is_empty_and_merge_does_not_mutate() -> None:
    assert merge() == [0] * HTTP_LATENCY_BUCKETS
    first = histogram(b1=3)
    merge(first, histogram(b1=4))
    assert first == histogram(b1=3)


def test_merge_rejects_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="12 buckets"):
        merge(histogram(b0=1), [1, 2, 3])


def test_delta_of_two_samples() -> None:
    older = histogram(b0=100, b3=7, b11=1)
    newer = histogram(b0=150, b3=7, b5=2, b11=1)
    assert delta(newer, older) == histogram(b0=50, b5=2)


def test_delta_raises_when_a_bucket_decreased() -> None:
    older = histogram(b0=100, b3=7)
    restarted = histogram(b0=120, b3=2)  # b0 grew but b3 went back: a counter reset
    with pytest.raises(ValueError, match=r"latency buckets \[3\] decreased"):
        delta(restarted, older)
    # even a single request less, in the open last bucket, is a reset
    with pytest.raises(ValueError, match=r"latency buckets \[11\] decreased"):
        delta(histogram(b0=200, b11=4), histogram(b0=100, b11=5))


# --- summary -----------------------------------------------------------------------------------


def test_summary_of_a_spread_histogram() -> None:
    summary = latency_summary(SPREAD)
    # p50 29.1667 and p95 47.9167 as above; p99: rank 99, 59 into bucket 3: 25 + 59/60 · 25
    # = 49.5833; max: highest non-empty bucket is 3, upper bound 50
    assert summary.p50 == pytest.approx(29.1667, abs=1e-4)
    assert summary.p95 == pytest.approx(47.9167, abs=1e-4)
    assert summary.p99 == pytest.approx(49.5833, abs=1e-4)
    assert summary.max == 50.0


def test_summary_with_a_request_in_the_open_bucket() -> None:
    # 199 in bucket 4 (50-100), one beyond 10 s: p99 rank 198 is still in bucket 4
    # (50 + 198/199 · 50 = 99.7487), max is "at least 10000"
    summary = latency_summary(histogram(b4=199, b11=1))
    assert summary.p99 == pytest.approx(99.7487, abs=1e-4)
    assert summary.max == 10000.0


def test_summary_of_an_empty_histogram() -> None:
    assert latency_summary(histogram()) == LatencySummary(p50=None, p95=None, p99=None, max=None)


# --- properties --------------------------------------------------------------------------------

histograms = st.lists(
    st.integers(min_value=0, max_value=10**9),
    min_size=HTTP_LATENCY_BUCKETS,
    max_size=HTTP_LATENCY_BUCKETS,
).filter(lambda buckets: sum(buckets) > 0)
shares = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)


@given(histograms, shares, shares)
def test_percentile_is_monotone_in_q_and_within_the_bounds(
    buckets: list[int], q1: float, q2: float
) -> None:
    low_q, high_q = sorted((q1, q2))
    low, high = percentile(buckets, low_q), percentile(buckets, high_q)
    assert low is not None
    assert high is not None
    assert 0.0 <= low <= high <= 10000.0


@given(histograms, shares)
def test_doubling_every_bucket_keeps_the_percentile(buckets: list[int], q: float) -> None:
    # merging an instance with an identical one changes no share, so no percentile
    assert percentile(merge(buckets, buckets), q) == pytest.approx(percentile(buckets, q))
