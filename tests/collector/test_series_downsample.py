"""``collector.http.series.downsample``: properties over any points and any width — every
point lies within its bucket's min and max, min <= mean <= max, the global max and min survive
at any N, and a bucket without a point is None."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.http.series import Point, bucket_of, downsample, plain

START, END = 1_796_550_000.0, 1_796_550_000.0 + 86_400.0
values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@st.composite
def points(draw: st.DrawFn) -> Point:
    t = draw(st.floats(min_value=START, max_value=END, exclude_max=True))
    low, value, high = sorted(draw(st.tuples(values, values, values)))
    return Point(t, value, low, high) if draw(st.booleans()) else plain(t, value)


@given(st.lists(points(), min_size=1, max_size=200), st.integers(min_value=1, max_value=2_000))
def test_every_point_lies_in_its_bucket(given_points: list[Point], n: int) -> None:
    buckets = downsample(given_points, START, END, n)
    assert len(buckets) == n
    for p in given_points:
        i = bucket_of(p.t, START, END, n)
        assert i is not None
        bucket = buckets[i]
        assert bucket is not None
        assert bucket.min <= p.low <= p.value <= p.high <= bucket.max
    for bucket in buckets:
        if bucket is not None:
            assert bucket.min <= bucket.mean <= bucket.max
    present = [b for b in buckets if b is not None]
    assert max(b.max for b in present) == max(p.high for p in given_points)
    assert min(b.min for b in present) == min(p.low for p in given_points)
    filled = {bucket_of(p.t, START, END, n) for p in given_points}
    assert [i for i, b in enumerate(buckets) if b is not None] == sorted(filled)  # type: ignore[type-var]


@given(st.lists(points(), max_size=50), st.integers(min_value=1, max_value=500))
def test_points_outside_the_range_are_left_out(given_points: list[Point], n: int) -> None:
    outside = [Point(END, 1e15, 1e15, 1e15), Point(START - 1, -1e15, -1e15, -1e15)]
    assert downsample([*given_points, *outside], START, END, n) == downsample(
        given_points, START, END, n
    )


def test_a_spike_survives_and_empty_buckets_are_none() -> None:
    flat = [plain(START + 60 * i, 10.0) for i in range(1440)]
    flat[700] = plain(flat[700].t, 500.0)
    buckets = downsample(flat, START, END, 3)
    assert buckets[1] is not None
    assert (buckets[1].min, buckets[1].max) == (10.0, 500.0)
    assert buckets[1].mean == pytest.approx(10.0 + 490 / 480)
    assert downsample([plain(START, 1.0)], START, END, 4)[1:] == [None, None, None]


def test_non_finite_values_are_left_out() -> None:
    assert downsample([plain(START, math.nan), plain(START, math.inf)], START, END, 2) == [
        None,
        None,
    ]


@pytest.mark.parametrize(("n", "start", "end"), [(0, START, END), (10, END, START)])
def test_bad_arguments(n: int, start: float, end: float) -> None:
    with pytest.raises(ValueError, match="need n >= 1"):
        downsample([], start, end, n)
