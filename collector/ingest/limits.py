"""How many frames a sender may send: frame-rate limits (who may send at all over UDP is
``collector.allowlist``).

- ``Rate``: a frame rate and burst (``limits.*_frames_per_s``, ``*_burst_frames``), shared by
  every bucket that uses it, so a reload's ``configure`` changes them all at once and keeps
  what each bucket has spent.
- ``TokenBucket``: the frames one sender (a WebSocket connection) may still send.
- ``SourceLimiter``: one bucket per source address, UDP and WebSocket together, for at most
  ``max_sources`` addresses (the least recently seen are forgotten first: memory stays bounded
  whatever addresses a flood claims to come from).

Frames over a limit are refused as ``rate_limited``; a rate of 0 turns a limit off, and callers
skip the limiter entirely then (``enabled``), so an unconfigured daemon pays nothing.

Pure bookkeeping: no I/O, and no clock read — callers pass ``now`` (any monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from collector.ingest.health import LimitsHealth

RATE_LIMITED: Final = "rate_limited"
FORBIDDEN: Final = "forbidden"


class Rate:
    """Frames per second and burst size (frames), shared by buckets; 0 per second: off."""

    __slots__ = ("burst", "per_s")

    def __init__(self, per_s: float = 0.0, burst: int = 0) -> None:
        self.per_s = 0.0
        self.burst = 1.0
        self.configure(per_s, burst)

    def configure(self, per_s: float, burst: int = 0) -> None:
        """Set the rate; ``burst`` 0 means one second's worth (at least one frame)."""
        if not per_s >= 0 or not burst >= 0:
            raise ValueError(f"rate {per_s!r} and burst {burst!r} must be >= 0")
        self.per_s = float(per_s)
        self.burst = float(burst) if burst > 0 else max(1.0, self.per_s)

    @property
    def enabled(self) -> bool:
        return self.per_s > 0

    def __repr__(self) -> str:
        return f"Rate(per_s={self.per_s!r}, burst={self.burst!r})"


class TokenBucket:
    """A bucket of ``rate.burst`` frames, refilled at ``rate.per_s``; starts full."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = now

    def available(self, now: float) -> int:
        """Whole frames that may be sent at ``now`` (refills first; a disabled rate: any)."""
        rate = self.rate
        if rate.per_s <= 0:
            return 1 << 62
        if now > self.stamp:
            self.tokens = min(rate.burst, self.tokens + (now - self.stamp) * rate.per_s)
            self.stamp = now
        elif self.tokens > rate.burst:  # the burst was lowered by a reload
            self.tokens = rate.burst
        return int(self.tokens)

    def spend(self, frames: int) -> None:
        if self.rate.per_s > 0:
            self.tokens -= frames

    def take(self, frames: int, now: float) -> int:
        """Spend up to ``frames``; return how many may be sent (the first ones)."""
        granted = min(frames, self.available(now))
        self.spend(granted)
        return granted


def take_all(buckets: Sequence[TokenBucket], frames: int, now: float) -> int:
    """Spend the same number of frames from every bucket: as many as the emptiest allows."""
    granted = frames
    for bucket in buckets:
        granted = min(granted, bucket.available(now))
    for bucket in buckets:
        bucket.spend(granted)
    return granted


class SourceLimiter:
    """One token bucket per source address, at most ``max_sources`` of them (LRU)."""

    __slots__ = ("_buckets", "forgotten", "max_sources", "rate")

    def __init__(self, per_s: float = 0.0, burst: int = 0, max_sources: int = 100_000) -> None:
        self.rate = Rate(per_s, burst)
        self.max_sources = max(1, max_sources)
        self.forgotten = 0  # sources dropped from the table to make room
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate.per_s > 0

    @property
    def tracked(self) -> int:
        return len(self._buckets)

    def configure(self, per_s: float, burst: int = 0, max_sources: int | None = None) -> None:
        """Change the limit at run time (a reload); tracked sources keep what they spent.
        Turning it off forgets every source."""
        self.rate.configure(per_s, burst)
        if max_sources is not None:
            self.max_sources = max(1, max_sources)
        if not self.enabled:
            self._buckets.clear()
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
            self.forgotten += 1

    def bucket(self, source: str, now: float) -> TokenBucket:
        """The bucket of ``source``, made (full) if it is not tracked; marks it recently seen."""
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            if len(buckets) >= self.max_sources:
                buckets.popitem(last=False)
                self.forgotten += 1
            bucket = buckets[source] = TokenBucket(self.rate, now)
        else:
            buckets.move_to_end(source)
        return bucket

    def take(self, source: str, frames: int, now: float) -> int:
        """Spend up to ``frames`` of ``source``'s allowance; return how many may be sent.
        (``bucket(source, now).take(frames, now)``, inlined: it runs once per datagram.)"""
        rate = self.rate
        per_s = rate.per_s
        if per_s <= 0:
            return frames
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            bucket = self.bucket(source, now)
        else:
            buckets.move_to_end(source)
        tokens = bucket.tokens
        if now > bucket.stamp:
            tokens += (now - bucket.stamp) * per_s
            bucket.stamp = now
        if tokens > rate.burst:
            tokens = rate.burst
        granted = frames if frames <= tokens else int(tokens)
        bucket.tokens = tokens - granted
        return granted

    def health(self) -> LimitsHealth:
        return LimitsHealth(tracked_sources=len(self._buckets), forgotten_sources=self.forgotten)
