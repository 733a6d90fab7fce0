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

Bounded: a route holds at most ``max_instances`` instances (a sample of a new one over that is
not applied: ``INSTANCE_CAP``; the engine lowers it to what the route has while all routes
together hold their cap), kept in the order of their last sample so that ``expire``
forgets the idle ones from the front without looking at the others. An instance holds only
its last counters: what its samples added is in the route's accumulators already, so forgetting
it loses no counted byte (a sample of it after that is a first sample again, PROTOCOL.md §8.5).

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import Any, Final

import msgspec

from collector.aggregate.percentiles import LatencySummary, latency_summary
from collector.aggregate.rtc import BASELINE, DUPLICATE, OLD_BOOT, retire
from protocol import HTTP_LATENCY_BUCKETS, HttpSample

INSTANCE_CAP: Final = 16  # not applied: a new instance of a route already at its cap
NEW_INSTANCE: Final = 32  # the sample's instance is new to the route (with the other outcomes)

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

    __slots__ = ("boot", "last", "last_seen", "last_seq", "resets", "restarts", "retired", "stale")

    def __init__(self, last_seen: float = 0.0) -> None:
        self.last_seen = last_seen  # daemon time of its last sample
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
        # The least recently heard from first: ``add`` moves an instance to the end.
        self.instances: OrderedDict[str, HttpInstance] = OrderedDict()
        self.window = window
        self.ring = array("d", _ZEROS) * window
        self.ring_bucket = -1
        self.minute = array("d", _ZEROS)
        self.minute_no = -1

    def add(
        self,
        sample: HttpSample,
        now: float,
        bucket_no: int,
        minute_no: int,
        max_instances: int = 1_000_000,
    ) -> int:
        """Apply one sample received at daemon time ``now``; what else became of it
        (``HttpInstance.delta``, with ``NEW_INSTANCE`` if its instance is new; or only
        ``INSTANCE_CAP``: a new instance over ``max_instances``, not applied)."""
        instances = self.instances
        instance = instances.get(sample.instance)
        new = 0
        if instance is None:
            if len(instances) >= max_instances:
                return INSTANCE_CAP
            instance = instances[sample.instance] = HttpInstance()
            new = NEW_INSTANCE
        else:
            instances.move_to_end(sample.instance)
        instance.last_seen = now
        delta, outcome = instance.delta(sample)
        outcome |= new
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

    def expire(self, idle_before: float) -> int:
        """Forget the instances without a sample since ``idle_before``; how many."""
        instances = self.instances
        expired = 0
        while instances and next(iter(instances.values())).last_seen <= idle_before:
            instances.popitem(last=False)
            expired += 1
        return expired

    def state(self) -> dict[str, Any]:
        """The minute accumulator and every instance's last counters (not the live ring),
        the least recently heard from first."""
        return {
            "key": [self.service, self.route, self.method],
            "minute": list(self.minute),
            "minute_no": self.minute_no,
            "opened": self.opened,
            "instances": {
                name: [
                    i.boot,
                    i.last,
                    i.last_seq,
                    i.stale,
                    i.resets,
                    i.restarts,
                    i.retired,
                    i.last_seen,
                ]
                for name, i in self.instances.items()
            },
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        window: int = 60,
        now: float = 0.0,
        taken_at: float | None = None,
    ) -> HttpRoute:
        """The route of ``state``, from a checkpoint ``taken_at`` (daemon time; None: unknown),
        restored at ``now``: each instance keeps the silence it had when the checkpoint was
        taken, not the time the daemon was down; one without the time of its last sample (a
        version 3 checkpoint) is heard from ``now``."""
        service, path, method = state["key"]
        route = cls(service, path, method, window)
        route.minute = array("d", state["minute"])
        route.minute_no = state["minute_no"]
        route.opened = state["opened"]
        restored = []
        for name, values in state["instances"].items():
            boot, last, last_seq, stale, resets, restarts, retired = values[:7]
            idle = 0.0
            if taken_at is not None and len(values) > 7:
                idle = max(0.0, taken_at - values[7])
            instance = HttpInstance(now - idle)
            instance.boot, instance.last, instance.last_seq = boot, last, last_seq
            instance.stale, instance.resets, instance.restarts = stale, resets, restarts
            instance.retired = tuple(retired)
            restored.append((instance.last_seen, name, instance))
        restored.sort(key=lambda item: item[0])  # stable: the checkpoint's order among equals
        for _, name, instance in restored:
            route.instances[name] = instance
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
