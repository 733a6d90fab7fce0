"""Downsampling a chart's history to its pixel width: ``GET /api/series`` (docs/API.md).

``downsample`` splits ``[start, end)`` into ``n`` buckets of equal width and keeps, per bucket,
the lowest and highest value and the mean of the points in it, so a one-minute spike survives in
a week drawn on 300 pixels. A point is ``(t, value, low, high)``: a stored minute row carries
its own lowest value (``mos_min``, ``quality_min``) beside its mean, and that lowest value is
what the bucket's min must show. A bucket without a point is ``None`` (the JSON's null: a gap in
the chart, not a zero).

Pure: no I/O, no clock; the route in ``collector.http.api`` reads the rows and the live points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple


class Point(NamedTuple):
    """One value at time ``t`` (Unix seconds) with the range it stands for:
    ``low <= value <= high`` (both ``value`` for a plain sample)."""

    t: float
    value: float
    low: float
    high: float


class Bucket(NamedTuple):
    min: float
    mean: float
    max: float


def plain(t: float, value: float) -> Point:
    return Point(t, value, value, value)


def bucket_of(t: float, start: float, end: float, n: int) -> int | None:
    """The index of the bucket ``t`` falls in, None outside ``[start, end)``."""
    if not start <= t < end:
        return None
    # min(): rounding can put a t just below end at index n.
    return min(n - 1, int((t - start) * n / (end - start)))


def downsample(points: Iterable[Point], start: float, end: float, n: int) -> list[Bucket | None]:
    """``n`` buckets over ``[start, end)``: min of the lows, mean of the values, max of the
    highs of the points in each; None for a bucket without a point. Points outside the range and
    non-finite values are left out."""
    if n < 1 or not end > start:
        raise ValueError("need n >= 1 and end > start")
    lows = [math.inf] * n
    highs = [-math.inf] * n
    sums = [0.0] * n
    counts = [0] * n
    for t, value, low, high in points:
        i = bucket_of(t, start, end, n)
        if i is None or not (math.isfinite(value) and math.isfinite(low) and math.isfinite(high)):
            continue
        lows[i] = min(lows[i], low, value)
        highs[i] = max(highs[i], high, value)
        sums[i] += value
        counts[i] += 1
    out: list[Bucket | None] = []
    for i in range(n):
        if not counts[i]:
            out.append(None)
            continue
        # The float sum of equal values can land a hair outside them: clamp the mean.
        mean = min(highs[i], max(lows[i], sums[i] / counts[i]))
        out.append(Bucket(lows[i], mean, highs[i]))
    return out
