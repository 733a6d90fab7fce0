"""``POST /ingest`` (PROTOCOL.md §2.4) as a plain object: one request's body, its
``Authorization`` header, the sender's address and ``now`` in; the frames for the consumer and
the answer out.

The body is one message, exactly as one WebSocket ingest message (§3), and goes through what a
WebSocket session's messages go through: the one decoder with the WebSocket limits, the token
check of §7.8, the meeting scope and the per-source rate limit (``collector.ingest.session``'s
``screen``), counted in the ``http`` transport's ``TransportCounters`` under the same reason
codes. What differs is only where the token comes from (an ``Authorization: Bearer`` header,
else a ``hello`` that is the message's first frame) and that the answer is one JSON document
with the counts and the first rejections, its status saying how the message fared:

    200  the message was read: its good frames are accepted (maybe none), each bad one listed
    400  rejected whole (``malformed``, ``empty``, ``batch_too_large``…)
    401  ``unauthorized``: no token, or a bad one, where the daemon requires tokens
    403  ``forbidden``: a token without the ``ingest`` right, or none of the frames in its meeting
    413  ``too_large``: larger than ``ingest.max_ws_message_bytes`` (``too_large``)
    429  ``rate_limited``: none of the frames within the sender's allowance (``Retry-After``)
    503  ``busy``: the ingest queue is full, or the daemon is shutting down; the message was not
         read (``Retry-After``)

Each request stands alone: a connection's frame rate (``limits.connection_frames_per_s``) is
WebSocket's; the per-source limit, shared with UDP and WebSocket, applies. No I/O, no clock:
the route in ``collector.app`` reads the body, checks the queue and hands the frames on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from collector.auth import Denied, bearer
from collector.ingest.counters import TransportCounters
from collector.ingest.limits import FORBIDDEN, RATE_LIMITED, take_all
from collector.ingest.session import Admit, SessionSettings, screen
from protocol import Decoded, Frame, Hello, ProtocolError, decode_message
from protocol.codec import TOO_LARGE
from protocol.session import FrameError, IngestAnswer

# The daemon cannot take the message now (its ingest queue is full, or it is shutting down):
# not read, to be sent again after ``Retry-After``. HTTP only (PROTOCOL.md §6).
BUSY: Final = "busy"
# At most this many rejections are listed in an answer; ``rejected`` counts them all.
MAX_ANSWER_ERRORS: Final = 100
RETRY_AFTER_S: Final = 1

# The status of a message none of whose frames was accepted, by the reason it was refused
# whole; any other whole-message reason is the sender's error: 400.
_WHOLE_STATUS: Final = {
    TOO_LARGE: 413,
    RATE_LIMITED: 429,
    FORBIDDEN: 403,
    "unauthorized": 401,
    BUSY: 503,
}


@dataclass(frozen=True, slots=True)
class Posted:
    """What to do with one request: hand ``frames`` to the consumer with ``boot`` (the
    first-frame hello's, which ``rtc`` frames without their own take), answer ``answer`` with
    ``status`` (and ``Retry-After: retry_after_s`` when set)."""

    status: int
    answer: IngestAnswer
    frames: list[Frame] = field(default_factory=list)
    boot: str = ""
    retry_after_s: int | None = None


class IngestPost:
    """``POST /ingest`` for the whole daemon: settings, counters and the token check shared by
    every request (``admit`` reads the token keys in force, so a reload applies at once)."""

    def __init__(
        self, settings: SessionSettings, counters: TransportCounters, admit: Admit
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.admit = admit

    @property
    def max_body_bytes(self) -> int:
        return self.settings.limits.max_message_bytes

    def receive(self, body: bytes, authorization: str | None, source: str, now: float) -> Posted:
        """One request's message, from ``source`` (the peer's address)."""
        counters = self.counters
        token = bearer(authorization)
        header = token is not None
        meeting = None
        if header:  # checked before decoding: a refused sender costs no decoding
            claims = self.admit(token)
            if isinstance(claims, Denied):
                counters.refuse(claims.code, len(body))
                return _whole(claims.code, claims.detail)
            meeting = claims.meeting
        decoded = decode_message(body, self.settings.limits)
        first = _first_frame(decoded)
        hello = first if isinstance(first, Hello) else None
        if not header and not _rejected_whole(decoded):
            # (A message the decoder refused whole is answered with its reason, as a WebSocket
            # session's first message is: it holds no token to check.)
            claims = self.admit(hello.token if hello is not None else None)
            if isinstance(claims, Denied):
                counters.refuse(claims.code, len(body))
                return _whole(claims.code, claims.detail)
            meeting = claims.meeting
        counters.count(decoded, len(body))
        decoded, rejected = screen(
            decoded, counters, meeting, lambda wanted: self._take(source, wanted, now)
        )
        return _answer(decoded, rejected, hello.boot if hello is not None else "")

    def too_large(self) -> Posted:
        """A body over ``max_body_bytes``, refused unread."""
        self.counters.reject(TOO_LARGE)
        return _whole(TOO_LARGE, f"the body is larger than {self.max_body_bytes} bytes")

    def busy(self, size: int, detail: str) -> Posted:
        """A message the daemon cannot take now (queue full, shutting down), refused unread."""
        self.counters.refuse(BUSY, size)
        return _whole(BUSY, detail)

    def _take(self, source: str, wanted: int, now: float) -> int:
        limiter = self.settings.source_limiter
        if limiter is None or not limiter.enabled:
            return wanted
        return take_all([limiter.bucket(source, now)], wanted, now)


def _first_frame(decoded: Decoded) -> Frame | None:
    """The message's frame at index 0, if it was accepted (an error at index 0, or one for
    the whole message, means it was not)."""
    if not decoded.frames or any(error.index in (0, None) for error in decoded.errors):
        return None
    return decoded.frames[0]


def _rejected_whole(decoded: Decoded) -> bool:
    return any(error.index is None for error in decoded.errors)


def _whole(reason: str, detail: str) -> Posted:
    """The answer to a message refused whole, before any of its frames was counted."""
    answer = IngestAnswer(
        accepted=0, rejected=1, errors=[FrameError(index=None, reason=reason, detail=detail)]
    )
    return _posted(answer, [])


def _answer(decoded: Decoded, rejected: int, boot: str) -> Posted:
    errors = [_error(error) for error in decoded.errors[:MAX_ANSWER_ERRORS]]
    answer = IngestAnswer(accepted=len(decoded.frames), rejected=rejected, errors=errors)
    return _posted(answer, decoded.frames, boot)


def _posted(answer: IngestAnswer, frames: list[Frame], boot: str = "") -> Posted:
    status = 200
    if not frames:
        whole = [error.reason for error in answer.errors if error.index is None]
        if whole:
            status = _WHOLE_STATUS.get(whole[0], 400)
    retry = RETRY_AFTER_S if status in (429, 503) else None
    return Posted(status, answer, frames, boot, retry)


def _error(error: ProtocolError) -> FrameError:
    return FrameError(index=error.index, reason=error.reason, detail=error.detail)
