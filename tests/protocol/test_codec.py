"""decode_message and the encoders, example by example: one test group per reason code."""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from protocol import (
    FRAME_TYPES,
    REASONS,
    Decoded,
    Event,
    Frame,
    Hello,
    HttpSample,
    Limits,
    ProtocolError,
    RtcSample,
    codec,
    decode_frame,
    decode_message,
    encode_json,
    encode_json_lines,
    encode_msgpack,
)
from protocol.frames import MAX_COUNTER, MAX_ID_CHARS, MAX_MS, MAX_NESTING, MAX_URL_CHARS
from protocol.jsonschema import IDENTIFIER_FIELDS
from protocol.vectors.generate import (
    EVENT_ICE,
    EVENT_JOIN,
    HELLO_BROWSER,
    HELLO_SERVER,
    HTTP,
    RTC_FULL,
    RTC_MINIMAL,
    RTC_OTHER,
)
from tests.protocol.strategies import as_map

Encode = Callable[[Any], bytes]
ENCODINGS = [
    pytest.param(msgspec.msgpack.encode, id="msgpack"),
    pytest.param(msgspec.json.encode, id="json"),
]
SAMPLES: dict[str, Frame] = {
    "hello": HELLO_SERVER,
    "rtc": RTC_FULL,
    "http": HTTP,
    "event": EVENT_ICE,
}
BIG = Limits(max_message_bytes=1 << 22, max_frames_per_message=100_000)


def rejected(decoded: Decoded) -> ProtocolError:
    """The one error of a message that was rejected as a whole."""
    assert decoded.frames == []
    assert len(decoded.errors) == 1, decoded.errors
    error = decoded.errors[0]
    assert error.index is None
    assert error.reason in REASONS
    return error


def reason_of(data: bytes, limits: Limits = codec.DEFAULT_LIMITS) -> str:
    return rejected(decode_message(data, limits)).reason


def rtc_with(**changes: Any) -> dict[str, Any]:
    return {**as_map(RTC_MINIMAL), **changes}


def without(frame: Frame, key: str) -> dict[str, Any]:
    return {k: v for k, v in as_map(frame).items() if k != key}


def required_keys(struct: type[Frame]) -> list[str]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    return [field.encode_name for field in info.fields if field.required]


# --- empty, too_large ------------------------------------------------------------------------


def test_empty() -> None:
    assert reason_of(b"") == codec.EMPTY


@pytest.mark.parametrize("encode", ENCODINGS)
def test_too_large_and_exactly_at_the_limit(encode: Encode) -> None:
    data = encode(RTC_FULL)
    assert reason_of(data, Limits(max_message_bytes=len(data) - 1)) == codec.TOO_LARGE
    decoded = decode_message(data, Limits(max_message_bytes=len(data)))
    assert decoded.frames == [RTC_FULL]
    assert decoded.errors == []


def test_too_large_is_checked_before_parsing() -> None:
    hostile = b"[" * 70_000  # would exhaust the decoder's recursion limit if it were parsed
    assert reason_of(hostile) == codec.TOO_LARGE


# --- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_msgpack(RTC_FULL)[:-3], id="msgpack-truncated"),
        pytest.param(encode_json(RTC_FULL)[:-3], id="json-truncated"),
        pytest.param(encode_msgpack(HELLO_BROWSER) + b"\x01", id="msgpack-trailing-bytes"),
        pytest.param(encode_json(HELLO_BROWSER) + b" x", id="json-trailing-garbage"),
        pytest.param(b'{"t":"hello","boot":"x",}', id="json-trailing-comma"),
        pytest.param(b'{"t":"hello","boot":"\xff"}', id="json-invalid-utf8"),
        pytest.param(b"\x82\xa1t\xa5hello\xa4boot\xa1\xff", id="msgpack-invalid-utf8"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="msgpack-huge-array-header"),
        pytest.param(b"\xc1", id="msgpack-never-used-byte"),
        pytest.param(b"  \n ", id="json-only-whitespace"),
    ],
)
def test_malformed(data: bytes) -> None:
    assert reason_of(data) == codec.MALFORMED


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * 5_000, id="json-open-arrays"),
        pytest.param(b"[" * 5_000 + b"]" * 5_000, id="json-nested-arrays"),
        pytest.param(
            b'{"t":"hello","boot":"x","junk":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
            id="json-deep-unknown-key",
        ),
        pytest.param(b"\x91" * 5_000 + b"\x01", id="msgpack-nested-arrays"),
        pytest.param(
            b"\x83\xa1t\xa5hello\xa4boot\xa1x\xa4junk" + b"\x91" * 5_000 + b"\x01",
            id="msgpack-deep-unknown-key",
        ),
    ],
)
def test_deep_nesting_is_malformed_not_a_crash(data: bytes) -> None:
    # msgspec raises RecursionError on these: the decoder must translate it, not let it out.
    error = rejected(decode_message(data, BIG))
    assert (error.reason, error.detail) == (codec.MALFORMED, "nested too deeply")


def nested_json(levels: int) -> bytes:
    """A hello whose unknown key holds arrays: ``levels`` deep in all, the frame being 1."""
    return b'{"t":"hello","boot":"x","junk":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def nested_msgpack(levels: int) -> bytes:
    return b"\x83\xa1t\xa5hello\xa4boot\xa1x\xa4junk" + b"\x91" * (levels - 2) + b"\x90"


def on_a_deep_stack(depth: int, call: Callable[[], Decoded]) -> Decoded:
    """``call()`` with ``depth`` more Python frames on the stack than the caller has."""
    return call() if depth == 0 else on_a_deep_stack(depth - 1, call)


@pytest.mark.parametrize(
    ("single", "batch"),
    [
        pytest.param(nested_json, lambda n: b"[" + nested_json(n - 1) + b"]", id="json"),
        pytest.param(nested_msgpack, lambda n: b"\x91" + nested_msgpack(n - 1), id="msgpack"),
    ],
)
def test_every_message_up_to_the_nesting_limit_is_decoded(
    single: Callable[[int], bytes], batch: Callable[[int], bytes]
) -> None:
    # PROTOCOL.md §5.1: at most MAX_NESTING levels, guaranteed whatever the caller's stack:
    # here 300 frames deeper than the test's own, several times what the daemon has.
    for data in (single(MAX_NESTING), batch(MAX_NESTING)):
        decoded = on_a_deep_stack(300, partial(decode_message, data))
        assert decoded.errors == []
        assert decoded.frames == [Hello(boot="x")]
    lines = nested_json(MAX_NESTING) + b"\n" + nested_json(MAX_NESTING)
    assert on_a_deep_stack(300, partial(decode_message, lines)).frames == [Hello(boot="x")] * 2


def test_deep_nesting_in_one_json_line_rejects_that_line_only() -> None:
    deep = b'{"t":"hello","boot":"x","junk":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    decoded = decode_message(encode_json(HELLO_BROWSER) + b"\n" + deep, BIG)
    assert decoded.frames == [HELLO_BROWSER]
    assert [(e.index, e.reason) for e in decoded.errors] == [(1, codec.MALFORMED)]


# --- not_a_frame -----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize("value", [0, 42, -1, 1.5, True, None, " x"], ids=repr)
def test_not_a_frame(encode: Encode, value: Any) -> None:
    data = encode(value)
    if data[0] in b"{[ \t\r\n" or encode is msgspec.msgpack.encode:
        assert reason_of(data) == codec.NOT_A_FRAME
    else:
        # A JSON message must start with "{", "[" or whitespace; anything else is read as
        # MessagePack, where a bare JSON scalar is either not a frame or malformed.
        assert reason_of(data) in {codec.NOT_A_FRAME, codec.MALFORMED}
    assert reason_of(b" " + msgspec.json.encode(value)) == codec.NOT_A_FRAME


def test_msgpack_extension_is_not_a_frame() -> None:
    assert reason_of(b"\xd4\x01\x01") == codec.NOT_A_FRAME


@pytest.mark.parametrize("encode", ENCODINGS)
def test_batch_element_that_is_not_a_map(encode: Encode) -> None:
    decoded = decode_message(encode([as_map(HELLO_BROWSER), [as_map(EVENT_JOIN)], "x", 7]))
    assert decoded.frames == [HELLO_BROWSER]
    assert [(e.index, e.reason) for e in decoded.errors] == [
        (1, codec.NOT_A_FRAME),
        (2, codec.NOT_A_FRAME),
        (3, codec.NOT_A_FRAME),
    ]


# --- unknown_tag -----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    "frame",
    [
        {"t": "metrics", "boot": "x"},
        {"t": "HELLO", "boot": "x"},
        {"t": "", "boot": "x"},
        {"boot": "x"},
        {"t": 1, "boot": "x"},
        {"t": None, "boot": "x"},
        {"t": ["hello"], "boot": "x"},
    ],
    ids=repr,
)
def test_unknown_tag(encode: Encode, frame: dict[str, Any]) -> None:
    assert reason_of(encode(frame)) == codec.UNKNOWN_TAG


@pytest.mark.parametrize("encode", ENCODINGS)
def test_client_strings_do_not_steer_the_classification(encode: Encode) -> None:
    # msgspec echoes bad enum values in its message; an echo that looks like another error
    # must not change the reason.
    event = {**as_map(EVENT_JOIN), "ev": "missing required field `t`"}
    assert reason_of(encode(event)) == codec.BAD_VALUE
    event = {**as_map(EVENT_JOIN), "ev": "x' - at `$.t`"}
    assert reason_of(encode(event)) == codec.BAD_VALUE


# --- missing_field ---------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    ("frame", "key"),
    [
        pytest.param(frame, key, id=f"{tag}.{key}")
        for tag, frame in SAMPLES.items()
        for key in required_keys(type(frame))
    ],
)
def test_missing_field(encode: Encode, frame: Frame, key: str) -> None:
    assert reason_of(encode(without(frame, key))) == codec.MISSING_FIELD


# --- wrong_type ------------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    "changes",
    [
        {"q": "1742"},
        {"q": 1.5},
        {"q": True},
        {"q": None},
        {"q": [1]},
        {"ts": "1764338400123"},
        {"m": 5},
        {"m": None},
        {"m": ["a"]},
        {"aob": "1"},
        {"aob": {"v": 1}},
        {"rtt": "48"},
        {"fec": 1},
        {"fec": "true"},
        {"vwi": 1280.5},
    ],
    ids=repr,
)
def test_wrong_type(encode: Encode, changes: dict[str, Any]) -> None:
    assert reason_of(encode(rtc_with(**changes))) == codec.WRONG_TYPE


def test_wrong_type_of_list_item_and_map_key() -> None:
    http = {**as_map(HTTP), "st": [0, 1, 2, 3, "4"]}
    assert reason_of(msgspec.json.encode(http)) == codec.WRONG_TYPE
    # a MessagePack map whose key is an integer, not a string
    assert reason_of(b"\x83\xa1t\xa5hello\xa4boot\xa1x\x01\x02") == codec.WRONG_TYPE


def test_integers_are_accepted_for_float_fields() -> None:
    decoded = decode_message(msgspec.json.encode(rtc_with(rtt=48, ts=1764338400123)))
    assert decoded.errors == []
    (frame,) = decoded.frames
    assert isinstance(frame, RtcSample)
    assert frame.rtt_ms == 48.0


# --- out_of_range ----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    "changes",
    [
        {"q": -1},
        {"q": MAX_COUNTER + 1},
        {"q": 2**64 - 1},
        {"aob": -5},
        {"ts": -0.5},
        {"ts": 1.1e13},
        {"rtt": MAX_MS + 1},
        {"rtt": -1.0},
        {"vfi": 1000.5},
        {"vwi": 65536},
        {"bwe": 1e13},
        {"ajd": 1e10},
    ],
    ids=repr,
)
def test_out_of_range(encode: Encode, changes: dict[str, Any]) -> None:
    assert reason_of(encode(rtc_with(**changes))) == codec.OUT_OF_RANGE


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_nan_and_infinity_are_out_of_range(value: float) -> None:
    # Only MessagePack can carry them (JSON has no NaN); they must not reach the aggregates.
    assert reason_of(msgspec.msgpack.encode(rtc_with(rtt=value))) == codec.OUT_OF_RANGE


def test_out_of_range_elsewhere() -> None:
    assert reason_of(b'{"t":"rtc","m":"a","p":"b","c":"c","q":1,"ts":1e400}') == (
        codec.OUT_OF_RANGE
    )
    assert reason_of(msgspec.json.encode({"t": "hello", "boot": "x", "v": 0})) == (
        codec.OUT_OF_RANGE
    )
    http = {**as_map(HTTP), "lh": [0] * 11 + [-1]}
    assert reason_of(msgspec.msgpack.encode(http)) == codec.OUT_OF_RANGE


def test_bounds_are_inclusive() -> None:
    frame = rtc_with(q=MAX_COUNTER, ts=1e13, rtt=MAX_MS, vfi=1000, vwi=65535, aob=0)
    decoded = decode_message(msgspec.msgpack.encode(frame))
    assert decoded.errors == []
    assert len(decoded.frames) == 1


# --- bad_string ------------------------------------------------------------------------------


IDENTIFIER_CASES = [
    pytest.param(frame, key, id=f"{tag}.{key}")
    for tag, frame in SAMPLES.items()
    for key in IDENTIFIER_FIELDS[tag]
]


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(("frame", "key"), IDENTIFIER_CASES)
def test_identifier_length(encode: Encode, frame: Frame, key: str) -> None:
    longest = MAX_URL_CHARS if key == "turn" else MAX_ID_CHARS
    assert reason_of(encode({**as_map(frame), key: ""})) == codec.BAD_STRING
    assert reason_of(encode({**as_map(frame), key: "x" * (longest + 1)})) == codec.BAD_STRING
    assert decode_message(encode({**as_map(frame), key: "é" * longest})).errors == []


@pytest.mark.parametrize(("frame", "key"), IDENTIFIER_CASES)
@pytest.mark.parametrize(
    "char",
    [" ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\xa0", "\u2028", "\u3000", "\u200b"],
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_identifier_characters(frame: Frame, key: str, char: str) -> None:
    for encode in (msgspec.msgpack.encode, msgspec.json.encode):
        assert reason_of(encode({**as_map(frame), key: f"a{char}b"})) == codec.BAD_STRING


def test_identifiers_may_hold_any_printable_character() -> None:
    frame = rtc_with(m="réunion-北京-🎥", p="user@example.com", c="{pc}#1/2")
    decoded = decode_message(msgspec.json.encode(frame))
    assert decoded.errors == []


def test_free_text_fields_allow_spaces() -> None:
    hello = {**as_map(HELLO_BROWSER), "agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    event = {**as_map(EVENT_JOIN), "val": "checking → connected"}
    decoded = decode_message(msgspec.json.encode([hello, event]))
    assert decoded.errors == []
    assert len(decoded.frames) == 2


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize("method", ["get", "GET ", "", "G3T", "A" * 17], ids=repr)
def test_http_method_pattern(encode: Encode, method: str) -> None:
    assert reason_of(encode({**as_map(HTTP), "meth": method})) == codec.BAD_STRING


def test_http_method_other() -> None:
    assert decode_message(msgspec.json.encode({**as_map(HTTP), "meth": "_OTHER"})).errors == []


def test_text_length() -> None:
    hello = {**as_map(HELLO_BROWSER), "agent": "a" * 129}
    assert reason_of(msgspec.json.encode(hello)) == codec.BAD_STRING
    hello = {**as_map(HELLO_BROWSER), "token": "k" * 4097}
    assert reason_of(msgspec.json.encode(hello)) == codec.BAD_STRING


# --- bad_value -------------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    ("frame", "key", "value"),
    [
        (EVENT_JOIN, "ev", "dance"),
        (EVENT_JOIN, "ev", "JOIN"),
        (HELLO_BROWSER, "kind", "robot"),
        (RTC_MINIMAL, "qlr", "memory"),
        (RTC_MINIMAL, "lct", "turn"),
        (RTC_MINIMAL, "rct", ""),
        (RTC_MINIMAL, "rp", "quic"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_value(encode: Encode, frame: Frame, key: str, value: str) -> None:
    assert reason_of(encode({**as_map(frame), key: value})) == codec.BAD_VALUE


# --- bad_length ------------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(
    ("key", "length"), [("st", 0), ("st", 4), ("st", 6), ("lh", 11), ("lh", 13)]
)
def test_bad_length(encode: Encode, key: str, length: int) -> None:
    assert reason_of(encode({**as_map(HTTP), key: [1] * length})) == codec.BAD_LENGTH


# --- batch_too_large -------------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
def test_batch_too_large(encode: Encode) -> None:
    limits = Limits(max_frames_per_message=3)
    assert reason_of(encode([HELLO_BROWSER] * 4), limits) == codec.BATCH_TOO_LARGE
    with_bad_frame = [as_map(HELLO_BROWSER)] * 3 + [{"t": "nope"}]  # the slower path
    assert reason_of(encode(with_bad_frame), limits) == codec.BATCH_TOO_LARGE
    decoded = decode_message(encode([HELLO_BROWSER] * 3), limits)
    assert decoded.frames == [HELLO_BROWSER] * 3


def test_json_lines_too_many() -> None:
    limits = Limits(max_frames_per_message=3)
    data = encode_json_lines([HELLO_BROWSER] * 4)
    assert reason_of(data, limits) == codec.BATCH_TOO_LARGE
    assert len(decode_message(encode_json_lines([HELLO_BROWSER] * 3), limits).frames) == 3


def test_invalid_is_a_documented_fallback() -> None:
    # No known input produces it (every msgspec message is classified); it exists so that a
    # message from a future msgspec cannot escape classification.
    error = codec._classify(msgspec.ValidationError("Something new - at `$.x`"), 2)
    assert (error.reason, error.index) == (codec.INVALID, 2)
    assert codec.INVALID in REASONS


# --- batches, indexes and kept frames --------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
def test_good_frames_around_bad_ones_are_kept_in_order(encode: Encode) -> None:
    batch = [
        as_map(HELLO_SERVER),
        {**as_map(RTC_FULL), "q": -1},
        as_map(RTC_OTHER),
        {**as_map(EVENT_JOIN), "p": "has space"},
        as_map(HTTP),
        without(EVENT_ICE, "ts"),
    ]
    decoded = decode_message(encode(batch))
    assert decoded.frames == [HELLO_SERVER, RTC_OTHER, HTTP]
    assert [(e.index, e.reason) for e in decoded.errors] == [
        (1, codec.OUT_OF_RANGE),
        (3, codec.BAD_STRING),
        (5, codec.MISSING_FIELD),
    ]


@pytest.mark.parametrize("encode", ENCODINGS)
def test_identifier_error_index_in_a_clean_batch(encode: Encode) -> None:
    # Every frame passes msgspec (the fast path); only the identifier check fails.
    batch = [as_map(HELLO_BROWSER), as_map(HELLO_BROWSER), {"t": "hello", "boot": "a\tb"}]
    decoded = decode_message(encode(batch))
    assert decoded.frames == [HELLO_BROWSER, HELLO_BROWSER]
    assert [(e.index, e.reason) for e in decoded.errors] == [(2, codec.BAD_STRING)]


def test_a_single_frame_error_concerns_the_whole_message() -> None:
    for data in (
        msgspec.json.encode({"t": "hello", "boot": "a b"}),
        msgspec.json.encode({"t": "hello", "boot": 1}),
        msgspec.json.encode([{"t": "hello", "boot": 1}]),
    ):
        error = decode_message(data).errors[0]
        assert error.index == (0 if data.startswith(b"[") else None)


def test_json_lines_indexes_count_non_blank_lines() -> None:
    data = b"\r\n".join(
        [
            encode_json(HELLO_BROWSER),
            b"",
            b'{"t":"event"}',
            b"   ",
            encode_json(EVENT_JOIN),
            b"not json",
            b'{"t":"hello","boot":"a b"}',
            encode_json(RTC_MINIMAL),
            b"",
        ]
    )
    decoded = decode_message(data)
    assert decoded.frames == [HELLO_BROWSER, EVENT_JOIN, RTC_MINIMAL]
    assert [(e.index, e.reason) for e in decoded.errors] == [
        (1, codec.MISSING_FIELD),
        (3, codec.MALFORMED),
        (4, codec.BAD_STRING),
    ]


def test_json_lines_whose_first_line_is_bad_keep_the_others() -> None:
    data = b'{"t":"metrics"}\n' + encode_json(HELLO_BROWSER) + b"\n"
    decoded = decode_message(data)
    assert decoded.frames == [HELLO_BROWSER]
    assert [(e.index, e.reason) for e in decoded.errors] == [(0, codec.UNKNOWN_TAG)]


def test_one_json_value_over_several_lines_is_not_json_lines() -> None:
    pretty = b'{\n  "t": "hello",\n  "boot": "x"\n}\n'
    assert decode_message(pretty).frames == [Hello(boot="x")]
    pretty_bad = b'{\n  "t": "hello",\n  "boot": 5\n}\n'
    assert reason_of(pretty_bad) == codec.WRONG_TYPE
    pretty_batch = b'[\n {"t": "hello", "boot": "x"},\n {"t": "hello"}\n]'
    decoded = decode_message(pretty_batch)
    assert decoded.frames == [Hello(boot="x")]
    assert [(e.index, e.reason) for e in decoded.errors] == [(1, codec.MISSING_FIELD)]


def test_one_json_line_with_newline_is_one_frame() -> None:
    # what `echo '{...}' | nc -u` sends
    assert decode_message(encode_json(EVENT_JOIN) + b"\n").frames == [EVENT_JOIN]
    assert reason_of(b'{"t":"event"}\n') == codec.MISSING_FIELD


def test_empty_batch_is_accepted_and_empty() -> None:
    for data in (b"[]", b"\x90", b" [ ] "):
        decoded = decode_message(data)
        assert (decoded.frames, decoded.errors) == ([], [])


# --- round trips and what goes on the wire ---------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [HELLO_BROWSER, HELLO_SERVER, RTC_FULL, RTC_MINIMAL, RTC_OTHER, HTTP, EVENT_ICE, EVENT_JOIN],
    ids=lambda f: type(f).__name__,
)
@pytest.mark.parametrize("encode", [encode_msgpack, encode_json], ids=["msgpack", "json"])
def test_round_trip_each_kind(frame: Frame, encode: Callable[[Frame], bytes]) -> None:
    decoded = decode_message(encode(frame))
    assert decoded.errors == []
    assert decoded.frames == [frame]
    assert decode_frame(encode(frame)) == frame


def test_round_trip_batches_and_lines() -> None:
    batch: list[Frame] = [HELLO_SERVER, RTC_FULL, HTTP, EVENT_ICE, RTC_MINIMAL]
    for data in (encode_msgpack(batch), encode_json(batch), encode_json_lines(batch)):
        decoded = decode_message(data)
        assert decoded.errors == []
        assert decoded.frames == batch


def test_every_kind_is_covered_by_the_samples() -> None:
    assert {type(frame) for frame in SAMPLES.values()} == set(FRAME_TYPES)


def test_omitted_optional_fields_are_absent_on_the_wire() -> None:
    required = {"t", *required_keys(RtcSample)}
    assert set(msgspec.msgpack.decode(encode_msgpack(RTC_MINIMAL))) == required
    assert set(msgspec.json.decode(encode_json(RTC_MINIMAL))) == required
    # defaults other than None are omitted too: hello's v 1 and kind "other"
    assert msgspec.json.decode(encode_json(Hello(boot="x"))) == {"t": "hello", "boot": "x"}
    assert set(msgspec.json.decode(encode_json(EVENT_JOIN))) == {"t", "m", "p", "ev", "ts"}


def test_tag_is_written_first_and_may_be_read_anywhere() -> None:
    assert encode_json(HELLO_BROWSER).startswith(b'{"t":"hello",')
    assert encode_msgpack(HELLO_BROWSER)[1:4] == b"\xa1t\xa5"
    tag_last = {**without(EVENT_JOIN, "t"), "t": "event"}
    for encode in (msgspec.msgpack.encode, msgspec.json.encode):
        assert decode_message(encode(tag_last)).frames == [EVENT_JOIN]


# The smallest valid frame of each kind: its required fields only.
MINIMAL: dict[str, Frame] = {
    "hello": Hello(boot="b-1"),
    "rtc": RTC_MINIMAL,
    "http": HTTP,
    "event": EVENT_JOIN,
}


def optional_fields() -> list[Any]:
    params = []
    for tag, frame in MINIMAL.items():
        info = mi.type_info(type(frame))
        assert isinstance(info, mi.StructType)
        params += [
            pytest.param(frame, field, id=f"{tag}.{field.encode_name}")
            for field in info.fields
            if not field.required
        ]
    return params


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(("frame", "field"), optional_fields())
def test_null_is_the_same_as_absent_for_every_optional_field(
    encode: Encode, frame: Frame, field: mi.Field
) -> None:
    # PROTOCOL.md §3.2: null for an optional field means absent, so the field takes its
    # default (hello.v 1, hello.kind "other"; None for the others).
    decoded = decode_message(encode({**as_map(frame), field.encode_name: None}))
    assert decoded.errors == []
    assert decoded.frames == [frame]
    assert getattr(decoded.frames[0], field.name) == field.default


def test_null_defaults_are_what_the_readers_see() -> None:
    data = b'{"t":"hello","boot":"b-1","v":null,"kind":null,"agent":null}'
    (hello,) = decode_message(data).frames
    assert isinstance(hello, Hello)
    assert (hello.v, hello.kind, hello.agent) == (1, "other", None)
    assert encode_json(hello) == b'{"t":"hello","boot":"b-1"}'


def test_full_rtc_frame_fits_in_512_bytes() -> None:
    info = mi.type_info(RtcSample)
    assert isinstance(info, mi.StructType)
    every_key = {"t", *(field.encode_name for field in info.fields)}
    assert set(msgspec.msgpack.decode(encode_msgpack(RTC_FULL))) == every_key
    assert len(encode_msgpack(RTC_FULL)) <= 512


def worst_case_rtc(strings: dict[str, Any]) -> RtcSample:
    """Every field present, every counter at 2**32 - 1, the longest enum values."""
    info = mi.type_info(RtcSample)
    assert isinstance(info, mi.StructType)
    values: dict[str, Any] = {}
    for field in info.fields:
        kind = field.type
        if isinstance(kind, mi.UnionType):
            (kind,) = (t for t in kind.types if not isinstance(t, mi.NoneType))
        if isinstance(kind, mi.IntType):
            values[field.name] = min(kind.le or 0, 2**32 - 1)
        elif isinstance(kind, mi.FloatType):
            values[field.name] = float(kind.le or 0)  # always 9 bytes in MessagePack
        elif isinstance(kind, mi.BoolType):
            values[field.name] = True
        elif isinstance(kind, mi.LiteralType):
            values[field.name] = max((str(v) for v in kind.values), key=len)
    return RtcSample(**values, **strings)


STRING_FIELDS = ("meeting", "participant", "connection", "pair_id", "turn_url", "boot")


@pytest.mark.parametrize(
    "lengths",
    [
        (32, 32, 23, 1, 1, 1),
        (85, 1, 1, 1, 1, 1),
        (15, 15, 15, 15, 15, 15),
        (1, 1, 1, 1, 85, 1),
        (12, 12, 12, 12, 30, 12),
    ],
    ids=str,
)
def test_full_rtc_frame_size_budget(lengths: tuple[int, ...]) -> None:
    """PROTOCOL.md §5: counters below 2**32 and identifiers totalling 90 bytes fit in 512."""
    strings = {key: "x" * n for key, n in zip(STRING_FIELDS, lengths, strict=True)}
    assert sum(lengths) == 90
    frame = worst_case_rtc(strings)
    assert len(encode_msgpack(frame)) <= 512
    assert decode_message(encode_msgpack(frame)).frames == [frame]
    # and the budget is tight: one more byte can cross the line
    over = ("x" * 32, "x" * 32, "x" * 24, "x", "x", "x")
    tight = worst_case_rtc(dict(zip(STRING_FIELDS, over, strict=True)))
    assert len(encode_msgpack(tight)) == 513


# --- forward compatibility -------------------------------------------------------------------


@pytest.mark.parametrize("encode", ENCODINGS)
@pytest.mark.parametrize(("tag", "frame"), list(SAMPLES.items()))
def test_unknown_keys_are_ignored(encode: Encode, tag: str, frame: Frame) -> None:
    extra = {
        "future_counter": 12,
        "xf": 1.5,
        "xs": "a b\x00",
        "xn": None,
        "xl": [1, [2, [3]], {"k": "v"}],
        "xm": {"nested": {"deeper": [True]}},
        "ev" if tag != "event" else "aob": "not checked here",
    }
    decoded = decode_message(encode({**as_map(frame), **extra}))
    assert decoded.errors == []
    assert decoded.frames == [frame]


# --- details ---------------------------------------------------------------------------------

HOSTILE = [
    msgspec.json.encode({"t": "\x00\x1b[31m" * 500, "boot": "x"}),
    msgspec.json.encode({**as_map(EVENT_JOIN), "ev": "\u202e\x07" * 1000}),
    msgspec.json.encode({**as_map(EVENT_JOIN), "m": "\x1b" * 128}),
    msgspec.json.encode({**as_map(EVENT_JOIN), "m": "\u2028" * 128}),
    msgspec.msgpack.encode({"t": "\ud7ff\n" * 300}),
    msgspec.msgpack.encode([{"t": "hello", "boot": "a\nb" * 40}] * 3),
    b'{"t":"hello","boot":"x","\x00\x01":' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"\n".join([b"\x00\xff\xfe" * 100] * 5),
    b"\x81\xa1t" + b"\xda\x10\x00" + b"\x1b" * 4096,
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_details_are_printable_and_bounded(data: bytes) -> None:
    decoded = decode_message(data, BIG)
    assert decoded.errors
    for error in decoded.errors:
        assert error.reason in REASONS
        assert error.detail.isprintable()
        assert 0 < len(error.detail) <= codec.MAX_DETAIL_CHARS
        assert str(error).startswith(f"{error.reason}: ")


# --- decode_frame ----------------------------------------------------------------------------


def test_decode_frame_raises_our_error_only() -> None:
    with pytest.raises(ProtocolError) as bad:
        decode_frame(b'{"t":"nope"}')
    assert bad.value.reason == codec.UNKNOWN_TAG
    with pytest.raises(ProtocolError) as batch:
        decode_frame(encode_msgpack([HELLO_BROWSER, HELLO_BROWSER]))
    assert batch.value.reason == codec.NOT_A_FRAME
    assert isinstance(decode_frame(encode_json(HTTP)), HttpSample)
    assert isinstance(decode_frame(encode_json(EVENT_JOIN)), Event)


def test_bad_messages_leave_no_garbage_for_the_collector() -> None:
    """A flood of bad datagrams must not feed the cyclic garbage collector, whose full
    collections would pause the UDP loop (docs/RELIABILITY.md, "Hostile datagrams")."""
    bad = [b"\x81\xa1x\x01", b"{", b"\x93\x01\x02\x03", b"not a frame"]
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(250):
            for data in bad:
                assert decode_message(data).errors
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()
