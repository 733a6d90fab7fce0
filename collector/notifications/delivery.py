"""One sink's bounded queue of alert transitions and its retry schedule. Pure: no I/O, no clock,
no randomness of its own (the jitter's random source is handed in).

The queue keeps transitions in the order the engine produced them, so a raise always goes out
before its clear. At most ``capacity`` wait, the one being sent included; on overflow the
**oldest waiting** transition is dropped and counted (``dropped``): the newest state of the
alerts matters most to whoever is paged, and an Alertmanager sink sends its firing alerts
again anyway. The transition being sent is never the one dropped.

Retries: a failed attempt waits ``retry_initial_s * 2^(n-1)``, at most ``retry_max_s``, then
a random part of it is taken off (between none and half: "equal jitter"), so receivers coming
back are not hit by every daemon at once; a ``Retry-After`` the receiver sent raises the wait
to it (still at most ``retry_max_s``). A transition is retried until it is delivered or the
receiver refuses it for good (``rejected``), never given up on a timer: the queue's bound is
what limits the memory a receiver that stays down can take.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from collector.aggregate.alerts import AlertEvent


@dataclass(slots=True)
class SinkCounters:
    sent: int = 0  # transitions delivered (a 2xx answer)
    failed: int = 0  # attempts that failed (no answer, or one to retry)
    retried: int = 0  # attempts after the first of a transition
    rejected: int = 0  # transitions the receiver refused for good (a 4xx other than 408/429)
    dropped: int = 0  # transitions dropped from a full queue
    resent: int = 0  # Alertmanager: firing alerts posted again (each alert once per resend)


@dataclass(slots=True)
class SinkQueue:
    """The transitions one sink has still to deliver, oldest first, ``current`` being sent."""

    capacity: int
    counters: SinkCounters = field(default_factory=SinkCounters)
    waiting: deque[AlertEvent] = field(default_factory=deque)
    current: AlertEvent | None = None
    attempts: int = 0  # of ``current``

    def __len__(self) -> int:
        return len(self.waiting) + (self.current is not None)

    def __iter__(self) -> Iterator[AlertEvent]:
        """Everything undelivered, in order (what a checkpoint keeps)."""
        if self.current is not None:
            yield self.current
        yield from self.waiting

    def offer(self, event: AlertEvent) -> None:
        self.waiting.append(event)
        while len(self) > self.capacity and self.waiting:
            self.waiting.popleft()
            self.counters.dropped += 1

    def extend(self, events: Iterable[AlertEvent]) -> None:
        for event in events:
            self.offer(event)

    def next(self) -> AlertEvent | None:
        """The transition to send now: the one being retried, else the oldest waiting."""
        if self.current is None and self.waiting:
            self.current = self.waiting.popleft()
            self.attempts = 0
        if self.current is not None:
            self.attempts += 1
            if self.attempts > 1:
                self.counters.retried += 1
        return self.current

    def delivered(self) -> None:
        self.current = None
        self.counters.sent += 1

    def refused(self) -> None:
        """The receiver will never take it: drop it, go on with the next."""
        self.current = None
        self.counters.rejected += 1

    def failed(self) -> None:
        """Keep it: it goes again after the wait ``retry_wait`` says."""
        self.counters.failed += 1


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float
    max_s: float

    def wait(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1``, after ``attempt`` (≥ 1) failed ones."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(attempt - 1, 62))
        wait = ceiling - rng.uniform(0.0, ceiling / 2)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_s))
        return wait


def retryable(status: int) -> bool:
    """Whether an answer of ``status`` asks for the same request again later: a server error,
    a timeout or a rate limit. 2xx is delivered; anything else is refused for good."""
    return status >= 500 or status in (408, 425, 429)
