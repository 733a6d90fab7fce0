"""HTTP latency percentiles from the protocol's 12-bucket latency histogram.

A histogram here is the ``lh`` field of an ``http`` frame (PROTOCOL.md §4.1): bucket *i* counts
the requests with ``bound[i-1] < L <= bound[i]`` (bound[-1] = 0), each request in exactly one
bucket, so the buckets are NOT cumulative across buckets (unlike Prometheus' ``le``); the last
bucket is open, L > 10000 ms. Each bucket is a counter over time, so the caller takes ``delta``
of two samples of one process to get an interval, and ``merge``s intervals across time buckets
and instances. Percentiles of a merged histogram are exact up to the bucket resolution, which
averaging per-instance percentiles would not be.

Inside a bucket the requests are assumed spread evenly, so a percentile is interpolated linearly
between the bucket's lower and upper bound. The open last bucket has no upper bound: a
percentile that falls there is reported as its lower bound, 10000.0, and reads "at least 10 s".

This module never does I/O and keeps no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from protocol.frames import HTTP_LATENCY_BOUNDS_MS, HTTP_LATENCY_BUCKETS

# Latency (ms) reported for anything in the open last bucket: "at least" this much.
OPEN_BUCKET_MS: Final = float(HTTP_LATENCY_BOUNDS_MS[-1])


class LatencySummary(msgspec.Struct, frozen=True, gc=False):
    """Latency percentiles (ms) of an interval; all None when it had no requests.

    ``max`` is the upper bound of the highest non-empty bucket (10000.0, "at least", when that
    is the open last bucket).
    """

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


def _check(histogram: Sequence[int]) -> None:
    if len(histogram) != HTTP_LATENCY_BUCKETS:
        raise ValueError(
            f"a latency histogram has {HTTP_LATENCY_BUCKETS} buckets, got {len(histogram)}"
        )
    if any(count < 0 for count in histogram):
        raise ValueError(f"latency bucket counts must be >= 0, got {list(histogram)}")


def _bucket_bounds(index: int) -> tuple[float, float]:
    lower = 0.0 if index == 0 else float(HTTP_LATENCY_BOUNDS_MS[index - 1])
    upper = (
        float(HTTP_LATENCY_BOUNDS_MS[index])
        if index < len(HTTP_LATENCY_BOUNDS_MS)
        else OPEN_BUCKET_MS
    )
    return lower, upper


def merge(*histograms: Sequence[int]) -> list[int]:
    """Return the bucketwise sum: one histogram for several time buckets or instances.

    No histogram at all gives the empty histogram (all zeros).
    """
    total = [0] * HTTP_LATENCY_BUCKETS
    for histogram in histograms:
        _check(histogram)
        for index, count in enumerate(histogram):
            total[index] += count
    return total


def delta(newer: Sequence[int], older: Sequence[int]) -> list[int]:
    """Return the requests counted between two samples of one process: ``newer - older``.

    Raises ValueError when any bucket decreased: counters only grow, so a decrease is a counter
    reset (a restart), and the caller must treat ``newer`` as a new baseline.
    """
    _check(newer)
    _check(older)
    decreased = [index for index, (n, o) in enumerate(zip(newer, older, strict=True)) if n < o]
    if decreased:
        raise ValueError(f"latency buckets {decreased} decreased: counter reset")
    return [n - o for n, o in zip(newer, older, strict=True)]


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """Return the latency (ms) below which a share ``q`` (0 < q <= 1) of requests fell.

    Linear interpolation inside the bucket holding rank ``q · total``; 10000.0 ("at least")
    when that is the open last bucket; None when the histogram is empty.
    """
    if not 0.0 < q <= 1.0:  # also rejects NaN
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    _check(histogram)
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(histogram):
        if count > 0 and below + count >= rank:
            if index == len(HTTP_LATENCY_BOUNDS_MS):
                return OPEN_BUCKET_MS
            lower, upper = _bucket_bounds(index)
            return lower + (rank - below) / count * (upper - lower)
        below += count
    # Unreachable for q <= 1: rank <= total and the last non-empty bucket reaches total.
    raise AssertionError("rank beyond the histogram total")


def latency_summary(histogram: Sequence[int]) -> LatencySummary:
    """Return p50, p95, p99 and max of one histogram (all None when it is empty)."""
    _check(histogram)
    non_empty = [index for index, count in enumerate(histogram) if count > 0]
    if not non_empty:
        return LatencySummary()
    _, highest_upper = _bucket_bounds(non_empty[-1])
    return LatencySummary(
        p50=percentile(histogram, 0.5),
        p95=percentile(histogram, 0.95),
        p99=percentile(histogram, 0.99),
        max=highest_upper,
    )
