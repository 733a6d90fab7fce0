"""Hypothesis strategies for valid frames, derived from the Structs with ``msgspec.inspect``.

Deriving them from the schema, rather than listing fields by hand, means a field added to
``protocol.frames`` is generated (and so round-trip tested) without touching this file.
Identifier fields (``IDENTIFIER_FIELDS``) draw from characters the decoder accepts there.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from protocol.frames import FRAME_TYPES, Frame
from protocol.jsonschema import IDENTIFIER_FIELDS

# Strings are capped so that a batch of a few frames stays small and examples stay fast; the
# length limits themselves have their own unit tests.
MAX_GENERATED_CHARS = 40

# What the decoder accepts in identifiers: no Unicode "other" (Cc, Cf, Cs, Co, Cn) and no
# separators (Zs, Zl, Zp), which is exactly str.isprintable() minus the ASCII space.
identifier_chars = st.characters(exclude_categories=("C", "Z"))
any_text_chars = st.characters(codec="utf-8")


def _for_type(kind: mi.Type, identifier: bool) -> st.SearchStrategy[Any]:
    if isinstance(kind, mi.UnionType):
        return st.one_of([_for_type(option, identifier) for option in kind.types])
    if isinstance(kind, mi.NoneType):
        return st.none()
    if isinstance(kind, mi.BoolType):
        return st.booleans()
    if isinstance(kind, mi.IntType):
        return st.integers(min_value=kind.ge, max_value=kind.le)
    if isinstance(kind, mi.FloatType):
        return st.floats(
            min_value=kind.ge, max_value=kind.le, allow_nan=False, allow_infinity=False
        )
    if isinstance(kind, mi.LiteralType):
        return st.sampled_from(kind.values)
    if isinstance(kind, mi.StrType):
        low = kind.min_length or 0
        high = min(kind.max_length or MAX_GENERATED_CHARS, MAX_GENERATED_CHARS)
        if kind.pattern is not None:
            return st.from_regex(kind.pattern, fullmatch=True).filter(
                lambda s: low <= len(s) <= high
            )
        return st.text(
            identifier_chars if identifier else any_text_chars, min_size=low, max_size=high
        )
    if isinstance(kind, mi.ListType):
        return st.lists(
            _for_type(kind.item_type, identifier),
            min_size=kind.min_length or 0,
            max_size=kind.max_length,
        )
    raise TypeError(f"no strategy for {kind!r}")  # a new kind of field: teach this module


def frames_of(struct: type[Frame]) -> st.SearchStrategy[Frame]:
    """Valid frames of one kind: required fields always, optional ones sometimes."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    assert isinstance(info.tag, str)
    identifiers = IDENTIFIER_FIELDS[info.tag]
    fields = {
        field.name: _for_type(field.type, field.encode_name in identifiers) for field in info.fields
    }
    return st.builds(struct, **fields)


frames: st.SearchStrategy[Frame] = st.one_of([frames_of(struct) for struct in FRAME_TYPES])
batches: st.SearchStrategy[list[Frame]] = st.lists(frames, min_size=0, max_size=8)

# Values of every JSON/MessagePack type, to put where a field's value should be.
wire_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)


def as_map(frame: Frame) -> dict[str, Any]:
    """A frame as the plain map that goes on the wire (wire keys, optional fields omitted)."""
    mapping: dict[str, Any] = msgspec.to_builtins(frame)
    return mapping
