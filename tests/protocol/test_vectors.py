"""The golden vectors: fresh, complete, and decoded exactly as their manifest says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol import Frame, Hello, RtcSample, decode_message, encode_msgpack
from protocol.vectors import generate

MANIFEST: dict[str, Any] = json.loads((generate.VECTORS_DIR / generate.MANIFEST).read_text())
VECTORS: list[dict[str, Any]] = MANIFEST["vectors"]
BY_NAME = {vector["name"]: vector for vector in VECTORS}


def read(name: str) -> bytes:
    return (generate.VECTORS_DIR / name).read_bytes()


def tag(frame: Frame) -> str:
    return str(type(frame).__struct_config__.tag)


def test_committed_vectors_are_fresh() -> None:
    assert generate.stale_files() == [], "run: python -m protocol.vectors.generate"


def test_manifest_lists_every_file() -> None:
    listed = {name for vector in VECTORS for name in vector["files"].values()}
    present = {
        path.name
        for path in generate.VECTORS_DIR.iterdir()
        if path.suffix in {".json", ".jsonl", ".msgpack"} and path.name != generate.MANIFEST
    }
    assert listed == present


@pytest.mark.parametrize(
    ("name", "file"),
    [(vector["name"], file) for vector in VECTORS for file in vector["files"].values()],
)
def test_vector_decodes_as_the_manifest_says(name: str, file: str) -> None:
    vector = BY_NAME[name]
    decoded = decode_message(read(file))
    assert len(decoded.frames) == vector["frames"]
    assert [tag(frame) for frame in decoded.frames] == vector["kinds"]
    errors = [{"index": e.index, "reason": e.reason} for e in decoded.errors]
    assert errors == vector["errors"]


@pytest.mark.parametrize(
    "name", [v["name"] for v in VECTORS if {"json", "msgpack"} <= set(v["files"])]
)
def test_both_encodings_decode_to_equal_frames(name: str) -> None:
    files = BY_NAME[name]["files"]
    from_json = decode_message(read(files["json"]))
    from_msgpack = decode_message(read(files["msgpack"]))
    assert from_json.frames == from_msgpack.frames
    assert [(e.index, e.reason) for e in from_json.errors] == [
        (e.index, e.reason) for e in from_msgpack.errors
    ]


@pytest.mark.parametrize("name", [v["name"] for v in VECTORS if "equals" in v])
def test_vector_decodes_to_the_frames_of_the_one_it_equals(name: str) -> None:
    vector = BY_NAME[name]
    other = BY_NAME[vector["equals"]]
    for encoding, file in vector["files"].items():
        expected = decode_message(read(other["files"][encoding])).frames
        assert expected
        assert decode_message(read(file)).frames == expected


def test_nulls_are_covered_for_every_frame_with_a_default_besides_none() -> None:
    # hello's v and kind default to 1 and "other": null must give those, not an error.
    (hello,) = decode_message(read(BY_NAME["hello_nulls"]["files"]["msgpack"])).frames
    assert isinstance(hello, Hello)
    assert (hello.v, hello.kind) == (1, "other")


def test_the_required_cases_are_covered() -> None:
    reasons = {error["reason"] for vector in VECTORS for error in vector["errors"]}
    assert reasons >= {
        "empty",
        "malformed",
        "not_a_frame",
        "unknown_tag",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "bad_string",
        "bad_value",
        "bad_length",
    }
    kinds = {kind for vector in VECTORS for kind in vector["kinds"]}
    assert kinds == {"hello", "rtc", "http", "event"}
    assert any("jsonl" in vector["files"] for vector in VECTORS)
    mixed = [v for v in VECTORS if v["errors"] and v["kinds"]]
    assert mixed, "a vector with good frames kept next to bad ones"


def test_full_rtc_vector_has_every_field_within_512_bytes() -> None:
    data = read(BY_NAME["rtc_full"]["files"]["msgpack"])
    assert len(data) <= 512
    (frame,) = decode_message(data).frames
    assert isinstance(frame, RtcSample)
    assert all(getattr(frame, name) is not None for name in frame.__struct_fields__)
    assert encode_msgpack(frame) == data


def test_write_repairs_a_stale_directory(tmp_path: Path) -> None:
    (tmp_path / "gone.msgpack").write_bytes(b"\x00")
    (tmp_path / "README.md").write_text("not a vector: left alone")
    generate.write(tmp_path)
    assert generate.stale_files(tmp_path) == []
    assert not (tmp_path / "gone.msgpack").exists()
    assert (tmp_path / "README.md").exists()
    (tmp_path / "hello.json").write_bytes(b"{}")
    assert generate.stale_files(tmp_path) == ["hello.json"]
