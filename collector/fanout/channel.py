"""Channels: where the publisher's changes go and where subscriber sessions read from.

A channel numbers each topic's changes under an epoch, keeps the topics' current state (for
snapshots) and a bounded log of deltas (for resume), and delivers every delta to this daemon's
subscribers through ``deliver``. What the publisher hands it is this daemon's *part* of each
entity; what it gives out are the entities merged from every daemon's parts
(``collector.fanout.parts``). Two implementations with the same semantics:

* ``LocalChannel``: in process, one daemon (a ``DeltaLog``);
* ``RedisChannel`` (``collector.fanout.redis_channel``): Redis Streams and hashes, shared by
  every daemon, so that a subscriber on any daemon sees the meetings of all of them.

``open_channel`` builds the one the configuration names (Redis behind its local fallback,
``collector.fanout.fallback``, when a URL is set).

Exceptions (the channel branch of ``BwmonError``'s tree, protocol/errors.py; translated at the
edge, callers see only these)::

    ChannelError
    ├── ChannelUnavailable   the channel cannot be reached now; try again later
    └── EpochChanged         the channel lost its state (Redis restarted), or this daemon's
                             part of it (presumed dead): publish everything again; after a
                             restart subscribers resynchronise with snapshots
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

import trio

from collector.config import FanoutConfig
from collector.fanout.health import RedisHealth
from collector.fanout.hub import Change, DeltaLog
from collector.fanout.parts import shown
from collector.runtime import AsyncioBridge
from protocol.errors import BwmonError
from protocol.subscribe import Delta, Snapshot


class ChannelError(BwmonError):
    pass


class ChannelUnavailable(ChannelError):
    pass


class EpochChanged(ChannelError):
    pass


Deliver = Callable[[Delta], None]
OnEpoch = Callable[[str], None]


def new_epoch() -> str:
    """A random epoch: a fresh one at every daemon start (or channel loss)."""
    return secrets.token_hex(8)


class Channel(Protocol):
    """What the publisher and the subscriber sessions need from a channel."""

    @property
    def epoch(self) -> str: ...

    @property
    def problem(self) -> str | None:
        """Why subscribers see less than every daemon's state now (None: nothing is wrong);
        readiness reports it."""
        ...

    def health(self) -> RedisHealth | None:
        """The channel's own part of the daemon's ``fanout`` health (None: nothing to add)."""
        ...

    async def serve(
        self,
        deliver: Deliver,
        on_epoch: OnEpoch,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled: hand every delta of a watched topic to ``deliver`` in order;
        call ``on_epoch`` when the epoch changes (subscribers then need snapshots)."""
        ...

    def watch(self, topics: Collection[str]) -> None:
        """The topics this daemon's subscribers hold now (the channel delivers those)."""
        ...

    async def publish(self, changes: list[Change], at: float) -> None:
        """Append each change as its topic's next delta. Raises ``ChannelUnavailable`` (nothing
        was published: the caller keeps its state and diffs again later) or ``EpochChanged``
        (publish every entity again)."""
        ...

    async def snapshot(self, topic: str) -> Snapshot: ...

    async def since(self, topic: str, epoch: str | None, seq: int | None) -> list[Delta] | None:
        """The deltas after ``seq`` of ``epoch`` if still held (``[]``: nothing missed), else
        None: the subscriber needs a snapshot."""
        ...

    async def wanted_topics(self) -> set[str]:
        """``meeting:<id>`` topics that some subscriber (on any daemon) holds, or that a
        reader ``request``ed within the interest's time to live."""
        ...

    async def request(self, topic: str) -> None:
        """A reader (a first subscriber, ``/api``) wants the ``meeting:<id>`` topic: every
        daemon is to publish its part of it from its next publish on."""
        ...

    async def parts_published(self, topics: Collection[str]) -> None:
        """This daemon's part of each of these ``meeting:<id>`` topics (possibly none) is in
        the channel now."""
        ...

    async def await_parts(self, topic: str, timeout_s: float) -> bool:
        """Wait until every live daemon has published its part of ``topic`` lately; False when
        ``timeout_s`` passed first."""
        ...

    async def forget(self, topics: Iterable[str]) -> None:
        """Topics whose meeting ended (and whose last delta removed everything)."""
        ...

    async def aclose(self) -> None: ...


class Requests:
    """Topics readers requested (``Channel.request``), each wanted until its interest expires."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def add(self, topic: str) -> None:
        self._until[topic] = trio.current_time() + self.ttl_s

    def live(self) -> set[str]:
        now = trio.current_time()
        for topic in [t for t, until in self._until.items() if until <= now]:
            del self._until[topic]
        return set(self._until)


class LocalChannel:
    """The in-process channel: one daemon, its epoch fixed for the life of the process."""

    def __init__(
        self, history: int = 120, epoch: str | None = None, interest_ttl_s: float = 10.0
    ) -> None:
        self.log = DeltaLog(epoch or new_epoch(), history)
        self._deliver: Deliver | None = None
        self._watched: set[str] = set()
        self._requests = Requests(interest_ttl_s)

    @property
    def epoch(self) -> str:
        return self.log.epoch

    @property
    def problem(self) -> str | None:
        return None

    def health(self) -> RedisHealth | None:
        return None

    async def serve(
        self,
        deliver: Deliver,
        on_epoch: OnEpoch,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._deliver = deliver
        task_status.started()
        await trio.sleep_forever()

    def watch(self, topics: Collection[str]) -> None:
        self._watched = set(topics)

    async def publish(self, changes: list[Change], at: float) -> None:
        for change in map(shown, changes):
            if not change:
                continue
            delta = self.log.append(change, at)
            if self._deliver is not None:
                self._deliver(delta)

    async def snapshot(self, topic: str) -> Snapshot:
        return self.log.snapshot(topic)

    async def since(self, topic: str, epoch: str | None, seq: int | None) -> list[Delta] | None:
        return self.log.since(topic, epoch, seq)

    async def wanted_topics(self) -> set[str]:
        return {t for t in self._watched if t.startswith("meeting:")} | self._requests.live()

    async def request(self, topic: str) -> None:
        self._requests.add(topic)

    async def parts_published(self, topics: Collection[str]) -> None:
        pass  # the only part there is: this daemon's

    async def await_parts(self, topic: str, timeout_s: float) -> bool:
        return True

    async def forget(self, topics: Iterable[str]) -> None:
        self.log.forget(topics)

    async def aclose(self) -> None:
        pass


def open_channel(
    fanout: FanoutConfig, bridge: AsyncioBridge | None, daemon_id: str | None = None
) -> Channel:
    """The configured channel: Redis when a URL is set (this daemon's parts under
    ``daemon_id``; None: a new id), else in process."""
    url = fanout.redis()
    interest_ttl_s = max(10.0, 5 * fanout.publish_interval_s)
    if not url:
        return LocalChannel(history=fanout.history_deltas, interest_ttl_s=interest_ttl_s)
    if bridge is None:
        raise ValueError("the Redis channel needs the asyncio bridge")
    # Imported here: Redis's client loads only when a URL is configured.
    from collector.fanout.fallback import FallbackChannel
    from collector.fanout.redis_channel import RedisChannel

    redis = RedisChannel(
        bridge,
        url,
        prefix=fanout.redis_key_prefix,
        history=fanout.history_deltas,
        interest_ttl_s=interest_ttl_s,
        daemon_ttl_s=max(10.0, 5 * fanout.publish_interval_s),
        parts_ttl_s=max(3.0, 3 * fanout.publish_interval_s),
        daemon_id=daemon_id,
        retry_max_s=fanout.redis_retry_max_s,
    )
    return FallbackChannel(redis, history=fanout.history_deltas)
