"""HTTP routes: cumulative samples of server processes in, per-route bandwidth and latency out.

An ``HttpInstance`` is one (service, instance, route, method) stream: the last cumulative
counters of one server process. Its deltas are added to the ``HttpRoute`` of (service, route,
method), which sums all instances. The rules are PROTOCOL.md §8's:

- the first sample of an instance counts in full when its ``q`` is 0; with a greater ``q`` it
  is a baseline (the process began before the daemon saw it: ``BASELINE``);
- a new ``boot`` nonce is a restarted process: its counters started again from 0, so the first
  sample of the new boot counts in full, whatever its ``q``; a sample of a boot the instance
  has left (a late datagram of the process before) is not applied (``OLD_BOOT``);
- a duplicate or older sequence number is not applied (``DUPLICATE``);
- a counter that decreases without a new boot is a reset, counted as such: the whole sample is
  a new baseline (its counters count the same requests, so none is differenced alone).

A route keeps a ring of per-tick buckets for the live view (requests, bytes, errors and the
latency histogram) and a minute accumulator that closes into one ``HttpMinuteRow``. Histograms
are per bucket and mergeable (``percentiles``), so route-level percentiles are exact sums of
instance histograms, never averages of percentiles.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from array import array
from typing import Any, Final

import msgspec

from collector.aggregate.percentiles import LatencySummary, latency_summary
from collector.aggregate.rtc import BASELINE, DUPLICATE, OLD_BOOT, retire
from protocol import HTTP_LATENCY_BUCKETS, HttpSample

# One accumulator layout for the ring buckets and the minute: requests, five status classes,
# bytes in, bytes out, latency sum, then the histogram.
REQUESTS, STATUS, BYTES_IN, BYTES_OUT, LATENCY_SUM, HIST = 0, 1, 6, 7, 8, 9
WIDTH: Final = HIST + HTTP_LATENCY_BUCKETS
_ZEROS: Final = array("d", bytes(8 * WIDTH))


def _values(sample: HttpSample) -> list[float]:
    return [
        sample.requests,
        *sample.status,
        sample.bytes_in,
        sample.bytes_out,
        sample.latency_sum_ms,
        *sample.latency_hist,
    ]


class HttpMinuteRow(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """One route (all instances) over one minute; the unit of storage."""

    service: str
    route: str
    method: str
    minute: int  # Unix time of the minute's start, seconds
    segment: int  # ms; a minute closed early (shutdown) continues as another segment
    requests: float
    status: list[float]  # 1xx … 5xx
    bytes_in: float
    bytes_out: float
    latency_sum_ms: float
    latency_hist: list[float]
    latency: LatencySummary


class HttpInstance:
    """The last cumulative counters of one server process for one route."""

    __slots__ = ("boot", "last", "last_seq", "resets", "restarts", "retired", "stale")

    def __init__(self) -> None:
        self.boot: str | None = None
        self.retired: tuple[str, ...] = ()  # boots left for a newer one, the newest first
        self.last: list[float] | None = None  # None: the boot's first sample counts in full
        self.last_seq = -1
        self.stale = self.resets = self.restarts = 0

    def delta(self, sample: HttpSample) -> tuple[list[float] | None, int]:
        """The increase since the last sample (None: nothing to add) and what else became of
        the sample: ``BASELINE``, ``DUPLICATE``, ``OLD_BOOT`` (0: applied, nothing else)."""
        if sample.boot != self.boot:
            if sample.boot in self.retired:
                return None, OLD_BOOT
            if self.boot is not None:  # a restarted process: counters from 0 again
                self.restarts += 1
                self.retired = retire(self.retired, self.boot)
                self.last = None
            elif sample.seq > 0:  # the first sample seen, of a process that began before
                self.boot, self.last_seq, self.last = sample.boot, sample.seq, _values(sample)
                return None, BASELINE
            self.boot, self.last_seq = sample.boot, -1
        if sample.seq <= self.last_seq:
            self.stale += 1
            return None, DUPLICATE
        self.last_seq = sample.seq
        values = _values(sample)
        last, self.last = self.last, values
        if last is None:
            return values, 0
        delta = [new - old for new, old in zip(values, last, strict=True)]
        if min(delta) < 0:
            self.resets += 1
            return None, 0
        return delta, 0


class HttpRoute:
    """All instances of one (service, route, method): live ring and minute accumulator."""

    __slots__ = (
        "instances",
        "method",
        "minute",
        "minute_no",
        "opened",
        "ring",
        "ring_bucket",
        "route",
        "service",
        "window",
    )

    def __init__(
        self, service: str, route: str, method: str, window: int = 60, opened: int = 0
    ) -> None:
        self.service, self.route, self.method = service, route, method
        self.opened = opened
        self.instances: dict[str, HttpInstance] = {}
        self.window = window
        self.ring = array("d", _ZEROS) * window
        self.ring_bucket = -1
        self.minute = array("d", _ZEROS)
        self.minute_no = -1

    def add(self, sample: HttpSample, bucket_no: int, minute_no: int) -> int:
        """Apply one sample; what else became of it (``HttpInstance.delta``)."""
        instance = self.instances.get(sample.instance)
        if instance is None:
            instance = self.instances[sample.instance] = HttpInstance()
        delta, outcome = instance.delta(sample)
        self.minute_no = minute_no
        if delta is None:
            return outcome
        self._advance(bucket_no)
        at = (bucket_no % self.window) * WIDTH
        ring, minute = self.ring, self.minute
        for k, value in enumerate(delta):
            ring[at + k] += value
            minute[k] += value
        return outcome

    def _advance(self, bucket_no: int) -> None:
        """Zero the buckets between the last one written and ``bucket_no``."""
        if bucket_no == self.ring_bucket:
            return
        start = self.ring_bucket + 1 if self.ring_bucket >= 0 else bucket_no
        for b in range(max(start, bucket_no - self.window + 1), bucket_no + 1):
            at = (b % self.window) * WIDTH
            self.ring[at : at + WIDTH] = _ZEROS
        self.ring_bucket = bucket_no

    def state(self) -> dict[str, Any]:
        """The minute accumulator and every instance's last counters (not the live ring)."""
        return {
            "key": [self.service, self.route, self.method],
            "minute": list(self.minute),
            "minute_no": self.minute_no,
            "opened": self.opened,
            "instances": {
                name: [i.boot, i.last, i.last_seq, i.stale, i.resets, i.restarts, i.retired]
                for name, i in self.instances.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], window: int = 60) -> HttpRoute:
        service, path, method = state["key"]
        route = cls(service, path, method, window)
        route.minute = array("d", state["minute"])
        route.minute_no = state["minute_no"]
        route.opened = state["opened"]
        for name, values in state["instances"].items():
            boot, last, last_seq, stale, resets, restarts, retired = values
            instance = route.instances[name] = HttpInstance()
            instance.boot, instance.last, instance.last_seq = boot, last, last_seq
            instance.stale, instance.resets, instance.restarts = stale, resets, restarts
            instance.retired = tuple(retired)
        return route

    def window_totals(self, now_bucket: int) -> list[float]:
        """Sums over the live window ending at ``now_bucket`` (the accumulator layout)."""
        totals = [0.0] * WIDTH
        for b in range(now_bucket - self.window + 1, now_bucket + 1):
            if b < 0 or b > self.ring_bucket or b <= self.ring_bucket - self.window:
                continue
            at = (b % self.window) * WIDTH
            for k in range(WIDTH):
                totals[k] += self.ring[at + k]
        return totals

    def close_minute(self) -> HttpMinuteRow | None:
        if self.minute_no < 0 or not any(self.minute):
            self.minute_no = -1
            return None
        m = self.minute
        hist = list(m[HIST:])
        row = HttpMinuteRow(
            service=self.service,
            route=self.route,
            method=self.method,
            minute=self.minute_no * 60,
            segment=self.opened,
            requests=m[REQUESTS],
            status=list(m[STATUS:BYTES_IN]),
            bytes_in=m[BYTES_IN],
            bytes_out=m[BYTES_OUT],
            latency_sum_ms=m[LATENCY_SUM],
            latency_hist=hist,
            latency=latency_summary([int(c) for c in hist]),
        )
        self.minute = array("d", _ZEROS)
        self.minute_no = -1
        return row
