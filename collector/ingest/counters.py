"""Ingest counters per transport: what came in, what was accepted, what was rejected and why.

Counting is per message, never per frame: the good path adds ``len(frames)`` once. Plain ints,
no locks: everything runs in the one trio thread.

What ``frames_rejected`` and ``rejected_by_reason`` count: a rejected frame counts 1, and so does
a message rejected whole, its frames unknown (``too_large``, ``malformed``; on UDP also
``forbidden`` and ``bad_signature``, refused before decoding); frames that decoded but were over
a rate limit count one each (``rate_limited``).
"""

from __future__ import annotations

from typing import Any

from protocol import Decoded


class TransportCounters:
    """Counters of one transport (``udp`` or ``websocket``)."""

    __slots__ = (
        "bytes",
        "frames_accepted",
        "frames_rejected",
        "messages",
        "rejected_by_reason",
    )

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.frames_accepted = 0
        self.frames_rejected = 0
        self.rejected_by_reason: dict[str, int] = {}

    def count(self, decoded: Decoded, size: int) -> None:
        self.messages += 1
        self.bytes += size
        self.frames_accepted += len(decoded.frames)
        if decoded.errors:
            self.frames_rejected += len(decoded.errors)
            by_reason = self.rejected_by_reason
            for error in decoded.errors:
                by_reason[error.reason] = by_reason.get(error.reason, 0) + 1

    def refuse(self, reason: str, size: int) -> None:
        """Count a message refused before decoding (``forbidden``, ``bad_signature``)."""
        self.messages += 1
        self.bytes += size
        self.reject(reason)

    def withdraw(self, reason: str, frames: int) -> None:
        """Move frames already counted as accepted to rejected (``rate_limited``)."""
        self.frames_accepted -= frames
        self.reject(reason, frames)

    def reject(self, reason: str, frames: int = 1) -> None:
        """Count frames refused after decoding (closed session, policy…)."""
        self.frames_rejected += frames
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + frames

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "frames_accepted": self.frames_accepted,
            "frames_rejected": self.frames_rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
        }
