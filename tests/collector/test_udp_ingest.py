"""UDP ingest on a real loopback socket: decoding, counting, a full queue never blocks."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from collector.ingest.counters import TransportCounters
from collector.ingest.udp import kernel_drops, open_udp_socket, receive_buffer_size, serve_udp
from protocol import Frame, Limits, encode_json, encode_msgpack
from tests.helpers import event, http_sample, rtc, wait_for

LIMITS = Limits(max_message_bytes=2048, max_frames_per_message=10)


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = open_udp_socket("127.0.0.1", 0, 1 << 20)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    yield server, client
    client.close()
    server.close()


async def _collect(receive: trio.MemoryReceiveChannel[list[Frame]], want: int) -> list[Frame]:
    frames: list[Frame] = []
    with trio.fail_after(5):
        while len(frames) < want:
            frames += await receive.receive()
    return frames


async def test_frames_and_rejections_are_counted(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, send, counters, LIMITS)
        client.send(encode_msgpack(rtc(1)))
        client.send(encode_msgpack([rtc(2), http_sample(), event()]))
        client.send(encode_json(rtc(3)))
        client.send(b"\xc1garbage")
        client.send(b"x" * 3000)  # over the 2,048-byte limit
        client.send(b'{"t":"nope"}')
        client.send(encode_msgpack([rtc(4)] * 11))  # more frames than allowed
        frames = await _collect(receive, 5)
        await wait_for(lambda: counters.messages == 7)
        nursery.cancel_scope.cancel()
    assert [getattr(f, "seq", None) for f in frames] == [1, 2, 1, None, 3]
    assert counters.frames_accepted == 5
    assert counters.rejected_by_reason == {
        "malformed": 1,
        "too_large": 1,
        "unknown_tag": 1,
        "batch_too_large": 1,
    }
    assert counters.messages == 7


async def test_full_queue_is_counted_and_reading_goes_on(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    counters = TransportCounters()
    send, receive = trio.open_memory_channel[list[Frame]](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_udp, server, send, counters, LIMITS, 1)
        for seq in range(1, 21):
            client.send(encode_msgpack(rtc(seq)))
        await wait_for(lambda: counters.messages == 20)
        nursery.cancel_scope.cancel()
    # Nobody read the queue: one batch waits in it, every other frame was counted as dropped.
    assert len(receive.receive_nowait()) == 1
    assert counters.queue_full_frames == 19
    assert counters.frames_accepted == 1


def test_socket_facts() -> None:
    sock = open_udp_socket("127.0.0.1", 0, 1 << 20)
    try:
        assert receive_buffer_size(sock) >= 65_536
        assert kernel_drops(sock) == 0
    finally:
        sock.close()
