"""A reference emitter for Python clients: frames → datagrams under an MTU budget → UDP.

Standard library and msgspec only, so an application server can send frames without installing
trio or anything else of the daemon. Frames are encoded once each and packed into MessagePack
arrays (batches) as long as the datagram stays within ``budget`` bytes (1,200 by default, safe
under common path MTUs); a frame larger than the budget travels alone.

Sending never blocks the application: a full socket buffer drops the datagram and counts it in
``dropped`` (the next sample carries the cumulative totals, so nothing is lost for good).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator

from protocol.codec import encode_msgpack
from protocol.frames import Frame

DEFAULT_BUDGET = 1200


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def pack(encoded: Iterable[bytes], budget: int = DEFAULT_BUDGET) -> Iterator[tuple[bytes, int]]:
    """Group MessagePack-encoded frames into batch datagrams of at most ``budget`` bytes.

    Yields each datagram with the number of frames it holds.
    """
    parts: list[bytes] = []
    size = 3  # the largest array header that a datagram can need
    for frame in encoded:
        if parts and size + len(frame) > budget:
            yield _array_header(len(parts)) + b"".join(parts), len(parts)
            parts, size = [], 3
        parts.append(frame)
        size += len(frame)
    if parts:
        yield _array_header(len(parts)) + b"".join(parts), len(parts)


def pack_json(
    encoded: Iterable[bytes], budget: int = DEFAULT_BUDGET
) -> Iterator[tuple[bytes, int]]:
    """The same as ``pack`` for JSON-encoded frames: JSON arrays of at most ``budget`` bytes."""
    parts: list[bytes] = []
    size = 2
    for frame in encoded:
        if parts and size + len(frame) + 1 > budget:
            yield b"[" + b",".join(parts) + b"]", len(parts)
            parts, size = [], 2
        parts.append(frame)
        size += len(frame) + 1
    if parts:
        yield b"[" + b",".join(parts) + b"]", len(parts)


class UdpEmitter:
    """Send frames to a daemon over UDP, batched per datagram."""

    def __init__(self, host: str, port: int, budget: int = DEFAULT_BUDGET) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect((host, port))
        self.budget = budget
        self.datagrams = 0
        self.frames = 0
        self.dropped = 0

    def send(self, frames: Iterable[Frame]) -> int:
        """Encode, pack and send; return the number of datagrams sent."""
        sent = 0
        for datagram, count in pack((encode_msgpack(f) for f in frames), self.budget):
            if self.send_datagram(datagram, count):
                sent += 1
        return sent

    def send_datagram(self, datagram: bytes, frames: int) -> bool:
        """Send one packed datagram holding ``frames`` frames; False if it was dropped."""
        try:
            self._sock.send(datagram)
        except (BlockingIOError, ConnectionRefusedError):
            self.dropped += 1
            return False
        self.datagrams += 1
        self.frames += frames
        return True

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpEmitter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
