"""One ``/subscribe`` session's state, without I/O (PROTOCOL.md §12).

``SubscriberState`` holds what a subscriber's client holds per topic (the epoch and sequence
number it is at), the messages queued for it, the topics it must be resynchronised on and the
session's token claims. It takes what happens to the session (a client message, a delta the
channel published, the result of a resynchronisation fetch, a heartbeat tick, a changed epoch)
and says what to write, what to fetch and when to close; the trio loop of
``collector.fanout.subscribers`` only reads and writes sockets, waits and fetches.

The rule it keeps: a client gets a delta only when it follows what the client holds (same
epoch, ``prev`` equal to the client's ``seq``). Queued deltas of a topic that follow one
another go out merged into one; a gap, a queue that overflowed or a new epoch makes the topic
resynchronise: the deltas missed since the client's position, merged into one, if the channel
still holds them, else a snapshot.

Never awaits, never touches a socket, never reads the clock: the loop passes ``now``. The
messages it queues are the loop's own wrappers (``Encoded``: a message with its encodings,
shared by every subscriber), made by the ``wrap`` function it is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec

from collector.auth import Auth, Denied
from collector.fanout.hub import merge
from protocol.close_codes import CLOSE_INTERNAL, CLOSE_POLICY
from protocol.subscribe import (
    BAD_MESSAGE,
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_TOPICS_PER_SESSION,
    TOO_MANY_TOPICS,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN_TOPIC,
    Alert,
    Authenticate,
    Delta,
    Heartbeat,
    ServerMessage,
    Snapshot,
    Subscribe,
    SubscribeError,
    Unsubscribe,
    Unsubscribed,
    client_json_decoder,
    client_msgpack_decoder,
    is_topic,
)
from protocol.tokens import Claims

Position = tuple[str | None, int | None]  # (epoch, seq); (None, None): needs a snapshot


class Carries(Protocol):
    """What the session queues: a server message (with whatever the loop keeps beside it)."""

    @property
    def message(self) -> ServerMessage: ...


M = TypeVar("M", bound=Carries)


@dataclass(slots=True)
class Received:
    """What one client message asks of the loop: ``replies`` to send (or queue), the topic
    the session ``joined`` (deliver its deltas here; resynchronise it) or ``left``."""

    replies: list[ServerMessage] = field(default_factory=list)
    joined: str | None = None
    left: str | None = None
    refused: Denied | None = None  # a token refused, for the log


class SubscriberState(Generic[M]):
    """One session's topics, positions, outgoing queue and resynchronisations.

    ``counters`` is the fan-out's shared counters (``Fanout.counters``): the state adds to
    ``deltas_sent``, ``snapshots_sent``, ``resumed``, ``bad_messages``, ``refused_*``,
    ``heartbeat_timeouts`` and ``tokens_expired`` as it decides."""

    def __init__(
        self,
        text: bool,
        queue_messages: int,
        wrap: Callable[[ServerMessage], M],
        counters: MutableMapping[str, int],
    ) -> None:
        self.text = text
        self.queue_messages = queue_messages
        self.wrap = wrap
        self.counters = counters
        # topic -> (epoch, seq) the client holds; (None, None) until a snapshot or a resume
        self.held: dict[str, Position] = {}
        self.queue: deque[M] = deque()
        self.resync: set[str] = set()
        self.unavailable: set[str] = set()  # topics told "unavailable" in this outage
        self.sending = False  # the sender's turn is under way: what it writes must go first
        self.sent = 0
        self.replaced = 0
        self.claims: Claims | None = None  # from the session's last good ``auth`` message
        self.close = (1000, "")

    # -- published deltas -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued, being written or to resynchronise: a message may be written
        straight to the socket."""
        return not (self.sending or self.queue or self.resync)

    def follows(self, delta: Delta) -> bool:
        """``delta`` follows what the client holds of its topic."""
        return self.held.get(delta.topic) == (delta.epoch, delta.prev)

    def wrote(self, count: int) -> None:
        """``count`` messages were written to the client."""
        self.sent += count

    def delivered(self, delta: Delta) -> None:
        """``delta`` (which ``follows``) was written to the client: it holds its position."""
        self.held[delta.topic] = (delta.epoch, delta.seq)

    def offer(self, message: M) -> bool:
        """Queue a message; False when the queue was full and was replaced by a
        resynchronisation of every topic (the loop must run)."""
        if len(self.queue) >= self.queue_messages:
            self.queue.clear()
            self.resync.update(self.held)
            self.replaced += 1
            return False
        self.queue.append(message)
        return True

    def offer_reply(self, message: M) -> bool:
        """Queue a reply or heartbeat; False: dropped (not worth a resync), the queue is
        full."""
        if len(self.queue) >= self.queue_messages:
            return False
        self.queue.append(message)
        return True

    def epoch_changed(self) -> None:
        """The channel's epoch changed: every topic needs a snapshot."""
        self.queue.clear()
        self.held = dict.fromkeys(self.held, (None, None))
        self.resync.update(self.held)

    # -- the loop's turn: resynchronisations, then the queue ------------------------------

    def next_resync(self) -> tuple[str, Position] | None:
        """The next topic to bring up to date and the client's position in it (the loop
        fetches what was missed since, or a snapshot); None: none left."""
        while self.resync:
            topic = self.resync.pop()
            position = self.held.get(topic)
            if position is not None:
                return topic, position
        return None

    def unavailable_now(self, topic: str, detail: str) -> list[M]:
        """The channel could not serve ``topic``: one ``unavailable`` error per outage. The
        loop tries again later (``retry``)."""
        if topic in self.unavailable:
            return []
        self.unavailable.add(topic)
        return [self.wrap(SubscribeError(code=UNAVAILABLE, detail=detail[:200], topic=topic))]

    def snapshot_fetched(self, snapshot: Snapshot, encoded: M) -> list[M]:
        """What to write for a snapshot of a topic being resynchronised."""
        topic = snapshot.topic
        self.unavailable.discard(topic)
        if topic not in self.held:
            return []  # unsubscribed meanwhile
        self.held[topic] = (snapshot.epoch, snapshot.seq)
        self.counters["snapshots_sent"] += 1
        return [encoded]

    def missed_fetched(self, topic: str, position: Position, missed: list[Delta]) -> list[M]:
        """What to write for the deltas a resuming topic missed since ``position`` (``[]``:
        none): one merged delta, after the ``alert`` messages it carries."""
        self.unavailable.discard(topic)
        if self.held.get(topic) != position:
            # Unsubscribed, subscribed again or a new epoch while they were fetched: they may
            # not follow what the client holds now, and the topic is to resynchronise again.
            return []
        self.counters["resumed"] += 1
        if not missed:
            return []
        update = merge(missed)
        out = [
            self.wrap(Alert(topic=topic, epoch=update.epoch, seq=update.seq, alert=alert))
            for alert in update.alerts
        ]
        self.held[topic] = (update.epoch, update.seq)
        self.counters["deltas_sent"] += 1
        out.append(self.wrap(update))
        return out

    def retry(self, topics: Iterable[str]) -> None:
        """Topics the channel could not serve: resynchronise them on a later turn."""
        self.resync.update(topics)

    def take_queued(self) -> list[M]:
        """Empty the queue into what to write, in order: per topic the deltas that follow
        what the client holds, several merged into one in the place of the last (so every
        ``alert`` they carry comes before it, PROTOCOL.md §12.4); a gap
        makes the topic resynchronise instead (``resync`` is then not empty: the loop takes
        another turn). Alerts of a topic being resynchronised, or older than what the client
        holds, are left out: the snapshot or resume covers them."""
        pending = list(self.queue)
        self.queue.clear()
        held, resync = self.held, self.resync
        out: list[M | str] = []  # a str holds the place of that topic's deltas
        runs: dict[str, list[Delta]] = {}
        first: dict[str, M] = {}
        place: dict[str, int] = {}  # where a topic's run of deltas goes: after its last one
        for encoded in pending:
            message = encoded.message
            if isinstance(message, Alert):
                epoch, seq = held.get(message.topic, (None, None))
                if (
                    seq is not None
                    and message.topic not in resync
                    and message.epoch == epoch
                    and message.seq > seq
                ):
                    out.append(encoded)
                continue
            if not isinstance(message, Delta):
                out.append(encoded)
                continue
            topic = message.topic
            epoch, seq = held.get(topic, (None, None))
            if seq is None or topic in resync:
                continue  # unsubscribed, or a snapshot is on its way
            run = runs.setdefault(topic, [])
            last = run[-1].seq if run else seq
            if message.epoch != epoch or message.seq <= last:
                continue  # already covered by the snapshot or resume the client got
            if message.prev != last:
                resync.add(topic)  # a delta went missing: start afresh
                run.clear()
                continue
            if not run:
                first[topic] = encoded
            place[topic] = len(out)
            out.append(topic)
            run.append(message)
        result: list[M] = []
        for index, item in enumerate(out):
            if not isinstance(item, str):
                result.append(item)
                continue
            run = runs[item]
            if not run or place[item] != index:
                continue
            held[item] = (run[-1].epoch, run[-1].seq)
            self.counters["deltas_sent"] += 1
            result.append(first[item] if len(run) == 1 else self.wrap(merge(run)))
        return result

    # -- client messages ------------------------------------------------------------------

    def receive(self, data: str | bytes, auth: Auth) -> Received:
        """One client message: ``auth``, ``subscribe`` or ``unsubscribe``; anything else gets
        an error. ``auth`` is the keys in force (it checks tokens and their expiry)."""
        if len(data) > MAX_CLIENT_MESSAGE_BYTES:
            return self._bad(f"message over {MAX_CLIENT_MESSAGE_BYTES} bytes")
        try:
            if isinstance(data, str):
                message = client_json_decoder.decode(data)
            else:
                message = client_msgpack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return self._bad(str(exc)[:200])
        if isinstance(message, Authenticate):
            claims = auth.admit(message.token, "read")
            if isinstance(claims, Denied):
                return self._refuse(claims, None)
            self.claims = claims
            return Received()
        topic = message.topic
        if not is_topic(topic):
            return Received(
                [
                    SubscribeError(
                        code=UNKNOWN_TOPIC,
                        detail="topics are meetings, http, alerts and meeting:<meeting id>",
                        topic=topic[:140],
                    )
                ]
            )
        if isinstance(message, Unsubscribe):
            left = None
            if topic in self.held:
                del self.held[topic]
                self.resync.discard(topic)
                left = topic
            return Received([Unsubscribed(topic=topic)], left=left)
        assert isinstance(message, Subscribe)
        if topic not in self.held and len(self.held) >= MAX_TOPICS_PER_SESSION:
            error = SubscribeError(
                code=TOO_MANY_TOPICS,
                detail=f"at most {MAX_TOPICS_PER_SESSION} topics per session",
                topic=topic,
            )
            return Received([error])
        denied = self._authorize(auth, topic)
        if denied is not None:
            return self._refuse(denied, topic)
        self.held[topic] = (message.epoch, message.seq)
        self.resync.add(topic)
        return Received(joined=topic)

    def _authorize(self, auth: Auth, topic: str) -> Denied | None:
        """None when the session's token may read ``topic``: a meeting-scoped token reads its
        own ``meeting:<id>`` topic only (the others show every meeting)."""
        if not auth.required:
            return None
        if self.claims is None:
            return Denied(UNAUTHORIZED, "send an auth message with a token first")
        meeting = topic.removeprefix("meeting:") if topic.startswith("meeting:") else None
        return auth.check(self.claims, "read", meeting)

    def _refuse(self, denied: Denied, topic: str | None) -> Received:
        self.counters[f"refused_{denied.code}"] += 1
        error = SubscribeError(code=denied.code, detail=denied.detail, topic=topic)
        return Received([error], refused=denied)

    def _bad(self, detail: str) -> Received:
        self.counters["bad_messages"] += 1
        return Received([SubscribeError(code=BAD_MESSAGE, detail=detail)])

    # -- time -----------------------------------------------------------------------------

    def heartbeat(self, now: float, epoch: str) -> Heartbeat:
        return Heartbeat(at=now, epoch=epoch)

    def heartbeat_missed(self) -> None:
        """No pong within the timeout: close with 1011."""
        self.counters["heartbeat_timeouts"] += 1
        self.close = (CLOSE_INTERNAL, "heartbeat timeout")

    def expires_in(self, now: float) -> float | None:
        """Seconds until the session's token expires (inf: no token yet); None: it has
        expired, the session is to close with 1008 (``close`` says so)."""
        claims = self.claims
        remaining = claims.exp - now if claims is not None else float("inf")
        if remaining > 0:
            return remaining
        self.counters["tokens_expired"] += 1
        self.close = (CLOSE_POLICY, "token expired")
        return None
