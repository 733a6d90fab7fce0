"""JSON Schema of the wire frames, generated from the msgspec Structs in ``protocol.frames``.

``python -m protocol.jsonschema`` rewrites ``protocol/schema/frames.schema.json``; a test fails
when the committed file differs from ``schema_text()``, so the schema never drifts from the
Structs. Pass ``--check`` to only compare (exit status 1 when the file is stale).

The schema is msgspec's, with three additions that msgspec cannot derive from the types:
the JSON Schema dialect, a ``title`` per property naming the readable field, and the character
rule of identifiers (PROTOCOL.md §4.1) as a ``pattern`` on the identifier fields. The decoder
checks identifiers in code rather than as a regex, so the pattern is an ECMA-262 approximation:
the decoder also rejects format, private-use, surrogate and unassigned code points.

Never imported by the daemon at run time; standard library and msgspec only, like the rest of
``protocol``.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from protocol.frames import FRAME_TYPES, Frame

SCHEMA_PATH: Final = Path(__file__).parent / "schema" / "frames.schema.json"
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# Whitespace, C0 and C1 control characters; ECMA-262 \s includes the Unicode spaces.
IDENTIFIER_PATTERN: Final = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"

# Wire keys of the fields whose characters the decoder checks (codec._check_identifiers), per
# frame tag. A test checks this table against the decoder's behaviour.
IDENTIFIER_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "hello": ("boot",),
    "rtc": ("m", "p", "c", "turn", "pair", "boot"),
    "http": ("svc", "inst", "boot", "route"),
    "event": ("m", "p", "c"),
}


def _with_pattern(property_schema: dict[str, Any]) -> None:
    for option in property_schema.get("anyOf", [property_schema]):
        if option.get("type") == "string":
            option["pattern"] = IDENTIFIER_PATTERN


def frames_schema() -> dict[str, Any]:
    """The schema of one message: a frame or an array of frames (a batch)."""
    schema: dict[str, Any] = msgspec.json.schema(Frame | list[Frame])
    schema["$schema"] = DIALECT
    schema["title"] = "bwmon frames"
    schema["description"] = (
        "One bwmon message: a frame, or an array of frames (a batch). "
        "Generated from the msgspec Structs the daemon decodes with; protocol/PROTOCOL.md is "
        "the specification (§4.1: identifier characters)."
    )
    definitions: dict[str, Any] = schema["$defs"]
    for struct in FRAME_TYPES:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        definition = definitions[struct.__name__]
        if "description" in definition:
            definition["description"] = inspect.cleandoc(definition["description"])
        properties: dict[str, Any] = definition["properties"]
        for field in info.fields:
            properties[field.encode_name]["title"] = field.name
        tag = info.tag
        assert isinstance(tag, str)
        for key in IDENTIFIER_FIELDS[tag]:
            _with_pattern(properties[key])
    return schema


def schema_text() -> str:
    """The schema as committed: pretty-printed, keys sorted, one trailing newline."""
    return json.dumps(frames_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else None
    if "--check" in args:
        if current != text:
            print(f"{SCHEMA_PATH} is stale: run python -m protocol.jsonschema", file=sys.stderr)
            return 1
        return 0
    if current != text:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
