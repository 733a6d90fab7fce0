"""Signed UDP datagrams (PROTOCOL.md §2.3): a 26-byte envelope around an ordinary message.

::

    0xC1 | 0x01 (version) | send time (u64 big-endian, ms since the epoch) | tag (16) | payload

``tag`` is the first 16 bytes of HMAC-SHA256(key, the 10 header bytes + payload). 0xC1 is the
one byte MessagePack never uses and no JSON message starts with, so a signed datagram can never
be mistaken for an unsigned message (§3.5).

``sign_datagram`` is what an emitter calls once per datagram at send time; ``verify_datagram``
what the daemon calls when it holds keys. ``verify_datagram`` never raises: whatever the input,
it returns the payload or a ``ProtocolError`` with reason ``bad_signature``. Tags are compared
in constant time. Replays within the age window are not detected (§2.3 says why that is
harmless for counters).

Imports nothing but the standard library and ``protocol``: a Python emitter signs without the
daemon's dependencies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Final

from protocol.codec import ProtocolError

BAD_SIGNATURE: Final = "bad_signature"

MARK: Final = 0xC1
VERSION: Final = 0x01
HEADER_BYTES: Final = 10
TAG_BYTES: Final = 16
ENVELOPE_BYTES: Final = HEADER_BYTES + TAG_BYTES

_HEADER = struct.Struct(">BBQ")
_MAX_MS: Final = (1 << 64) - 1


def is_signed(data: bytes) -> bool:
    """Whether ``data`` starts like a signed datagram (whatever its validity)."""
    return data[:1] == b"\xc1"


_BLOCK: Final = 64  # SHA-256's block size
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


@functools.lru_cache(maxsize=64)
def _keyed(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """The inner and outer SHA-256 states of HMAC (RFC 2104) after absorbing the padded key.
    Reusing them skips two of the four compressions of a short message: ``hmac.digest`` costs
    about 1.5 times as much per datagram."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(padded.translate(_IPAD)), hashlib.sha256(padded.translate(_OPAD))


def _tag(key: bytes, signed: bytes) -> bytes:
    """The first 16 bytes of HMAC-SHA256(key, signed)."""
    inner, outer = _keyed(key)
    inner = inner.copy()
    inner.update(signed)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()[:TAG_BYTES]


def sign_datagram(key: bytes, payload: bytes, now: float) -> bytes:
    """The signed datagram carrying ``payload``, sent at ``now`` (Unix seconds).

    Raises ``ValueError`` when ``now`` is not a time from 1970 on, or ``key`` is empty."""
    if not key:
        raise ValueError("the signing key is empty")
    sent_ms = int(now * 1000)  # NaN and infinity raise ValueError / OverflowError here
    if not 0 <= sent_ms <= _MAX_MS:
        raise ValueError(f"send time {now!r} is out of range")
    header = _HEADER.pack(MARK, VERSION, sent_ms)
    return header + _tag(key, header + payload) + payload


def verify_datagram(
    keys: Sequence[bytes], data: bytes, now: float, max_age_s: float
) -> bytes | ProtocolError:
    """The payload of ``data`` if it is signed with one of ``keys`` and its send time is within
    ``max_age_s`` of ``now`` (either way); else a ``ProtocolError`` (``bad_signature``, index
    None) whose detail says why. Never raises."""
    if len(data) < ENVELOPE_BYTES or data[0] != MARK:
        return ProtocolError(BAD_SIGNATURE, "the datagram is not signed", None)
    if data[1] != VERSION:
        return ProtocolError(
            BAD_SIGNATURE, f"unknown signature version {data[1]} (this daemon knows 1)", None
        )
    if not keys:
        return ProtocolError(BAD_SIGNATURE, "this daemon has no udp key", None)
    sent_ms = int.from_bytes(data[2:HEADER_BYTES], "big")
    if not abs(now * 1000 - sent_ms) <= max_age_s * 1000:  # `not <=`: NaN is stale too
        return ProtocolError(
            BAD_SIGNATURE, f"stale: signed more than {max_age_s:g} s from the daemon's time", None
        )
    tag = data[HEADER_BYTES:ENVELOPE_BYTES]
    signed = data[:HEADER_BYTES] + data[ENVELOPE_BYTES:]
    for key in keys:
        if hmac.compare_digest(_tag(key, signed), tag):
            return data[ENVELOPE_BYTES:]
    return ProtocolError(BAD_SIGNATURE, "the signature matches no key", None)
