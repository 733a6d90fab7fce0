"""Daemon → client messages of a WebSocket ingest session (PROTOCOL.md §7), and the answer to
``POST /ingest`` (§2.4).

The daemon answers ``hello`` with ``welcome``, reports every rejected frame with ``error`` and
acknowledges processed messages with ``ack``. Same encodings as frames: JSON text messages when
the client's hello came as text, MessagePack binary messages otherwise.
"""

from __future__ import annotations

import msgspec

from protocol.frames import PROTOCOL_VERSION


class Welcome(msgspec.Struct, tag="welcome", tag_field="t", kw_only=True):
    session: str
    ack_interval_s: float
    max_message_bytes: int
    max_frames: int
    v: int = PROTOCOL_VERSION


class ErrorReply(msgspec.Struct, tag="error", tag_field="t", kw_only=True):
    """One rejected frame (``index``) or message (``index`` null), by message number ``msg``."""

    msg: int
    index: int | None
    reason: str
    detail: str


class Ack(msgspec.Struct, tag="ack", tag_field="t", kw_only=True):
    """Every message up to ``msg`` has been processed; totals for this connection."""

    msg: int
    accepted: int
    rejected: int


SessionMessage = Welcome | ErrorReply | Ack


class FrameError(msgspec.Struct, kw_only=True, gc=False):
    """One rejected frame (``index``) or message (``index`` null) of a ``POST /ingest``."""

    index: int | None
    reason: str
    detail: str


class IngestAnswer(msgspec.Struct, kw_only=True):
    """The answer to ``POST /ingest`` (PROTOCOL.md §2.4): the message's frames accepted and
    rejected (a whole-message rejection counts 1), and the first rejections, in index order."""

    accepted: int
    rejected: int
    errors: list[FrameError]
