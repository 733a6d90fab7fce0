"""The committed JSON Schema is what the Structs generate, and says what the decoder checks."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from protocol import FRAME_TYPES, Frame, decode_message, jsonschema
from protocol.codec import BAD_STRING
from protocol.vectors.generate import EVENT_ICE, HELLO_SERVER, HTTP, RTC_FULL
from tests.protocol.strategies import as_map

SAMPLES: list[Frame] = [HELLO_SERVER, RTC_FULL, HTTP, EVENT_ICE]


def test_committed_schema_is_fresh() -> None:
    committed = jsonschema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == jsonschema.schema_text(), "run: python -m protocol.jsonschema"
    assert jsonschema.main(["--check"]) == 0


def test_schema_describes_every_frame_and_key() -> None:
    schema = json.loads(jsonschema.SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == jsonschema.DIALECT
    for struct in FRAME_TYPES:
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        definition = schema["$defs"][struct.__name__]
        keys = {field.encode_name for field in info.fields}
        assert set(definition["properties"]) == {"t", *keys}
        required = {field.encode_name for field in info.fields if field.required}
        assert set(definition["required"]) == {"t", *required}
        for field in info.fields:
            assert definition["properties"][field.encode_name]["title"] == field.name


def test_every_optional_key_accepts_null() -> None:
    # PROTOCOL.md §3.2: null for an optional field means absent, whatever its default.
    schema = json.loads(jsonschema.SCHEMA_PATH.read_text(encoding="utf-8"))
    for struct in FRAME_TYPES:
        definition = schema["$defs"][struct.__name__]
        for key, prop in definition["properties"].items():
            if key not in definition["required"]:
                assert {"type": "null"} in prop.get("anyOf", []), f"{struct.__name__}.{key}"


def _string_keys(frame: Frame) -> list[str]:
    info = mi.type_info(type(frame))
    assert isinstance(info, mi.StructType)
    keys = []
    for field in info.fields:
        options = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        if any(isinstance(option, mi.StrType) and option.pattern is None for option in options):
            keys.append(field.encode_name)
    return keys


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_identifier_fields_are_the_ones_the_decoder_checks(frame: Frame) -> None:
    mapping = as_map(frame)
    tag = mapping["t"]
    checked = []
    for key in _string_keys(frame):
        decoded = decode_message(msgspec.json.encode({**mapping, key: "a b"}))
        if decoded.errors:
            assert decoded.errors[0].reason == BAD_STRING
            checked.append(key)
    assert sorted(checked) == sorted(jsonschema.IDENTIFIER_FIELDS[tag])


CHARACTERS = [chr(c) for c in range(0x00, 0x250)] + [
    "\u200b",
    "\u2028",
    "\u2029",
    "\u3000",
    "\ufeff",
    "\ue000",
    "北",
    "🎥",
]


def test_schema_pattern_never_stricter_than_the_decoder() -> None:
    """A value the schema's pattern rejects, the decoder rejects too (the reverse need not
    hold: the decoder also rejects format, private-use and unassigned code points)."""
    pattern = re.compile(jsonschema.IDENTIFIER_PATTERN)
    base: dict[str, Any] = as_map(HELLO_SERVER)
    for char in CHARACTERS:
        value = f"a{char}b"
        accepted = not decode_message(msgspec.json.encode({**base, "boot": value})).errors
        if pattern.fullmatch(value) is None:
            assert not accepted, f"U+{ord(char):04X}"
        if 0x21 <= ord(char) <= 0x7E:
            assert accepted
            assert pattern.fullmatch(value)
