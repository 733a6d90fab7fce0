"""The WebSocket ingest session (``/ingest``, PROTOCOL.md §7) as a plain object: messages and
``now`` in; frames for the consumer, replies, acks and close codes out.

``IngestSession`` holds everything the protocol says about one connection, and does no I/O:
it never awaits, reads no clock (every step that needs the time takes ``now``) and never
touches the socket. ``collector.ingest.websocket`` drives it with a short trio loop that only
reads messages, hands frames on, sends replies and closes. Its life, one call per event::

    hello(first message, now)  -> Welcome, or Close      (or no_hello() -> Close)
    receive(message, now)      -> frames to hand on      (the message is now pending)
    message_processed()        -> error replies          (the message is numbered and counted)
    tick(now)                  -> Tick: an ack if anything changed, whether a ping is due
    pong(now)                                            (the next ping is an interval on)
    heartbeat_timeout()        -> Close                  (no pong in time)
    peer_closed(code)                                    (counts a message too large: 1009)
    abort(shutting_down)       -> Close                  (the loop ended on an exception)

- The first message must be one ``hello`` frame; else close 1008 with the counted reason code
  as the close reason, or ``hello expected`` (``no_hello``). The hello's token goes to
  ``admit`` (PROTOCOL.md §7.8): refused, close 1008 with ``code: detail``.
- Messages after the hello are numbered 1, 2, 3…; a message is *processed* (and so may be
  named by an ack) only once its frames have been handed to the consumer: ``receive`` leaves
  it pending, ``message_processed`` counts it.
- Good frames outside the token's meeting are refused as ``forbidden``; frames over a rate
  limit (``SessionSettings.connection_rate`` for this connection, ``source_limiter`` for its
  peer address, shared with UDP) as ``rate_limited``: the first ones within the allowance pass.
- Each rejection gets an ``error`` reply, at most ``max_error_replies_per_interval`` per ack
  interval (``tick`` starts a new interval); the rest are only counted, and show in the acks.
- ``tick`` gives an ``ack`` when the totals changed since the last one, and says when a ping
  is due; a ping without a pong in time closes with 1011.

The transport's ``TransportCounters`` are updated as messages arrive (a message's frames count
when it is decoded, before it is handed on).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from collector.auth import Denied
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import (
    FORBIDDEN,
    RATE_LIMITED,
    Rate,
    SourceLimiter,
    TokenBucket,
    take_all,
)
from protocol import (
    Decoded,
    Event,
    Frame,
    Hello,
    Limits,
    ProtocolError,
    RtcSample,
    decode_message,
)
from protocol.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
)
from protocol.codec import TOO_LARGE
from protocol.session import Ack, ErrorReply, SessionMessage, Welcome
from protocol.tokens import Claims

# The reason code counted for a session whose hello never came: no first message within the
# hello timeout, or one that decoded but is not one hello frame (PROTOCOL.md §6, §7.1).
NO_HELLO: Final = "no_hello"
HELLO_EXPECTED: Final = "hello expected"  # the close reason then

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()

# Checks the hello's token for the ``ingest`` right: the claims it grants, or why not.
Admit = Callable[[str | None], Claims | Denied]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    limits: Limits
    hello_timeout_s: float = 5.0
    heartbeat_interval_s: float = 15.0
    heartbeat_timeout_s: float = 10.0
    ack_interval_s: float = 1.0
    max_error_replies_per_interval: int = 100
    # Rate limits (PROTOCOL.md §5.2); shared, mutable objects: a reload reconfigures them.
    connection_rate: Rate | None = None
    source_limiter: SourceLimiter | None = None  # per peer address, shared with UDP


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this WebSocket close code and reason."""

    code: int
    reason: str


NORMAL_CLOSURE: Final = Close(CLOSE_NORMAL, "")
HEARTBEAT_TIMEOUT: Final = Close(CLOSE_INTERNAL, "heartbeat timeout")


@dataclass(frozen=True, slots=True)
class Tick:
    """What an ack interval's end asks for: an ``ack`` to send (None when nothing changed
    since the last one), and whether to ping the client now."""

    ack: Ack | None
    ping: bool


class SessionStateError(RuntimeError):
    """A method called out of the session's order (a bug of the loop that drives it)."""


_AWAITING_HELLO: Final = "awaiting hello"
_OPEN: Final = "open"
_PENDING: Final = "message pending"  # received, its frames not yet handed on
_CLOSED: Final = "closed"


class IngestSession:
    """The protocol state of one ``/ingest`` connection; see the module docstring."""

    def __init__(
        self,
        settings: SessionSettings,
        counters: TransportCounters,
        admit: Admit,
        session_id: str,
        source: str = "",
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.admit = admit
        self.session_id = session_id
        self.source = source  # the peer's address, for the per-source rate limit
        self.state = _AWAITING_HELLO
        self.close = NORMAL_CLOSURE  # how the connection ends if nothing else decides
        self.hello_frame: Hello | None = None
        self.denied: Denied | None = None  # why the hello's token was refused
        self.meeting: str | None = None  # the token's meeting: frames of others are refused
        self.text = False  # replies as JSON text (the hello came as text), else MessagePack
        self.last_msg = 0  # number of the last processed message
        self.accepted = 0  # frames handed on (the first hello excluded)
        self.rejected = 0  # frames rejected after the hello (a whole message counts 1)
        self.acked: tuple[int, int, int] = (0, 0, 0)
        self.error_budget = 0  # error replies given in this ack interval
        self._connection_bucket: TokenBucket | None = None
        self._pending: tuple[int, list[ProtocolError], int] | None = None
        self._next_ping = 0.0

    @property
    def boot(self) -> str:
        """The hello's boot nonce: ``rtc`` frames without their own take it (§8.4)."""
        return self.hello_frame.boot if self.hello_frame is not None else ""

    # The hello (§7.1, §7.8).

    def hello(self, message: str | bytes, now: float) -> Welcome | Close:
        """The session's first message: a ``welcome`` to send, or how to close."""
        self._expect(_AWAITING_HELLO)
        decoded = decode_message(_as_bytes(message), self.settings.limits)
        if decoded.errors:
            reason = decoded.errors[0].reason
            self.counters.reject(reason)
            return self._closed(Close(CLOSE_POLICY, reason))
        hello = decoded.frames[0] if len(decoded.frames) == 1 else None
        if not isinstance(hello, Hello):  # a batch of one hello is one hello
            return self.no_hello()
        claims = self.admit(hello.token)
        if isinstance(claims, Denied):
            self.counters.reject(claims.code)
            self.denied = claims
            return self._closed(Close(CLOSE_POLICY, f"{claims.code}: {claims.detail}"))
        self.state = _OPEN
        self.hello_frame = hello
        self.meeting = claims.meeting
        self.text = isinstance(message, str)
        rate = self.settings.connection_rate
        self._connection_bucket = TokenBucket(rate, now) if rate is not None else None
        self._next_ping = now + self.settings.heartbeat_interval_s
        limits = self.settings.limits
        return Welcome(
            session=self.session_id,
            ack_interval_s=self.settings.ack_interval_s,
            max_message_bytes=limits.max_message_bytes,
            max_frames=limits.max_frames_per_message,
        )

    def no_hello(self) -> Close:
        """No hello: no message came within the hello timeout, or the first one was valid but
        held anything but one hello frame."""
        self._expect(_AWAITING_HELLO)
        self.counters.reject(NO_HELLO)
        return self._closed(Close(CLOSE_POLICY, HELLO_EXPECTED))

    # Messages after the hello (§7.2 to §7.4).

    def receive(self, message: str | bytes, now: float) -> list[Frame]:
        """Decode the next message and apply the meeting scope and the rate limits: the frames
        to hand to the consumer, in order (maybe none). The message stays pending, not named
        by any ack, until ``message_processed``."""
        self._expect(_OPEN)
        data = _as_bytes(message)
        decoded = decode_message(data, self.settings.limits)
        self.counters.count(decoded, len(data))
        decoded, rejected = screen(
            decoded, self.counters, self.meeting, lambda wanted: self._take(wanted, now)
        )
        self.state = _PENDING
        self._pending = (len(decoded.frames), decoded.errors, rejected)
        return decoded.frames

    def message_processed(self) -> list[ErrorReply]:
        """The pending message's frames have been handed on: it gets its number and counts
        in the next ack. Its error replies, as many as this interval's budget allows."""
        pending = self._pending
        if self.state != _PENDING or pending is None:
            raise SessionStateError(f"no message pending: the session is {self.state}")
        frames, errors, rejected = pending
        self._pending = None
        self.state = _OPEN
        self.last_msg += 1
        self.accepted += frames
        replies: list[ErrorReply] = []
        if errors:
            self.rejected += rejected
            msg = self.last_msg
            for error in errors:
                if self.error_budget >= self.settings.max_error_replies_per_interval:
                    break
                self.error_budget += 1
                replies.append(
                    ErrorReply(msg=msg, index=error.index, reason=error.reason, detail=error.detail)
                )
        return replies

    # Acks and heartbeat (§7.5, §7.6).

    def tick(self, now: float) -> Tick:
        """An ack interval ended: a new error-reply budget; an ack if the totals changed since
        the last one; a ping when one is due."""
        if self.state not in (_OPEN, _PENDING):
            raise SessionStateError(f"tick while {self.state}")
        self.error_budget = 0
        state = (self.last_msg, self.accepted, self.rejected)
        ack = None
        if state != self.acked:
            self.acked = state
            ack = Ack(msg=state[0], accepted=state[1], rejected=state[2])
        return Tick(ack, now >= self._next_ping)

    def pong(self, now: float) -> None:
        """The client answered the ping: the next one is due a heartbeat interval later."""
        self._next_ping = now + self.settings.heartbeat_interval_s

    def heartbeat_timeout(self) -> Close:
        """The client did not answer the ping in time."""
        return self._closed(HEARTBEAT_TIMEOUT)

    # How the connection ends.

    def peer_closed(self, code: int | None) -> None:
        """The connection closed under the session with ``code``: a message too large (1009,
        sent by the WebSocket layer itself) is counted; a client that closes is not."""
        if code == CLOSE_TOO_BIG:
            self.counters.reject(TOO_LARGE)
        self.state = _CLOSED

    def abort(self, shutting_down: bool) -> Close:
        """The session ends on an exception: the daemon's shutdown (1001), else an internal
        error (1011)."""
        close = (
            Close(CLOSE_GOING_AWAY, "daemon shutting down")
            if shutting_down
            else Close(CLOSE_INTERNAL, "internal error")
        )
        return self._closed(close)

    def encode(self, reply: SessionMessage) -> str | bytes:
        """A reply in the session's encoding (§7.1.3): JSON text or MessagePack binary."""
        if self.text:
            return _json.encode(reply).decode()
        return _msgpack.encode(reply)

    def _expect(self, state: str) -> None:
        if self.state != state:
            raise SessionStateError(f"expected the session {state}, it is {self.state}")

    def _closed(self, close: Close) -> Close:
        self.state = _CLOSED
        self.close = close
        return close

    def _take(self, wanted: int, now: float) -> int:
        """How many of ``wanted`` frames (the first ones) the rate limits let through now."""
        buckets = []
        bucket = self._connection_bucket
        if bucket is not None and bucket.rate.enabled:
            buckets.append(bucket)
        limiter = self.settings.source_limiter
        if limiter is not None and limiter.enabled:
            buckets.append(limiter.bucket(self.source, now))
        return take_all(buckets, wanted, now) if buckets else wanted


def screen(
    decoded: Decoded,
    counters: TransportCounters,
    meeting: str | None,
    take: Callable[[int], int],
) -> tuple[Decoded, int]:
    """The decoded message as the sender may send it: its good frames outside ``meeting`` (the
    token's, None: every meeting) refused as ``forbidden``, then those over the rate limits as
    ``rate_limited`` (``take(wanted)`` says how many of the first frames may pass; it spends
    them). Returns the message left and how many frames it rejects in all (a whole-message
    rejection counts 1). The refused frames move from accepted to rejected in ``counters``,
    which counted the message as decoded. WebSocket sessions and ``POST /ingest`` share it."""
    rejected = len(decoded.errors)
    if meeting is not None and decoded.frames:
        allowed = [_in_scope(frame, meeting) for frame in decoded.frames]
        if not all(allowed):
            rejected += allowed.count(False)
            detail = f"the token is limited to meeting {meeting!r}"
            decoded = _drop(decoded, counters, allowed, FORBIDDEN, detail)
    if decoded.frames:
        wanted = len(decoded.frames)
        granted = take(wanted)
        if granted < wanted:
            rejected += wanted - granted
            detail = "over the daemon's frame rate limit for this sender or address"
            allowed = [position < granted for position in range(wanted)]
            decoded = _drop(decoded, counters, allowed, RATE_LIMITED, detail)
    return decoded, rejected


def _drop(
    decoded: Decoded, counters: TransportCounters, allowed: list[bool], reason: str, detail: str
) -> Decoded:
    """The message without its good frames that are not ``allowed`` (counted as ``reason``
    instead of accepted), and with an error for them (``_refused``)."""
    counters.withdraw(reason, allowed.count(False))
    frames = [frame for frame, ok in zip(decoded.frames, allowed, strict=True) if ok]
    return Decoded(frames, _refused(decoded, allowed, reason, detail))


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


def _refused(
    decoded: Decoded, allowed: list[bool], reason: str, detail: str
) -> list[ProtocolError]:
    """The message's errors plus one ``reason`` error per good frame not ``allowed``, at the
    frame's index in the message, in index order; or, when no frame is allowed, one for the
    whole message (index None: none of its frames was accepted, and a single unbatched frame
    has no index, PROTOCOL.md §6)."""
    if not any(allowed):
        return [*decoded.errors, ProtocolError(reason, detail, None)]
    bad = {error.index for error in decoded.errors}
    good_indexes = itertools.islice(
        (i for i in itertools.count() if i not in bad), len(decoded.frames)
    )
    refused = [
        ProtocolError(reason, detail, index)
        for index, ok in zip(good_indexes, allowed, strict=True)
        if not ok
    ]
    return sorted([*decoded.errors, *refused], key=lambda error: error.index or 0)


def _in_scope(frame: Frame, meeting: str) -> bool:
    """Whether a session whose token is limited to ``meeting`` may send ``frame`` (§7.8)."""
    if isinstance(frame, RtcSample | Event):
        return frame.meeting == meeting
    return isinstance(frame, Hello)
