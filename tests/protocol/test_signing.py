"""Signed datagrams (PROTOCOL.md §2.3): the envelope's layout, and verification that accepts
exactly what was signed and never raises, whatever the bytes."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ProtocolError, decode_message, encode_msgpack
from protocol.signing import (
    BAD_SIGNATURE,
    ENVELOPE_BYTES,
    is_signed,
    sign_datagram,
    verify_datagram,
)
from tests.helpers import rtc

FAST = settings(
    max_examples=int(os.environ.get("BWMON_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEY = b"k" * 32
OTHER = b"o" * 32
NOW = 1_764_000_000.0
MAX_AGE = 60.0


def reason(result: bytes | ProtocolError) -> str:
    assert isinstance(result, ProtocolError)
    assert result.index is None
    assert result.detail.isprintable()
    return result.reason


def test_envelope_layout_matches_the_spec() -> None:
    payload = encode_msgpack(rtc(1))
    signed = sign_datagram(KEY, payload, NOW)
    assert signed[0] == 0xC1
    assert signed[1] == 0x01
    assert int.from_bytes(signed[2:10], "big") == int(NOW * 1000)
    expected = hmac.new(KEY, signed[:10] + payload, hashlib.sha256).digest()[:16]
    assert signed[10:26] == expected
    assert signed[ENVELOPE_BYTES:] == payload
    assert len(signed) == len(payload) + 26
    assert is_signed(signed)
    assert not is_signed(payload)


def test_signed_payload_verifies_and_decodes() -> None:
    payload = encode_msgpack([rtc(1), rtc(2)])
    result = verify_datagram([KEY], sign_datagram(KEY, payload, NOW), NOW + 1, MAX_AGE)
    assert result == payload
    assert isinstance(result, bytes)
    assert len(decode_message(result).frames) == 2


def test_any_of_several_keys_verifies_for_rotation() -> None:
    signed = sign_datagram(KEY, b"[]", NOW)
    assert verify_datagram([OTHER, KEY], signed, NOW, MAX_AGE) == b"[]"
    assert reason(verify_datagram([OTHER], signed, NOW, MAX_AGE)) == BAD_SIGNATURE


@pytest.mark.parametrize("skew", [-61.0, 61.0, 1e9])
def test_stale_or_future_send_time_is_refused(skew: float) -> None:
    signed = sign_datagram(KEY, b"[]", NOW)
    result = verify_datagram([KEY], signed, NOW + skew, MAX_AGE)
    assert reason(result) == BAD_SIGNATURE
    assert isinstance(result, ProtocolError)
    assert "stale" in result.detail


def test_unsigned_unknown_version_and_no_keys_are_refused() -> None:
    payload = encode_msgpack(rtc(1))
    signed = sign_datagram(KEY, payload, NOW)
    assert reason(verify_datagram([KEY], payload, NOW, MAX_AGE)) == BAD_SIGNATURE
    other_version = signed[:1] + b"\x02" + signed[2:]
    assert reason(verify_datagram([KEY], other_version, NOW, MAX_AGE)) == BAD_SIGNATURE
    result = verify_datagram([], signed, NOW, MAX_AGE)
    assert isinstance(result, ProtocolError)
    assert "no udp key" in result.detail


def test_sign_refuses_bad_times_and_empty_keys() -> None:
    with pytest.raises(ValueError, match="out of range"):
        sign_datagram(KEY, b"[]", -1.0)
    with pytest.raises(ValueError, match="empty"):
        sign_datagram(b"", b"[]", NOW)


@FAST
@given(data=st.binary(max_size=2048), now=st.floats(allow_nan=True, allow_infinity=True))
def test_verify_never_raises_on_arbitrary_bytes(data: bytes, now: float) -> None:
    result = verify_datagram([KEY, OTHER], data, now, MAX_AGE)
    assert reason(result) == BAD_SIGNATURE


@FAST
@given(data=st.binary(min_size=ENVELOPE_BYTES, max_size=2048))
def test_arbitrary_bytes_with_a_valid_header_do_not_verify(data: bytes) -> None:
    forged = b"\xc1\x01" + int(NOW * 1000).to_bytes(8, "big") + data[10:]
    assert reason(verify_datagram([KEY], forged, NOW, MAX_AGE)) == BAD_SIGNATURE


@FAST
@given(
    payload=st.binary(max_size=1500),
    at=st.floats(min_value=0, max_value=4e9),
    skew=st.floats(min_value=-MAX_AGE + 0.01, max_value=MAX_AGE - 0.01),
)
def test_exactly_the_signed_bytes_verify(payload: bytes, at: float, skew: float) -> None:
    signed = sign_datagram(KEY, payload, at)
    assert verify_datagram([KEY], signed, at + skew, MAX_AGE) == payload
    # a shorter or a longer datagram is not the signed one
    assert reason(verify_datagram([KEY], signed[:-1], at, MAX_AGE)) == BAD_SIGNATURE
    assert reason(verify_datagram([KEY], signed + b"\x00", at, MAX_AGE)) == BAD_SIGNATURE


@FAST
@given(payload=st.binary(max_size=600), data=st.data())
def test_flipping_any_bit_fails(payload: bytes, data: st.DataObject) -> None:
    signed = sign_datagram(KEY, payload, NOW)
    bit = data.draw(st.integers(min_value=0, max_value=len(signed) * 8 - 1))
    flipped = bytearray(signed)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert reason(verify_datagram([KEY], bytes(flipped), NOW, MAX_AGE)) == BAD_SIGNATURE


def test_flipping_every_bit_of_one_datagram_fails() -> None:
    signed = sign_datagram(KEY, encode_msgpack(rtc(7)), NOW)
    for bit in range(len(signed) * 8):
        flipped = bytearray(signed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert reason(verify_datagram([KEY], bytes(flipped), NOW, MAX_AGE)) == BAD_SIGNATURE


@FAST
@given(key=st.binary(min_size=1, max_size=200), payload=st.binary(max_size=1500))
def test_tag_is_hmac_sha256_for_any_key(key: bytes, payload: bytes) -> None:
    signed = sign_datagram(key, payload, NOW)
    expected = hmac.new(key, signed[:10] + payload, hashlib.sha256).digest()[:16]
    assert signed[10:26] == expected
    assert verify_datagram([key], signed, NOW, MAX_AGE) == payload
