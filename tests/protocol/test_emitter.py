"""The reference emitter: packing under the datagram budget, and sending to a real socket."""

from __future__ import annotations

import socket

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from protocol import decode_message, encode_json
from protocol.emitter import UdpEmitter, pack, pack_json
from tests.helpers import rtc


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=400), max_size=60),
    budget=st.integers(min_value=64, max_value=2000),
)
def test_pack_keeps_every_frame_in_order_within_the_budget(sizes: list[int], budget: int) -> None:
    frames = [msgspec.msgpack.encode("x" * size) for size in sizes]
    datagrams = list(pack(frames, budget))
    decoded = [item for data, _ in datagrams for item in msgspec.msgpack.decode(data)]
    assert decoded == ["x" * size for size in sizes]
    assert [count for _, count in datagrams] == [
        len(msgspec.msgpack.decode(data)) for data, _ in datagrams
    ]
    for data, count in datagrams:
        # Over budget only when one frame alone is larger than the budget.
        assert len(data) <= budget or count == 1


def test_pack_json_makes_arrays_the_daemon_accepts() -> None:
    frames = [encode_json(rtc(seq)) for seq in range(1, 30)]
    datagrams = list(pack_json(frames, 1200))
    assert len(datagrams) > 1
    seqs = []
    for data, count in datagrams:
        assert len(data) <= 1200
        decoded = decode_message(data)
        assert not decoded.errors
        assert len(decoded.frames) == count
        seqs += [frame.seq for frame in decoded.frames]  # type: ignore[union-attr]
    assert seqs == list(range(1, 30))


def test_udp_emitter_sends_batches_the_daemon_decodes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        with UdpEmitter("127.0.0.1", server.getsockname()[1], budget=1200) as emitter:
            sent = emitter.send([rtc(seq) for seq in range(1, 11)])
            assert emitter.frames == 10
            assert emitter.datagrams == sent
            received = [decode_message(server.recv(65535)) for _ in range(sent)]
    assert [f.seq for d in received for f in d.frames] == list(range(1, 11))  # type: ignore[union-attr]
