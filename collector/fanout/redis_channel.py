"""The Redis channel: topics, their state and their deltas shared by every daemon.

Each daemon has its own ``RedisChannel`` to the same Redis and key prefix; what one daemon
publishes, every daemon delivers to its own subscribers. The semantics are those of
``LocalChannel`` (``collector.fanout.channel``): per topic a sequence number under the channel's
epoch, the current state for snapshots and a bounded log of deltas for resume.

What a daemon publishes is its part of each entity (``collector.fanout.parts``): in Redis an
entity's parts are kept apart, under *part ids* ``<entity id>\t<daemon id>``, and every read
merges them (``parts.Mirror``), so that every daemon gives its subscribers the same merged
entities under the same sequence numbers.

Keys under the prefix ``P`` (``fanout.redis_key_prefix``)::

    P:epoch            string   the channel's epoch, shared by all daemons: ``SET NX`` by the
                                first daemon to connect (again, after Redis lost its data)
    P:interest         zset     ``meeting:<id>`` topic -> expiry (ms, Redis clock): the meetings
                                some daemon's subscribers hold; each daemon re-adds its own
                                every ``interest_ttl_s / 3``
    P:meta:<topic>     hash     ``seq`` (last sequence number), ``at`` (time of the last delta)
    P:state:<topic>    hash     part id -> MessagePack of all the part's fields
    P:log:<topic>      stream   one entry per delta (of parts), id ``<seq>-0``, fields ``seq``,
                                ``epoch``, ``at``, ``changed``, ``removed``, ``alerts``
                                (MessagePack); trimmed to about ``history`` entries (``MAXLEN ~``)
    P:owner:<topic>    hash     part id -> id of the daemon that set it (whose death removes it)
    P:parts:<topic>    hash     daemon id -> when (ms, Redis clock) it last published its part
                                of this ``meeting:<id>`` topic (or had none); expires after
                                ``parts_ttl_s``
    P:owned            set      the ``meta`` keys of topics with an ``owner`` hash
    P:daemons          zset     daemon id -> expiry (ms, Redis clock): registered by its first
                                publish, kept by every publish and every ``daemon_ttl_s / 3``

How it works:

* ``publish`` is one Lua script (one round trip, atomic): it checks ``P:epoch``, then per change
  increments ``seq``, removes and sets entities in ``state`` and appends the delta to ``log``.
  Sequence numbers are assigned inside Redis, so two daemons publishing to one topic get one
  order. The script never decodes the MessagePack blobs: ``state`` gets ``Change.values`` (all
  fields), so a field that went away is absent from a snapshot, where a client that applied
  the deltas holds it as None (as the delta carried it).
* ``serve`` reads the ``log`` streams of the topics this daemon's subscribers watch
  (``XREAD BLOCK``, at most ``READ_BLOCK_MS``, pipelined with a ``GET P:epoch`` so an epoch
  change is seen even when the connection never broke). Per topic it keeps the parts and merged
  entities (a ``Mirror``, loaded with the topic's ``state`` and ``seq`` in one transaction, or
  taken from the snapshot a subscriber just got) and hands each entry, as the change of merged
  entities it makes, to ``deliver`` in order, this daemon's own deltas included; an entry that
  does not follow (trimmed away, unreadable) makes it load the topic again. A second task keeps
  this daemon's interest fresh.
* ``snapshot`` merges the parts in ``state``; ``since`` turns the missed entries into what a
  subscriber needs (``parts.catch_up``: each entry alone where every entity it touched had one
  part all along, else one delta that sets the entities of several daemons again, whole).
* A first reader of a ``meeting:<id>`` topic ``request``s it (the ``interest`` set), and
  ``await_parts`` waits until every live daemon has marked its part of it in ``P:parts``, which
  each daemon's publisher does after every publish for the topics it builds
  (``parts_published``).
* An epoch change (Redis restarted without its data, or the key was deleted) is adopted from
  wherever it is seen first; ``on_epoch`` is called, reading positions restart, and the next
  ``publish`` raises ``EpochChanged`` exactly once, so that the publisher sends everything again
  (also when another daemon or the reader noticed the change first).
* ``forget`` deletes the ``state`` and ``log`` of emptied topics but keeps ``meta`` for
  ``FORGOTTEN_TTL_S``: a meeting id used again continues its sequence numbers instead of reusing
  ones that a subscriber may still hold under the same epoch.
* A daemon that dies (``kill -9``, a lost host) leaves its parts in the shared topics. Every
  daemon runs ``reap`` each ``daemon_ttl_s / 3``: the parts of a daemon whose registration
  expired are removed, each topic in one delta as a publish would (so subscribers everywhere
  see its meetings go, and the meetings it shared lose its participants), and the daemon is
  unregistered. A daemon that was
  only cut off from Redis for that long finds itself unregistered at its next publish, which
  then raises ``EpochChanged`` so that the publisher sends its whole state again.

Limits, on purpose or not yet handled:

* Redis should run without persistence for this data (or with the prefix deleted after a
  restore from a dump): a restored dump keeps the epoch but may hold older states and sequence
  numbers, which nothing here detects.
* A publish that timed out may still have been applied; the publisher then sends the same
  changes again (same values; alert transitions twice).
* One Redis, not Redis Cluster: a publish touches the keys of several topics in one script.
* Needs Redis 6.2 or later (``ZADD GT``); the connection speaks RESP2 (see ``_open_client``).

While Redis cannot be reached, ``collector.fanout.fallback.FallbackChannel`` (which the daemon
wraps around this channel) serves this daemon's own subscribers from its own state.

Errors: every redis-py error, ``OSError``, timeout and closed bridge becomes
``ChannelUnavailable``, in ``_call`` alone (``map_exceptions``, ``_UNREACHABLE``); a changed
epoch on ``publish`` is ``EpochChanged`` (see the tree in ``collector.fanout.channel``).
``serve`` never raises them: it backs off (``0.5 s`` doubling to ``retry_max_s``), logs once per
outage and reconnects.

Never logs the Redis URL (it may hold a password), never waits on a subscriber (``deliver`` is
synchronous), and never blocks the trio loop on Redis: every command goes through the
``AsyncioBridge`` with a deadline.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import msgspec
import redis.asyncio
import redis.exceptions
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from collector.fanout.channel import (
    ChannelUnavailable,
    Deliver,
    EpochChanged,
    OnEpoch,
    new_epoch,
)
from collector.fanout.health import RedisHealth
from collector.fanout.hub import Change
from collector.fanout.parts import Mirror, catch_up, part_id, split_part
from collector.logs import get_logger
from collector.runtime import AsyncioBridge, BridgeCancelled, BridgeClosed
from protocol.errors import ExceptionMapping, map_exceptions
from protocol.subscribe import Delta, Entities, Snapshot

log = get_logger("fanout.redis")

T = TypeVar("T")

COMMAND_TIMEOUT_S: Final = 5.0  # per command (socket timeout), and to get a pooled connection
CONNECT_TIMEOUT_S: Final = 2.0
MAX_CONNECTIONS: Final = 16  # the reader holds one while blocked; publish and sessions the rest
READ_BLOCK_MS: Final = 1000  # also how soon a newly watched topic is read
READ_COUNT: Final = 100  # entries per stream per read
RETRY_START_S: Final = 0.5
FORGOTTEN_TTL_S: Final = 24 * 3600
MAX_WANTED_TOPICS: Final = 10_000
PARTS_POLL_S: Final = 0.05  # how often ``await_parts`` looks again

# What failing to reach Redis raises on the way: redis-py's errors, the socket's, the bridge's.
_UNREACHABLE: Final = (redis.exceptions.RedisError, OSError, BridgeClosed, BridgeCancelled)
_ERRORS: ExceptionMapping = {_UNREACHABLE: ChannelUnavailable}

_encoder: Final = msgspec.msgpack.Encoder()
_fields_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])
_entities_decoder: Final = msgspec.msgpack.Decoder(Entities)
_ids_decoder: Final = msgspec.msgpack.Decoder(list[str])
_alerts_decoder: Final = msgspec.msgpack.Decoder(list[dict[str, Any]])

# KEYS: epoch, daemons, owned, then per change meta, state, log, owner.
# ARGV: expected epoch, at, history, daemon id, its ttl (ms), registered (1: by an earlier publish
#       under this epoch, so being missing means presumed dead), then per change: n set,
#       n removed, changed, removed, alerts, then n set (id, blob) pairs, then n removed ids.
# Returns {1, {seq, ...}}, {0, epoch in Redis (false when missing)} or {2} (this daemon had been
# presumed dead and its entities removed: it is registered again, and nothing was published).
_PUBLISH_LUA: Final = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {0, current}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[4]
local registered = redis.call('ZSCORE', KEYS[2], me)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), me)
if not registered and ARGV[6] == '1' then
  return {2}
end
-- unpack() of more than ~8000 values fails: HDEL/HSET in slices of 1000 arguments
local function chunked(command, key, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call(command, key, unpack(ARGV, i, j))
    i = j + 1
  end
end
local at, history = ARGV[2], ARGV[3]
local a, seqs = 7, {}
for k = 4, #KEYS, 4 do
  local meta, state, stream, owner = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local nset, ndel = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local changed, removed, alerts = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  a = a + 5
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('HSET', meta, 'at', at)
  redis.call('PERSIST', meta)
  redis.call('PERSIST', stream)
  local sets = a
  a = a + 2 * nset
  chunked('HDEL', state, a, a + ndel - 1)
  chunked('HDEL', owner, a, a + ndel - 1)
  a = a + ndel
  chunked('HSET', state, sets, sets + 2 * nset - 1)
  -- who set each entity last: the one whose death removes it
  for i = sets, sets + 2 * nset - 1, 2 do
    redis.call('HSET', owner, ARGV[i], me)
  end
  if nset > 0 then
    redis.call('SADD', KEYS[3], KEYS[k])
  elseif ndel > 0 and redis.call('EXISTS', owner) == 0 then
    redis.call('SREM', KEYS[3], KEYS[k])
  end
  redis.call('XADD', stream, 'MAXLEN', '~', history, seq .. '-0', 'seq', seq,
             'epoch', ARGV[1], 'at', at, 'changed', changed, 'removed', removed,
             'alerts', alerts)
  seqs[#seqs + 1] = seq
end
return {1, seqs}
"""

# KEYS: daemons. ARGV: ttl (ms), daemon id. Keeps a registered daemon alive; never registers
# one (that is publish's, which then knows whether the daemon had been presumed dead).
_ALIVE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'GT', now + tonumber(ARGV[1]), ARGV[2])
"""

# KEYS: daemons, owned, epoch. ARGV: prefix, at, history, forgotten ttl (ms), empty changed,
# empty alerts. Removes the entities last set by daemons whose registration expired, each topic
# in one delta (as a publish would), then the daemons themselves; at most 10 daemons a call.
# Returns {daemons reaped, entities removed}.
_REAP_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 10)
if #dead == 0 then
  return {0, 0}
end
local epoch = redis.call('GET', KEYS[3])
local prefix, at, history = ARGV[1], ARGV[2], ARGV[3]
local is_dead = {}
for _, d in ipairs(dead) do
  is_dead[d] = true
end
local removed_total = 0
for _, meta in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local topic = string.sub(meta, #prefix + 7)  -- after "<prefix>:meta:"
  local owner = prefix .. ':owner:' .. topic
  local state = prefix .. ':state:' .. topic
  local stream = prefix .. ':log:' .. topic
  local gone = {}
  local owners = redis.call('HGETALL', owner)
  for i = 1, #owners, 2 do
    if is_dead[owners[i + 1]] then
      gone[#gone + 1] = owners[i]
    end
  end
  if #gone > 0 then
    for i = 1, #gone, 1000 do
      local slice = {unpack(gone, i, math.min(i + 999, #gone))}
      redis.call('HDEL', state, unpack(slice))
      redis.call('HDEL', owner, unpack(slice))
    end
    removed_total = removed_total + #gone
    if epoch then
      local seq = redis.call('HINCRBY', meta, 'seq', 1)
      redis.call('HSET', meta, 'at', at)
      redis.call('XADD', stream, 'MAXLEN', '~', history, seq .. '-0', 'seq', seq,
                 'epoch', epoch, 'at', at, 'changed', ARGV[5],
                 'removed', cmsgpack.pack(gone), 'alerts', ARGV[6])
    end
  end
  if redis.call('EXISTS', owner) == 0 then
    redis.call('SREM', KEYS[2], meta)
    if redis.call('EXISTS', state) == 0 and string.sub(topic, 1, 8) == 'meeting:' then
      -- as forget does: the log goes (later: readers still get the removal), meta stays a while
      redis.call('PEXPIRE', stream, ARGV[4])
      redis.call('PEXPIRE', meta, ARGV[4])
    end
  end
end
redis.call('ZREM', KEYS[1], unpack(dead))
return {#dead, removed_total}
"""

# KEYS: epoch. ARGV: a new epoch. Returns the epoch in force.
_ESTABLISH_LUA: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# KEYS: interest. ARGV: ttl (ms), topics... Uses the Redis clock: daemons' clocks may differ.
_INTEREST_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[1]), ARGV[i])
end
return #ARGV - 1
"""

# KEYS: interest. ARGV: limit. The topics whose interest has not expired.
_WANTED_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf',
                  'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: per topic meta, state, log. ARGV: ttl of meta (ms). Only topics without entities.
_FORGET_LUA: Final = """
local n = 0
for i = 1, #KEYS, 3 do
  if redis.call('HLEN', KEYS[i + 1]) == 0 then
    redis.call('DEL', KEYS[i + 1], KEYS[i + 2])
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    n = n + 1
  end
end
return n
"""


# KEYS: per topic its ``parts`` hash. ARGV: daemon id, ttl (ms). This daemon's part of each topic
# is in the channel now (or it has none): its mark, with the Redis clock's time.
_PARTS_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], string.format('%d', now))
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #KEYS
"""

# KEYS: daemons, the topic's ``parts`` hash. ARGV: ttl (ms). How many live daemons have not
# marked their part of the topic within the ttl.
_MISSING_PARTS_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local missing = 0
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
for _, daemon in ipairs(live) do
  local at = redis.call('HGET', KEYS[2], daemon)
  if not at or tonumber(at) < now - tonumber(ARGV[1]) then
    missing = missing + 1
  end
end
return missing
"""


# KEYS: owned. ARGV: prefix, daemon id. The parts a daemon id owns: topic, part id, topic, ...
_PARTS_OF_LUA: Final = """
local found = {}
for _, meta in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local topic = string.sub(meta, #ARGV[1] + 7)  -- after "<prefix>:meta:"
  local owners = redis.call('HGETALL', ARGV[1] .. ':owner:' .. topic)
  for i = 1, #owners, 2 do
    if owners[i + 1] == ARGV[2] then
      found[#found + 1] = topic
      found[#found + 1] = owners[i]
    end
  end
end
return found
"""


@dataclass(frozen=True, slots=True)
class _Scripts:
    publish: AsyncScript
    establish: AsyncScript
    interest: AsyncScript
    alive: AsyncScript
    reap: AsyncScript
    wanted: AsyncScript
    forget: AsyncScript
    parts: AsyncScript
    missing_parts: AsyncScript
    parts_of: AsyncScript


class RedisChannel:
    """A ``Channel`` kept in Redis and shared by every daemon using the same prefix."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        url: str,
        *,
        prefix: str = "bwmon",
        history: int = 120,
        interest_ttl_s: float = 10.0,
        daemon_ttl_s: float = 10.0,
        parts_ttl_s: float = 3.0,
        daemon_id: str | None = None,
        retry_max_s: float = 10.0,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.bridge = bridge
        self._url = url  # never logged: it may hold a password
        self.prefix = prefix
        self.history = max(1, history)
        self.interest_ttl_s = interest_ttl_s
        self.daemon_ttl_s = daemon_ttl_s
        self.parts_ttl_s = parts_ttl_s
        # Whose parts are whose, in Redis; kept across restarts by the daemon (state_dir).
        self.daemon_id = daemon_id or secrets.token_hex(8)
        self.retry_max_s = max(RETRY_START_S, retry_max_s)
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._epoch_key = f"{prefix}:epoch"
        self._interest_key = f"{prefix}:interest"
        self._daemons_key = f"{prefix}:daemons"
        self._owned_key = f"{prefix}:owned"
        self._client: redis.asyncio.Redis | None = None
        self._scripts: _Scripts | None = None
        self._client_lock = trio.Lock()
        self._epoch: str | None = None  # None until the first round trip
        self._publish_epoch: str | None = None  # what the publisher's state is under
        # Registered by a publish under this epoch: a later publish that finds this daemon
        # unregistered knows its entities were removed as a dead daemon's.
        self._registered = False
        # The publisher's next changes are everything it has (a start, an epoch change, a return
        # from the fallback): they replace every part this daemon id has in Redis.
        self._replace = True
        self._generation = 0  # +1 at each epoch change: reading positions restart
        self._on_epoch: OnEpoch | None = None
        self._watched: frozenset[str] = frozenset()
        # When the reader's last successful round of reads began (trio time; None: never).
        self.reached_at: float | None = None
        self._watch_changed = trio.Event()
        self._interest_changed = trio.Event()
        # Per topic read: its parts and merged entities at the last seq read from its log.
        self._mirrors: dict[str, Mirror] = {}
        # Per topic not read yet: the parts a subscriber's snapshot or resume was made of.
        self._hints: dict[str, Mirror] = {}
        self.counters = {
            "delivered": 0,
            "epoch_changes": 0,
            "bad_entries": 0,
            "outages": 0,
            "presumed_dead": 0,  # times this daemon's entities were removed as a dead one's
            "daemons_reaped": 0,  # dead daemons whose entities this daemon removed
            "entities_reaped": 0,
        }

    # -- the Channel interface -------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The channel's epoch; empty until Redis has been reached once."""
        return self._epoch or ""

    @property
    def problem(self) -> str | None:
        return None  # an unreachable Redis shows as the publisher's error

    def health(self) -> RedisHealth | None:
        return msgspec.convert(self.counters, RedisHealth)

    async def serve(
        self,
        deliver: Deliver,
        on_epoch: OnEpoch,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._on_epoch = on_epoch
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_interest)
            nursery.start_soon(self._keep_alive)
            task_status.started()  # at once: a daemon starts even while Redis is down
            await self._read_forever(deliver)

    def watch(self, topics: Collection[str]) -> None:
        watched = frozenset(topics)
        if any(t.startswith("meeting:") for t in watched - self._watched):
            self._interest_changed.set()
        self._watched = watched
        self._watch_changed.set()

    async def publish(self, changes: list[Change], at: float) -> None:
        if not changes:
            return
        await self._ensure_epoch()
        if self._replace:
            changes = await self._replacing_earlier_parts(changes)
        values = await self._complete_values(changes)
        expected = self._publish_epoch or self.epoch
        keys: list[str] = [self._epoch_key, self._daemons_key, self._owned_key]
        args: list[str | bytes | int] = [
            expected,
            repr(float(at)),
            self.history,
            self.daemon_id,
            int(self.daemon_ttl_s * 1000),
            int(self._registered),
        ]
        me = self.daemon_id
        for change, full in zip(changes, values, strict=True):
            keys += [*self._topic_keys(change.topic), self._owner_key(change.topic)]
            removed = [part_id(entity, me) for entity in change.removed]
            args += [
                len(full),
                len(removed),
                _encoder.encode({part_id(e, me): f for e, f in change.changed.items()}),
                _encoder.encode(removed),
                _encoder.encode(change.events),
            ]
            for entity, fields in full.items():
                args += [part_id(entity, me), _encoder.encode(fields)]
            args += removed
        scripts = await self._get_scripts()
        # Not retried: had the script run before the connection broke, it would apply twice.
        reply = await self._call(_run_script, scripts.publish, keys, args, retry=False)
        if reply[0] == 1:
            self._publish_epoch = expected
            self._registered = True
            self._replace = False
            return
        self._replace = True  # the publisher now starts from nothing
        if reply[0] == 2:
            self.counters["presumed_dead"] += 1
            log.warning("redis_channel_presumed_dead", daemon=self.daemon_id)
            raise EpochChanged("this daemon was presumed dead: its entities were removed")
        current = await self._observe_epoch(reply[1])
        self._publish_epoch = None  # the publisher now starts from nothing, under `current`
        raise EpochChanged(f"channel epoch is {current}, was {expected}")

    def start_over(self) -> None:
        """The publisher will send everything again (its caller raised ``EpochChanged``): that
        publish replaces every part of this daemon's in Redis."""
        self._replace = True

    async def snapshot(self, topic: str) -> Snapshot:
        meta, state, _ = self._topic_keys(topic)
        raw_epoch, (raw_seq, raw_at), raw_entities = await self._call(
            _read_snapshot, self._epoch_key, meta, state
        )
        epoch = await self._observe_epoch(raw_epoch)
        mirror = _mirror(raw_entities, int(raw_seq or 0))
        self._hint(topic, mirror)
        return Snapshot(
            topic=topic,
            epoch=epoch,
            seq=mirror.seq,
            at=float(raw_at or 0.0),
            entities=dict(mirror.entities),
        )

    async def since(self, topic: str, epoch: str | None, seq: int | None) -> list[Delta] | None:
        if epoch is None or seq is None:
            return None
        meta, state, stream = self._topic_keys(topic)
        raw_epoch, raw_seq, entries, raw_parts = await self._call(
            _read_since, self._epoch_key, meta, state, stream, f"{seq + 1}-0", self.history
        )
        if await self._observe_epoch(raw_epoch) != epoch:
            return None
        now = _mirror(raw_parts, int(raw_seq or 0))
        current = now.seq
        if seq == current:
            self._hint(topic, now)
            return []
        if seq > current or current - seq > self.history:
            return None
        try:
            deltas = [_delta(topic, entry_id, fields) for entry_id, fields in entries]
        except (msgspec.DecodeError, KeyError, ValueError):
            return None  # an entry we cannot read: the subscriber gets a snapshot instead
        if len(deltas) != current - seq or deltas[0].seq != seq + 1:
            return None  # trimmed away (or the topic was forgotten meanwhile)
        if any(d.epoch != epoch for d in deltas):
            return None
        self._hint(topic, now)
        return catch_up(deltas, now)

    async def wanted_topics(self) -> set[str]:
        scripts = await self._get_scripts()
        members: list[bytes] = await self._call(
            _run_script, scripts.wanted, [self._interest_key], [MAX_WANTED_TOPICS]
        )
        remote = {m.decode() for m in members}
        return {t for t in remote | self._watched if t.startswith("meeting:")}

    async def request(self, topic: str) -> None:
        scripts = await self._get_scripts()
        ttl_ms = int(self.interest_ttl_s * 1000)
        await self._call(_run_script, scripts.interest, [self._interest_key], [ttl_ms, topic])

    async def parts_published(self, topics: Collection[str]) -> None:
        if not topics:
            return
        scripts = await self._get_scripts()
        keys = [self._parts_key(topic) for topic in sorted(topics)]
        args = [self.daemon_id, int(self.parts_ttl_s * 1000)]
        await self._call(_run_script, scripts.parts, keys, args)

    async def await_parts(self, topic: str, timeout_s: float) -> bool:
        scripts = await self._get_scripts()
        keys = [self._daemons_key, self._parts_key(topic)]
        args = [int(self.parts_ttl_s * 1000)]
        deadline = trio.current_time() + timeout_s
        while await self._call(_run_script, scripts.missing_parts, keys, args):
            if trio.current_time() + PARTS_POLL_S > deadline:
                return False
            await trio.sleep(PARTS_POLL_S)  # the other daemons publish on their own clocks
        return True

    async def forget(self, topics: Iterable[str]) -> None:
        keys = [key for topic in topics for key in self._topic_keys(topic)]
        if not keys:
            return
        scripts = await self._get_scripts()
        await self._call(_run_script, scripts.forget, keys, [int(FORGOTTEN_TTL_S * 1000)])

    async def aclose(self) -> None:
        client, self._client, self._scripts = self._client, None, None
        if client is None:
            return
        # Closing anyway: if that fails, there is nothing more to do with this client.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(self.command_timeout_s),
            contextlib.suppress(*_UNREACHABLE),
        ):
            await self.bridge.run(client.aclose)

    # -- keys, client, errors --------------------------------------------------------------

    def _topic_keys(self, topic: str) -> tuple[str, str, str]:
        p = self.prefix
        return f"{p}:meta:{topic}", f"{p}:state:{topic}", f"{p}:log:{topic}"

    def _owner_key(self, topic: str) -> str:
        return f"{self.prefix}:owner:{topic}"

    def _parts_key(self, topic: str) -> str:
        return f"{self.prefix}:parts:{topic}"

    async def _get_scripts(self) -> _Scripts:
        await self._get_client()
        assert self._scripts is not None
        return self._scripts

    async def _get_client(self) -> redis.asyncio.Redis:
        async with self._client_lock:
            if self._client is None:
                client = await self.bridge.run(
                    partial(
                        _open_client,
                        self._url,
                        timeout_s=self.command_timeout_s,
                        connect_timeout_s=self.connect_timeout_s,
                    )
                )
                self._scripts = _Scripts(
                    publish=client.register_script(_PUBLISH_LUA),
                    establish=client.register_script(_ESTABLISH_LUA),
                    interest=client.register_script(_INTEREST_LUA),
                    alive=client.register_script(_ALIVE_LUA),
                    reap=client.register_script(_REAP_LUA),
                    wanted=client.register_script(_WANTED_LUA),
                    forget=client.register_script(_FORGET_LUA),
                    parts=client.register_script(_PARTS_LUA),
                    missing_parts=client.register_script(_MISSING_PARTS_LUA),
                    parts_of=client.register_script(_PARTS_OF_LUA),
                )
                self._client = client
            return self._client

    async def _call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout_s: float | None = None,
        retry: bool = True,
    ) -> T:
        """``fn(client, *args)`` on the asyncio side; every failure to reach Redis becomes
        ``ChannelUnavailable`` here (and nowhere else). With ``retry`` (calls that may run twice)
        a lost connection is tried once more at once: a pooled connection that the server
        closed (a restart, its idle timeout) fails its next command, and the pool then opens a
        fresh one."""
        try:
            with (
                map_exceptions(_ERRORS, "redis"),
                trio.fail_after((1 + retry) * (timeout_s or self.command_timeout_s + 1)),
            ):
                client = await self._get_client()
                try:
                    return await self.bridge.run(fn, client, *args)
                except redis.exceptions.ConnectionError:
                    if not retry:
                        raise
                return await self.bridge.run(fn, client, *args)
        except trio.TooSlowError as exc:
            raise ChannelUnavailable("redis: no answer in time") from exc

    # -- the epoch -------------------------------------------------------------------------

    async def _ensure_epoch(self) -> str:
        if self._epoch is None:
            await self._observe_epoch(None)
        return self.epoch

    async def _observe_epoch(self, raw: bytes | None) -> str:
        """The epoch as read from Redis (None: missing, then set a new one); adopt it."""
        if raw is None:
            scripts = await self._get_scripts()
            raw = await self._call(_run_script, scripts.establish, [self._epoch_key], [new_epoch()])
            if raw is None:  # deleted again in between: the next call will see it
                raise ChannelUnavailable("redis: the channel epoch keeps disappearing")
        epoch = raw.decode()
        if epoch != self._epoch:
            self._adopt(epoch)
        return epoch

    def _adopt(self, epoch: str) -> None:
        previous, self._epoch = self._epoch, epoch
        self._generation += 1
        self._registered = False  # Redis lost its data: registrations went with it
        self._mirrors.clear()
        self._hints.clear()
        if previous is None:
            log.info("redis_channel_epoch", epoch=epoch, prefix=self.prefix)
            return
        self.counters["epoch_changes"] += 1
        log.warning("redis_channel_epoch_changed", epoch=epoch, previous=previous)
        if self._on_epoch is not None:
            self._on_epoch(epoch)

    def _hint(self, topic: str, parts: Mirror) -> None:
        """A subscriber now holds ``topic`` as merged from ``parts``: if the reader has not
        started on the topic yet, it starts there (not later), so no delta after it goes
        undelivered."""
        if topic in self._watched and topic not in self._mirrors:
            held = self._hints.get(topic)
            if held is None or parts.seq < held.seq:
                self._hints[topic] = parts

    # -- publish helpers -------------------------------------------------------------------

    async def _replacing_earlier_parts(self, changes: list[Change]) -> list[Change]:
        """A publish of everything (the first of this process, or after ``EpochChanged``)
        replaces every part this daemon id has in Redis (left by an earlier run, or from before
        an outage): ``changes`` plus the removal of the parts they do not set again, in the same
        deltas."""
        scripts = await self._get_scripts()
        found = await self._call(
            _run_script, scripts.parts_of, [self._owned_key], [self.prefix, self.daemon_id]
        )
        stale: dict[str, list[str]] = {}
        for raw_topic, raw_part in zip(found[::2], found[1::2], strict=True):
            entity, _ = split_part(raw_part.decode())
            stale.setdefault(raw_topic.decode(), []).append(entity)
        if not stale:
            return changes
        out = []
        for c in changes:
            gone = [e for e in stale.pop(c.topic, []) if e not in c.changed and e not in c.removed]
            out.append(Change(c.topic, c.changed, c.removed + gone, c.events, c.values))
        out += [Change(topic, {}, sorted(entities)) for topic, entities in sorted(stale.items())]
        log.info("redis_channel_replaced_earlier_parts", parts=sum(map(len, stale.values())))
        return out

    async def _complete_values(self, changes: Sequence[Change]) -> list[Entities]:
        """Every field of each changed entity: ``change.values`` (``hub.change`` fills it), or,
        for an entity it lacks, the stored fields updated with the changed ones (one extra round
        trip, only for changes built by hand)."""
        missing = [(c.topic, e) for c in changes for e in c.changed if e not in c.values]
        stored: dict[tuple[str, str], bytes | None] = {}
        if missing:
            keys = [
                (self._topic_keys(topic)[1], part_id(entity, self.daemon_id))
                for topic, entity in missing
            ]
            blobs = await self._call(_read_fields, keys)
            stored = dict(zip(missing, blobs, strict=True))
        out: list[Entities] = []
        for c in changes:
            full: Entities = {}
            for entity, fields in c.changed.items():
                if entity in c.values:
                    full[entity] = c.values[entity]
                    continue
                blob = None if entity in c.removed else stored.get((c.topic, entity))
                full[entity] = {**(_fields_decoder.decode(blob) if blob else {}), **fields}
            out.append(full)
        return out

    # -- serve: reading the logs, keeping the interest -------------------------------------

    async def _read_forever(self, deliver: Deliver) -> None:
        delay = RETRY_START_S
        down = False
        while True:
            started = trio.current_time()
            try:
                await self._read_once(deliver)
                self.reached_at = started
            except ChannelUnavailable as exc:
                if not down:
                    down = True
                    self.counters["outages"] += 1
                    log.warning("redis_channel_unavailable", error=str(exc)[:300])
                await trio.sleep(delay)
                delay = min(2 * delay, self.retry_max_s)
                continue
            if down:
                down = False
                log.info("redis_channel_available", epoch=self.epoch)
            delay = RETRY_START_S

    async def _read_once(self, deliver: Deliver) -> None:
        watched = self._watched
        for topic in [t for t in self._mirrors if t not in watched]:
            del self._mirrors[topic]
        for topic in [t for t in self._hints if t not in watched]:
            del self._hints[topic]
        if not watched:
            self._watch_changed = trio.Event()
            raw = await self._call(_read_epoch, self._epoch_key)
            await self._observe_epoch(raw)
            with trio.move_on_after(READ_BLOCK_MS / 1000):
                await self._watch_changed.wait()
            return
        await self._ensure_epoch()
        generation = self._generation
        new = sorted(t for t in watched if t not in self._mirrors)
        for topic in [t for t in new if t in self._hints]:
            self._mirrors[topic] = self._hints.pop(topic)
        new = [t for t in new if t not in self._mirrors]
        if new:
            states = await self._call(_read_states, [self._topic_keys(t)[:2] for t in new])
            if generation != self._generation:
                return
            for topic, (raw_seq, raw_parts) in zip(new, states, strict=True):
                self._mirrors.setdefault(topic, _mirror(raw_parts, int(raw_seq or 0)))
        streams = {self._topic_keys(t)[2]: t for t in sorted(watched)}
        raw_epoch, reply = await self._call(
            _read_logs,
            self._epoch_key,
            {key: f"{self._mirrors[t].seq}-0" for key, t in streams.items()},
            READ_COUNT,
            READ_BLOCK_MS,
            timeout_s=self.command_timeout_s + READ_BLOCK_MS / 1000 + 1,
        )
        if generation != self._generation:
            return
        await self._observe_epoch(raw_epoch)
        if generation != self._generation:
            return  # the epoch changed: start again from the current positions
        for raw_key, entries in _stream_replies(reply):
            read_topic = streams.get(raw_key.decode())
            mirror = self._mirrors.get(read_topic) if read_topic is not None else None
            if read_topic is None or mirror is None:
                continue
            topic = read_topic
            for entry_id, fields in entries:
                try:
                    delta = _delta(topic, entry_id, fields)
                except (msgspec.DecodeError, KeyError, ValueError) as exc:
                    self.counters["bad_entries"] += 1
                    log.warning("redis_channel_bad_entry", topic=topic, error=str(exc)[:200])
                    delta = None
                # Written under another epoch (the next read adopts it if current), unreadable,
                # or not following the mirror (trimmed away): read the topic's parts again.
                shown = (
                    mirror.apply_delta(delta)
                    if delta is not None and delta.epoch == self._epoch
                    else None
                )
                if shown is None:
                    del self._mirrors[topic]
                    break
                self.counters["delivered"] += 1
                deliver(shown)
            await trio.lowlevel.checkpoint()  # many topics: let other tasks run in between
            if generation != self._generation:
                return

    async def _keep_interest(self) -> None:
        """Every ``interest_ttl_s / 3`` (and at once when a meeting topic is newly watched),
        push the expiry of this daemon's watched ``meeting:`` topics forward."""
        ttl_ms = int(self.interest_ttl_s * 1000)
        while True:
            self._interest_changed = trio.Event()
            topics = sorted(t for t in self._watched if t.startswith("meeting:"))
            if topics:
                try:
                    scripts = await self._get_scripts()
                    await self._call(
                        _run_script, scripts.interest, [self._interest_key], [ttl_ms, *topics]
                    )
                except ChannelUnavailable:
                    pass  # the reader logs outages; try again at the next period
            with trio.move_on_after(self.interest_ttl_s / 3):
                await self._interest_changed.wait()

    async def _keep_alive(self) -> None:
        """Every ``daemon_ttl_s / 3``: keep this daemon registered (once a publish registered
        it), then remove the entities of daemons whose registration expired (``reap``)."""
        ttl_ms = int(self.daemon_ttl_s * 1000)
        while True:
            with contextlib.suppress(ChannelUnavailable):  # the reader logs outages
                if self._registered:
                    scripts = await self._get_scripts()
                    await self._call(
                        _run_script, scripts.alive, [self._daemons_key], [ttl_ms, self.daemon_id]
                    )
                await self.reap()
            await trio.sleep(self.daemon_ttl_s / 3)

    async def reap(self) -> int:
        """Remove the entities last set by daemons not heard from for ``daemon_ttl_s`` (they
        died without removing them), in one delta per topic; the number of daemons reaped."""
        scripts = await self._get_scripts()
        keys = [self._daemons_key, self._owned_key, self._epoch_key]
        args = [
            self.prefix,
            repr(time.time()),
            self.history,
            int(FORGOTTEN_TTL_S * 1000),
            _encoder.encode({}),
            _encoder.encode([]),
        ]
        total = 0
        while True:
            # Retried as any idempotent call: a second run finds the daemons already reaped.
            daemons, entities = await self._call(_run_script, scripts.reap, keys, args)
            if not daemons:
                return total
            total += daemons
            self.counters["daemons_reaped"] += daemons
            self.counters["entities_reaped"] += entities
            log.info("redis_channel_reaped", daemons=daemons, entities=entities)


# -- decoding ----------------------------------------------------------------------------------


def _mirror(raw_parts: dict[bytes, bytes], seq: int) -> Mirror:
    """The parts of a topic's ``state`` hash (part id -> MessagePack fields) at ``seq``."""
    return Mirror.of(
        ((*split_part(k.decode()), _fields_decoder.decode(v)) for k, v in raw_parts.items()), seq
    )


def _delta(topic: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Delta:
    seq = int(entry_id.split(b"-", 1)[0])
    return Delta(
        topic=topic,
        epoch=fields[b"epoch"].decode(),
        seq=seq,
        prev=seq - 1,
        at=float(fields[b"at"]),
        changed=_entities_decoder.decode(fields[b"changed"]),
        removed=_ids_decoder.decode(fields[b"removed"]),
        alerts=_alerts_decoder.decode(fields[b"alerts"]),
    )


def _stream_replies(reply: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREAD's reply as (stream key, entries): RESP2 gives a list of pairs; RESP3 without
    redis-py's legacy shapes a dict of key -> [entries]."""
    if not reply:
        return []
    if isinstance(reply, dict):
        out = []
        for key, value in reply.items():
            entries = value[0] if value and isinstance(value[0], list) else value
            out.append((key, entries))
        return out
    return [(key, entries) for key, entries in reply]


# -- asyncio side: these run on the asyncio loop through the bridge ----------------------------


async def _open_client(
    url: str, *, timeout_s: float, connect_timeout_s: float
) -> redis.asyncio.Redis:
    # A bounded pool that waits for a free connection (the blocked reader holds one); no
    # retries inside redis-py: a retried publish could apply twice, and our callers retry.
    # RESP2: with RESP3, redis-py 8 turns on "maintenance notifications" and then no longer
    # notices that the server closed an idle pooled connection (after a restart).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )
    return redis.asyncio.Redis.from_pool(pool)


async def _run_script(
    client: redis.asyncio.Redis, script: AsyncScript, keys: list[str], args: list[Any]
) -> Any:
    return await script(keys=keys, args=args, client=client)


async def _read_epoch(client: redis.asyncio.Redis, epoch_key: str) -> bytes | None:
    raw = await client.get(epoch_key)
    return raw if isinstance(raw, bytes) else None


async def _read_snapshot(
    client: redis.asyncio.Redis, epoch_key: str, meta: str, state: str
) -> list[Any]:
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(epoch_key)
        pipe.hmget(meta, ["seq", "at"])
        pipe.hgetall(state)
        return list(await pipe.execute())


async def _read_since(
    client: redis.asyncio.Redis,
    epoch_key: str,
    meta: str,
    state: str,
    stream: str,
    first: str,
    count: int,
) -> list[Any]:
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(epoch_key)
        pipe.hget(meta, "seq")
        pipe.xrange(stream, min=first, max="+", count=count)
        pipe.hgetall(state)
        return list(await pipe.execute())


async def _read_states(
    client: redis.asyncio.Redis, topics: list[tuple[str, str]]
) -> list[tuple[Any, Any]]:
    """Per topic (meta, state): its seq and parts, read together (MULTI)."""
    async with client.pipeline(transaction=True) as pipe:
        for meta, state in topics:
            pipe.hget(meta, "seq")
            pipe.hgetall(state)
        replies = list(await pipe.execute())
    return list(zip(replies[::2], replies[1::2], strict=True))


async def _read_fields(client: redis.asyncio.Redis, keys: list[tuple[str, str]]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for state, entity in keys:
            pipe.hget(state, entity)
        return list(await pipe.execute())


async def _read_logs(
    client: redis.asyncio.Redis,
    epoch_key: str,
    streams: dict[str, str],
    count: int,
    block_ms: int,
) -> list[Any]:
    # One connection, one round trip: the epoch first, then the blocking read.
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(epoch_key)
        pipe.xread(streams, count=count, block=block_ms)  # type: ignore[arg-type]
        return list(await pipe.execute())
