"""``Wire``: the byte stream under a WebSocket connection, which the fan-out writes whole frames
to without waiting. Frames never interleave, whatever the socket takes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from collector.wire import Wire, websocket_frame

BIG = bytes(range(256)) * 4096  # 1 MiB: more than a small socket buffer takes at once


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 100_000])
def test_a_frame_is_what_wsproto_writes(size: int) -> None:
    server = Connection(ConnectionType.SERVER)
    payload = b"x" * size
    assert websocket_frame(payload, text=False) == server.send(BytesMessage(data=payload))
    assert websocket_frame(payload, text=True) == server.send(TextMessage(data=payload.decode()))


@pytest.fixture
def sockets() -> Iterator[tuple[Wire, trio.socket.SocketType]]:
    """Our end as a ``Wire`` with a small send buffer, and the peer's raw socket."""
    ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with ours, theirs:
        yield Wire(trio.SocketStream(ours), b""), theirs


async def read(sock: trio.socket.SocketType, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            data += await sock.recv(65536)
    return bytes(data)


async def test_a_frame_the_socket_takes_whole_is_written_now(
    sockets: tuple[Wire, trio.socket.SocketType],
) -> None:
    wire, theirs = sockets
    assert wire.send_now(b"frame")
    assert not wire.pending
    assert await read(theirs, 5) == b"frame"


async def test_the_rest_of_a_frame_goes_before_anything_else(
    sockets: tuple[Wire, trio.socket.SocketType],
) -> None:
    wire, theirs = sockets
    assert wire.send_now(BIG)
    assert wire.pending  # the socket took part of it
    assert not wire.send_now(b"later")  # nothing jumps the queue
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.send_all, b"after")  # trio-websocket's next write
        assert await read(theirs, len(BIG) + 5) == BIG + b"after"
    assert not wire.pending


async def test_flush_sends_the_rest(
    sockets: tuple[Wire, trio.socket.SocketType],
) -> None:
    wire, theirs = sockets
    assert wire.send_now(BIG)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.flush)
        assert await read(theirs, len(BIG)) == BIG
    assert not wire.pending


async def test_nothing_is_written_now_while_another_write_waits(
    sockets: tuple[Wire, trio.socket.SocketType],
) -> None:
    wire, theirs = sockets
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.send_all, BIG)
        await trio.testing.wait_all_tasks_blocked()
        assert not wire.send_now(b"between")
        assert await read(theirs, len(BIG)) == BIG
    assert wire.send_now(b"then")
    assert await read(theirs, 4) == b"then"


async def test_a_full_or_closed_socket_takes_nothing_now(
    sockets: tuple[Wire, trio.socket.SocketType],
) -> None:
    wire, theirs = sockets
    written = 0
    while wire.send_now(b"x"):  # one byte: written whole or not at all
        written += 1
    assert not wire.pending
    assert await read(theirs, written) == b"x" * written  # the refused byte never went
    await wire.aclose()
    assert not wire.send_now(b"closed")
