"""PROTOCOL.md stays complete and its examples stay true of the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest

from protocol import (
    DEFAULT_LIMITS,
    FRAME_TYPES,
    HTTP_LATENCY_BOUNDS_MS,
    REASONS,
    decode_frame,
    decode_message,
    encode_msgpack,
    subscribe,
)
from protocol.frames import MAX_NESTING, Frame, Hello
from protocol.session import IngestAnswer, SessionMessage
from protocol.tokens import verify
from protocol.vectors.generate import (
    EVENT_ICE,
    EVENT_JOIN,
    HTTP,
    RTC_FULL,
    RTC_MINIMAL,
    VECTORS_DIR,
)

SPEC = (Path(__file__).parents[2] / "protocol" / "PROTOCOL.md").read_text(encoding="utf-8")


def section(number: str) -> str:
    """The text of the section whose heading starts with ``number`` (e.g. "4.3", "6")."""
    match = re.search(rf"^(#+) {re.escape(number)}[. ].*$", SPEC, flags=re.MULTILINE)
    assert match, f"no section {number}"
    level = len(match.group(1))
    rest = SPEC[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def code_blocks(text: str, info: str) -> list[str]:
    """Code blocks with the given info string, list-item indentation removed."""
    blocks = re.findall(rf"^( *)```{info}\n(.*?)^ *```", text, flags=re.MULTILINE | re.DOTALL)
    return [re.sub(rf"^{indent}", "", body, flags=re.MULTILINE) for indent, body in blocks]


FRAME_SECTIONS = {"hello": "4.2", "rtc": "4.3", "http": "4.4", "event": "4.5"}


@pytest.mark.parametrize("struct", FRAME_TYPES, ids=lambda s: s.__name__)
def test_every_wire_key_has_a_table_row(struct: type) -> None:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    assert isinstance(info.tag, str)
    text = section(FRAME_SECTIONS[info.tag])
    for field in info.fields:
        row = re.search(rf"^\| `{field.encode_name}` \| {field.name} \|(.*)$", text, re.MULTILINE)
        assert row, f"{info.tag}.{field.encode_name} ({field.name}) is not documented"
        requirement = "R" if field.required else "O"
        assert f"| {requirement} |" in row.group(1), f"{info.tag}.{field.encode_name}"


def test_every_reason_code_is_documented() -> None:
    errors = section("6")
    for reason in REASONS:
        assert re.search(rf"^\| `{reason}` \|", errors, re.MULTILINE), reason


def test_latency_bounds_match() -> None:
    row = next(line for line in section("4.1").splitlines() if line.startswith("| latency"))
    bounds = [int(n) for n in re.findall(r"≤ (\d+)", row)]
    assert tuple(bounds) == HTTP_LATENCY_BOUNDS_MS
    assert f"> {HTTP_LATENCY_BOUNDS_MS[-1]}" in row


def test_default_limits_are_stated() -> None:
    limits = section("5")
    assert (
        f"{DEFAULT_LIMITS.max_message_bytes:,} bytes and {DEFAULT_LIMITS.max_frames_per_message:,}"
        in limits
    )


def _header_kind(first_byte: int) -> str:
    if 0x80 <= first_byte <= 0x8F:
        return "fixmap"
    return {0xDE: "`map 16`", 0xDF: "`map 32`"}[first_byte]


def test_the_map_headers_the_reference_encoder_writes_are_stated() -> None:
    """§3.4's table names, per frame kind, the map header of every frame the encoder writes:
    the smallest and the largest frame of each kind, and the golden vectors it made."""
    table = dict(re.findall(r"^ *\| `([a-z]+)` \| ([^|]+?)(?:,[^|]*)? \|$", section("3.4"), re.M))
    assert set(table) == set(FRAME_SECTIONS)
    smallest: list[Frame] = [Hello(boot="b"), RTC_MINIMAL, HTTP, EVENT_JOIN]
    largest: list[Frame] = [
        Hello(boot="b", v=2, kind="server", agent="a", host="h", pid=1, token="t"),
        RTC_FULL,
        HTTP,
        EVENT_ICE,
    ]
    for frame in [*smallest, *largest]:
        tag = str(type(frame).__struct_config__.tag)
        assert _header_kind(encode_msgpack(frame)[0]) == table[tag], tag
    # The vectors of one frame built from the Structs are the encoder's bytes.
    for name in ("hello", "hello_minimal", "rtc_full", "rtc_minimal", "http", "event"):
        data = (VECTORS_DIR / f"{name}.msgpack").read_bytes()
        (frame,) = decode_message(data).frames
        assert encode_msgpack(frame) == data
        tag = str(type(frame).__struct_config__.tag)
        assert _header_kind(data[0]) == table[tag], name


def test_the_nesting_limit_is_stated() -> None:
    assert f"a message is at most **{MAX_NESTING}** levels deep" in section("5.1")


def test_worked_rtc_example_matches_the_encoder() -> None:
    text = section("10.1")
    (json_text,) = code_blocks(text, "json")
    (hex_text,) = code_blocks(text, "text")
    frame = decode_frame(json_text.strip().encode())
    assert encode_msgpack(frame) == bytes.fromhex(hex_text)
    assert f"JSON ({len(json_text.strip())} bytes)" in text
    assert f"({len(bytes.fromhex(hex_text))} bytes, hex)" in text


def test_json_examples_are_valid_messages() -> None:
    session_decoder = msgspec.json.Decoder(SessionMessage)
    blocks = code_blocks(SPEC, "json")
    assert len(blocks) >= 5
    for block in blocks:
        data = block.strip().encode()
        if (
            data.startswith(b'{"t":"welcome"')
            or data.startswith(b'{"t":"error"')
            or (data.startswith(b'{"t":"ack"'))
        ):
            session_decoder.decode(data)
            continue
        if data.startswith(b'{"accepted"'):  # an answer to POST /ingest (§2.4)
            msgspec.json.decode(data, type=IngestAnswer)
            continue
        decoded = decode_message(data)
        assert decoded.errors == [], block
        assert decoded.frames


def test_shell_example_frames_are_valid() -> None:
    (shell,) = code_blocks(section("10.2"), "sh")
    lines = re.findall(r"'(\{.*?\})'", shell)
    assert len(lines) == 3
    decoded = decode_message("\n".join(lines).encode() + b"\n")
    assert decoded.errors == []
    assert len(decoded.frames) == 3


def test_session_transcript_is_consistent() -> None:
    (transcript,) = code_blocks(section("10.4"), "text")
    session_decoder = msgspec.json.Decoder(SessionMessage)
    messages: list[str] = []
    replies: list[str] = []
    pending = ""
    for raw in transcript.splitlines():
        line = re.sub(r"\s+message \d+$", "", raw.rstrip())
        if line.startswith("→ {") or line.startswith("→ ["):
            pending = line[2:]
        elif pending and line.startswith("   "):
            pending += line.strip()
        elif line.startswith("← {"):
            replies.append(line[2:])
            continue
        else:
            continue
        if pending[0] + pending[-1] in ("{}", "[]"):
            messages.append(pending)
            pending = ""
    hello, *rest = messages
    assert decode_message(hello.encode()).frames
    accepted = rejected = 0
    for number, message in enumerate(rest, start=1):
        decoded = decode_message(message.encode())
        accepted += len(decoded.frames)
        rejected += len(decoded.errors)
        for error in decoded.errors:
            expected = {
                "t": "error",
                "msg": number,
                "index": error.index,
                "reason": error.reason,
                "detail": error.detail,
            }
            assert any(msgspec.json.decode(reply) == expected for reply in replies), expected
    for reply in replies:
        session_decoder.decode(reply)
    ack = msgspec.json.decode(replies[-1])
    assert ack == {"t": "ack", "msg": len(rest), "accepted": accepted, "rejected": rejected}


SUBSCRIBER_TABLES = {
    "subscribe": "12.2",
    "unsubscribe": "12.2",
    "snapshot": "12.4",
    "delta": "12.4",
}


@pytest.mark.parametrize(
    "struct",
    [subscribe.Subscribe, subscribe.Unsubscribe, subscribe.Snapshot, subscribe.Delta],
    ids=lambda s: s.__name__,
)
def test_every_subscriber_message_key_is_documented(struct: type) -> None:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    assert isinstance(info.tag, str)
    text = section(SUBSCRIBER_TABLES[info.tag])
    for key in [info.tag_field, *(f.encode_name for f in info.fields)]:
        assert re.search(rf"^\| `{key}` \|", text, re.MULTILINE), f"{info.tag}.{key}"


def test_every_subscriber_error_code_is_documented() -> None:
    errors = section("12.6")
    codes = [subscribe.BAD_MESSAGE, subscribe.UNKNOWN_TOPIC, subscribe.TOO_MANY_TOPICS]
    for code in [*codes, subscribe.UNAVAILABLE]:
        assert re.search(rf"^\| `{code}` \|", errors, re.MULTILINE), code
    assert f"{subscribe.MAX_CLIENT_MESSAGE_BYTES} bytes" in section("12.1")
    assert f"{subscribe.MAX_TOPICS_PER_SESSION} topics" in section("12.1")


def test_subscriber_transcript_decodes_and_applies() -> None:
    (transcript,) = code_blocks(section("12.8"), "text")
    mirror = subscribe.TopicMirror("meetings")
    for line in transcript.splitlines():
        if line.startswith("→ {"):
            subscribe.client_json_decoder.decode(line[2:])
        elif line.startswith("← {"):
            message = subscribe.server_json_decoder.decode(line[2:])
            assert isinstance(message, subscribe.Snapshot | subscribe.Delta)
            assert mirror.receive(message) is None
    assert mirror.seq == 45
    assert mirror.entities["standup"]["participants"] == 3


@pytest.mark.skipif(
    not (shutil.which("basenc") and shutil.which("openssl")), reason="needs basenc and openssl"
)
def test_the_shell_recipe_for_minting_a_token_makes_one_the_daemon_accepts() -> None:
    section = SPEC[SPEC.index("Minting anywhere else") :]
    recipe = re.search(r"```sh\n(.*?)```", section, re.S)
    assert recipe is not None
    key = "a-shell-minted-key-" + "s" * 20
    result = subprocess.run(
        ["bash", "-c", recipe.group(1)],
        env={"KEY": key, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    claims = verify([key], result.stdout.strip(), time.time())
    assert (claims.rights, claims.meeting) == (["read"], "standup")
