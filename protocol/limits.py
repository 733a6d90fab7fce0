"""Per-message limits: a msgspec Struct, kept out of ``protocol.codec``, which may be compiled
with mypyc (``setup.py``); mypyc does not keep a Struct's class options."""

from __future__ import annotations

import msgspec


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-message limits a daemon enforces (strings and numbers are limited by the schema)."""

    max_message_bytes: int = 65_507
    max_frames_per_message: int = 1_000
