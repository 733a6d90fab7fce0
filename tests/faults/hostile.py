"""Hostile datagrams for the fuzz of the UDP port: one generator, seeded, no hypothesis.

Every datagram is at most 65,507 bytes (what IPv4 carries). The kinds:

- ``random``: random bytes, 1 to 2,000 of them;
- ``max_junk``: 65,507 random bytes (the largest datagram a daemon reads);
- ``truncated``: a valid MessagePack batch cut short;
- ``deep``: MessagePack arrays or JSON arrays nested up to 256 levels, or 2,000 to 30,000;
- ``huge_headers``: array, map and string headers that claim 2³² - 1 elements or bytes;
- ``over_batch``: more frames than ``max_frames_per_message`` allows;
- ``wrong_types``, ``unknown_fields``, ``hostile_strings``: frames that fail validation;
- ``thousand_invalid``: the worst case of issue 23, some 50 KB holding 1,000 frames that each
  fail validation, in rotating ways, so that each costs its own error;
- ``many_elements``: 64 KB arrays of up to 65,535 empty elements (nil, 0, empty maps), rejected
  whole (one error) after some 6 ms of decoding: as costly as ``thousand_invalid`` with one
  frame's weight.

Frames that could pass validation (``unknown_fields`` mixes in a few valid ones, unknown keys
being ignored by the protocol; one of the hostile strings is a valid identifier) belong to the
meetings of ``FUZZ_MEETINGS`` and to a few streams, so they never touch the valid streams'
totals and never create more than a few streams.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from protocol.frames import is_identifier

MAX_DATAGRAM = 65_507
_mp = msgspec.msgpack.Encoder()


def _frame(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "t": "rtc",
        "m": "fuzz-m",
        "p": "fuzz-p",
        "c": "fuzz-c",
        "q": 1,
        "ts": 1_764_000_000_000.0,
        "aob": 1000,
    }
    frame.update(overrides)
    return frame


# One invalid frame each, small (about 50 bytes as MessagePack), each failing differently.
_INVALID: tuple[dict[str, Any], ...] = (
    _frame(q=-1),  # out_of_range
    _frame(q="one"),  # wrong_type
    {"t": "rtc", "m": "fuzz-m", "p": "fuzz-p"},  # missing_field
    _frame(t="nope"),  # unknown_tag
    _frame(m="a b"),  # bad_string (whitespace in an identifier)
    _frame(qlr="x" * 20),  # bad_value (enum), echoed in the error detail
    _frame(aob=2**60),  # out_of_range (over 2**53 - 1)
    _frame(vwi=[1, 2]),  # wrong_type
    _frame(t=7),  # unknown_tag (not a string)
)

_HOSTILE_STRINGS = (
    "\u202egnp.exe",  # right-to-left override
    "nul\x00byte",
    "tab\there",
    "\U0001f600" * 129,  # 129 code points: one too many for an identifier
    "\U0001f4a9" * 600,  # 600 code points: a URL over its 512
    "a" * 129,
    "",
    "%s%n%x{0}${jndi:ldap://x}",
)


# The meetings a frame of this module that passes validation can belong to.
FUZZ_MEETINGS = frozenset({"fuzz-m"} | {s for s in _HOSTILE_STRINGS if is_identifier(s)})


class HostileDatagrams:
    """Seeded generator. ``light()`` yields ``(kind, datagram)`` in a rotating mix of the kinds
    that are cheap to decode; the heavy kinds, ``thousand_invalid`` and ``many_elements``
    (some 4 to 6 ms each to decode) and ``max_junk`` (65,507 bytes), are asked for one by one,
    so that a test sends them at the rate and in the bursts it chooses."""

    def __init__(self, seed: int = 23, max_frames_per_message: int = 1_000) -> None:
        self.rng = random.Random(seed)
        self.max_frames = max_frames_per_message
        self._kinds: tuple[tuple[str, Callable[[], bytes]], ...] = (
            ("random", self.random_bytes),
            ("truncated", self.truncated),
            ("deep", self.deep),
            ("huge_headers", self.huge_headers),
            ("wrong_types", self.wrong_types),
            ("unknown_fields", self.unknown_fields),
            ("hostile_strings", self.hostile_strings),
            ("over_batch", self.over_batch),
        )
        self._thousand: list[bytes] = [self._build_thousand(i) for i in range(4)]

    def light(self) -> Iterator[tuple[str, bytes]]:
        while True:
            for kind, make in self._kinds:
                yield kind, make()

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 2_000))

    def max_junk(self) -> bytes:
        return self.rng.randbytes(MAX_DATAGRAM)

    def truncated(self) -> bytes:
        whole = _mp.encode([_frame(q=i) for i in range(1, 30)])
        return whole[: self.rng.randint(1, len(whole) - 1)]

    def deep(self) -> bytes:
        # Up to 256 levels every daemon decodes; from 2,000 on the reference daemon rejects
        # (PROTOCOL.md §5.1). Between them, where its stack's depth decides, none.
        depth = (
            self.rng.randint(2, 256) if self.rng.random() < 0.3 else self.rng.randint(2_000, 30_000)
        )
        if self.rng.random() < 0.5:
            return b"\x91" * depth + b"\xc0"  # fixarray of one, nested
        return b"[" * depth + b"]" * depth

    def huge_headers(self) -> bytes:
        return self.rng.choice(
            (
                b"\xdd\xff\xff\xff\xff" + b"\x80" * 16,  # array32 of 2**32 - 1 elements
                b"\xdf\xff\xff\xff\xff\xa1t\xa3rtc",  # map32 of 2**32 - 1 pairs
                b"\xdb\xff\xff\xff\xff" + b"x" * 64,  # str32 of 2**32 - 1 bytes
                b"\xc6\xff\xff\xff\xff" + b"x" * 64,  # bin32
                b"\x81\xa1t\xdb\xff\xff\xff\xff",  # a tag claiming 4 GB
            )
        )

    def wrong_types(self) -> bytes:
        frames = [self.rng.choice(_INVALID) for _ in range(self.rng.randint(1, 20))]
        return _mp.encode(frames) if self.rng.random() < 0.7 else json.dumps(frames).encode()

    def unknown_fields(self) -> bytes:
        frames = []
        for _ in range(self.rng.randint(1, 10)):
            extra = {f"x{self.rng.randint(0, 10**9)}": self.rng.randbytes(8) for _ in range(5)}
            if self.rng.random() < 0.1:  # valid but for keys the protocol ignores
                frames.append({**_frame(p=f"fuzz-p{self.rng.randint(0, 3)}"), **extra})
            else:
                frames.append({**_frame(q=-5), **extra})
        return _mp.encode(frames)

    def hostile_strings(self) -> bytes:
        key = self.rng.choice(("m", "p", "c", "turn", "pair", "boot", "qlr", "lct"))
        if self.rng.random() < 0.2:  # invalid UTF-8: a lone surrogate and a stray byte
            frame = _frame(**{key: "XXXX"})
            encoded = _mp.encode(frame) if self.rng.random() < 0.5 else json.dumps(frame).encode()
            return encoded.replace(b"XXXX", b"\xed\xa0\x80\xff")
        frame = _frame(**{key: self.rng.choice(_HOSTILE_STRINGS)})
        if self.rng.random() < 0.5:
            return _mp.encode(frame)
        return json.dumps(frame, ensure_ascii=False).encode()

    def thousand_invalid(self) -> bytes:
        return self.rng.choice(self._thousand)

    def _build_thousand(self, offset: int) -> bytes:
        frames = [_INVALID[(i + offset) % len(_INVALID)] for i in range(self.max_frames)]
        data = _mp.encode(frames)
        assert len(data) <= MAX_DATAGRAM
        return data

    def many_elements(self) -> bytes:
        return self.rng.choice(
            (
                b"\xdc\xff\xff" + b"\x00" * (MAX_DATAGRAM - 3),  # array16 of 0s, cut short
                b"\xdc\xff\xff" + b"\x80" * (MAX_DATAGRAM - 3),  # of empty maps
                b"\xdc\xff\xff" + b"\xc0" * (MAX_DATAGRAM - 3),  # of nils
                b"[" + b",".join([b"0"] * 32_000) + b"]",  # 32,000 elements: batch_too_large
            )
        )

    def over_batch(self) -> bytes:
        return _mp.encode([{"t": "x"}] * (self.max_frames + 1))
