"""Property tests: whatever comes in, decode_message returns a Decoded and raises nothing.

(a) arbitrary bytes; (b) valid frames round-trip through both encodings and JSON lines;
(c) valid messages mutated at the byte level or with field values of other types;
(d) batches with some frames corrupted: every element is accounted for, good ones kept.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import (
    FRAME_TYPES,
    REASONS,
    Decoded,
    Frame,
    Hello,
    Limits,
    decode_message,
    encode_json,
    encode_json_lines,
    encode_msgpack,
)
from protocol.codec import MAX_DETAIL_CHARS
from protocol.jsonschema import IDENTIFIER_FIELDS
from tests.protocol.strategies import as_map, batches, frames, wire_values

# BWMON_HYPOTHESIS_EXAMPLES=20000 for a long hunt; the default keeps the suite fast.
FAST = settings(
    max_examples=int(os.environ.get("BWMON_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROOMY = Limits(max_message_bytes=1 << 20, max_frames_per_message=10_000)
ENCODERS = {"msgpack": msgspec.msgpack.encode, "json": msgspec.json.encode}


def check_decoded(decoded: Decoded) -> None:
    """The invariants of any result: our types, known reasons, valid frames."""
    assert isinstance(decoded, Decoded)
    for error in decoded.errors:
        assert error.reason in REASONS
        assert error.index is None or error.index >= 0
        assert error.detail.isprintable()
        assert len(error.detail) <= MAX_DETAIL_CHARS
    for frame in decoded.frames:
        assert isinstance(frame, FRAME_TYPES)
        # a decoded frame satisfies every constraint: it survives its own round trip
        again = decode_message(encode_msgpack(frame), ROOMY)
        assert again.errors == []
        assert again.frames == [frame]
    indexes = [e.index for e in decoded.errors if e.index is not None]
    assert indexes == sorted(set(indexes))


# --- (a) arbitrary bytes ---------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2048))
@example(b"")
@example(b"[" * 2000)
@example(b"\x91" * 2000)
@example(b"{\n\n{")
@example(b"\xdd\xff\xff\xff\xff")
def test_arbitrary_bytes(data: bytes) -> None:
    check_decoded(decode_message(data))
    check_decoded(decode_message(data, Limits(max_message_bytes=64, max_frames_per_message=2)))


@FAST
@given(st.binary(max_size=512).map(lambda b: b"{" + b), st.binary(max_size=512))
def test_arbitrary_bytes_that_look_like_json(head: bytes, tail: bytes) -> None:
    check_decoded(decode_message(head + b"\n" + tail))
    check_decoded(decode_message(b"[" + head + b"," + tail))


@FAST
@given(st.lists(st.text(max_size=80), max_size=6))
def test_arbitrary_text_lines(lines: list[str]) -> None:
    check_decoded(decode_message("\n".join(lines).encode()))


# --- (b) round trips -------------------------------------------------------------------------


@FAST
@given(frames)
def test_round_trip_one_frame(frame: Frame) -> None:
    for data in (encode_msgpack(frame), encode_json(frame), encode_json_lines([frame])):
        decoded = decode_message(data, ROOMY)
        assert decoded.errors == []
        assert decoded.frames == [frame]
    # the plain-map form (what another language's encoder would write) decodes the same
    for encode in ENCODERS.values():
        assert decode_message(encode(as_map(frame)), ROOMY).frames == [frame]


@FAST
@given(batches)
def test_round_trip_batch(batch: list[Frame]) -> None:
    for data in (encode_msgpack(batch), encode_json(batch)):
        decoded = decode_message(data, ROOMY)
        assert decoded.errors == []
        assert decoded.frames == batch
    if batch:  # JSON lines cannot express an empty batch: zero lines is an empty message
        decoded = decode_message(encode_json_lines(batch), ROOMY)
        assert decoded.errors == []
        assert decoded.frames == batch


# --- (c) mutations ---------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    message: Frame | list[Frame] = draw(st.one_of(frames, batches))
    data = bytearray(draw(st.sampled_from([encode_msgpack, encode_json]))(message))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "set" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
    return bytes(data)


@FAST
@given(mutated_bytes())
def test_mutated_bytes(data: bytes) -> None:
    check_decoded(decode_message(data, ROOMY))


@st.composite
def frame_with_replaced_value(draw: st.DrawFn) -> dict[str, Any]:
    mapping = as_map(draw(frames))
    keys = sorted(mapping)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from([*keys, "new_key"]))
        if draw(st.booleans()) and key in mapping:
            del mapping[key]
        else:
            mapping[key] = draw(wire_values)
    return mapping


@FAST
@given(frame_with_replaced_value(), st.sampled_from(sorted(ENCODERS)))
def test_field_values_of_other_types(mapping: dict[str, Any], encoding: str) -> None:
    decoded = decode_message(ENCODERS[encoding](mapping), ROOMY)
    check_decoded(decoded)
    assert len(decoded.frames) + len(decoded.errors) == 1


# --- (d) batches with corrupted frames -------------------------------------------------------


def _identifier_keys(mapping: dict[str, Any]) -> tuple[str, ...]:
    return IDENTIFIER_FIELDS[mapping["t"]]


@st.composite
def corrupted(draw: st.DrawFn, frame: Frame) -> Any:
    """The frame as a map, broken in one of the ways a client can break it."""
    mapping = as_map(frame)
    how = draw(st.sampled_from(["replace", "drop", "tag", "identifier", "not_a_map"]))
    if how == "replace":
        mapping[draw(st.sampled_from(sorted(mapping)))] = draw(wire_values)
    elif how == "drop":
        del mapping[draw(st.sampled_from(sorted(mapping)))]
    elif how == "tag":
        mapping["t"] = draw(st.sampled_from(["", "rtc2", "Hello", 7, None]))
    elif how == "identifier":
        key = draw(st.sampled_from(_identifier_keys(mapping)))
        mapping[key] = draw(st.sampled_from(["", "a b", "a\x00", "x" * 600, "\u2028"]))
    else:
        return draw(wire_values.filter(lambda v: not isinstance(v, dict)))
    return mapping


@st.composite
def batch_with_corruption(draw: st.DrawFn) -> tuple[list[Frame], list[Any], set[int]]:
    originals = draw(st.lists(frames, min_size=1, max_size=8))
    broken = draw(st.sets(st.integers(min_value=0, max_value=len(originals) - 1)))
    elements = [
        draw(corrupted(frame)) if i in broken else as_map(frame)
        for i, frame in enumerate(originals)
    ]
    return originals, elements, broken


@FAST
@given(batch_with_corruption(), st.sampled_from(sorted(ENCODERS)))
def test_corrupted_frames_in_a_batch(
    case: tuple[list[Frame], list[Any], set[int]], encoding: str
) -> None:
    originals, elements, broken = case
    decoded = decode_message(ENCODERS[encoding](elements), ROOMY)
    check_decoded(decoded)
    assert len(decoded.frames) + len(decoded.errors) == len(elements)
    rejected = {error.index for error in decoded.errors}
    assert None not in rejected
    assert rejected <= broken  # a corruption may happen to be valid; a good frame is never lost
    kept = [i for i in range(len(elements)) if i not in rejected]
    for i, frame in zip(kept, decoded.frames, strict=True):
        if i not in broken:
            assert frame == originals[i]


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_corruption_example(encoding: str) -> None:
    """One fixed case of the property above, readable on its own."""
    good = [{"t": "hello", "boot": "a"}, {"t": "hello", "boot": "b"}]
    elements = [good[0], {"t": "hello", "boot": 5}, good[1], "nope"]
    decoded = decode_message(ENCODERS[encoding](elements))
    assert decoded.frames == [Hello(boot="a"), Hello(boot="b")]
    assert [e.index for e in decoded.errors] == [1, 3]
