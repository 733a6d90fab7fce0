"""Build the golden vectors of ``protocol/vectors/`` and write them with their manifest.

``python -m protocol.vectors.generate`` rewrites the files; ``--check`` only compares (exit
status 1 when something is stale). A test checks both that the committed files are what this
module builds and that ``decode_message`` gives the outcome the manifest promises.

The expected outcomes below are written by hand from PROTOCOL.md, never computed with the
decoder: the vectors test the decoder, not the other way round. Good frames are built from the
Structs; bad ones from plain maps, since the Structs cannot hold bad values.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from protocol.codec import (
    BAD_LENGTH,
    BAD_STRING,
    BAD_VALUE,
    EMPTY,
    MALFORMED,
    MISSING_FIELD,
    NOT_A_FRAME,
    OUT_OF_RANGE,
    UNKNOWN_TAG,
    WRONG_TYPE,
    encode_json,
    encode_json_lines,
    encode_msgpack,
)
from protocol.frames import PROTOCOL_VERSION, Event, Frame, Hello, HttpSample, RtcSample

VECTORS_DIR: Final = Path(__file__).parent
MANIFEST: Final = "vectors.json"
_OWN_FILES: Final = frozenset({"__init__.py", "generate.py", MANIFEST})
_VECTOR_SUFFIXES: Final = frozenset({".json", ".jsonl", ".msgpack"})

TS: Final = 1_764_338_400_123.5  # 2025-11-28T14:00:00.1235Z, in ms since the Unix epoch


@dataclass(frozen=True, slots=True)
class Vector:
    """One golden message: its bytes per encoding and the outcome a decoder must produce."""

    name: str
    description: str
    encodings: dict[str, bytes]  # "json" | "jsonl" | "msgpack" → the message's bytes
    kinds: tuple[str, ...] = ()  # the ``t`` of each accepted frame, in order
    errors: tuple[tuple[int | None, str], ...] = ()  # (index, reason) of each rejection
    equals: str | None = None  # a vector whose frames this one decodes to, field for field

    def files(self) -> dict[str, str]:
        return {encoding: f"{self.name}.{encoding}" for encoding in self.encodings}

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "files": self.files(),
            "frames": len(self.kinds),
            "kinds": list(self.kinds),
            "errors": [{"index": index, "reason": reason} for index, reason in self.errors],
        }
        if self.equals is not None:
            entry["equals"] = self.equals
        return entry


def _both(message: Frame | list[Frame]) -> dict[str, bytes]:
    return {"json": encode_json(message), "msgpack": encode_msgpack(message)}


def _both_raw(message: Any) -> dict[str, bytes]:
    return {"json": msgspec.json.encode(message), "msgpack": msgspec.msgpack.encode(message)}


def _as_map(frame: Frame) -> dict[str, Any]:
    mapping: dict[str, Any] = msgspec.to_builtins(frame)
    return mapping


RTC_FULL: Final = RtcSample(
    meeting="standup-4821",
    participant="u-1b9e4c7a",
    connection="pc-3",
    seq=1742,
    client_ts=TS,
    audio_bytes_sent=41_923_114,
    audio_packets_sent=349_360,
    audio_bytes_received=40_118_902,
    audio_packets_received=348_911,
    audio_packets_lost=1_204,
    audio_remote_packets_lost=987,
    video_bytes_sent=2_861_447_913,
    video_packets_sent=2_538_771,
    video_bytes_received=2_593_004_128,
    video_packets_received=2_301_556,
    video_packets_lost=4_112,
    video_remote_packets_lost=3_870,
    jitter_buffer_delay_s=20_118.62,
    jitter_buffer_emitted=335_392_000,
    concealed_samples=1_482_240,
    silent_concealed_samples=391_680,
    total_samples_received=335_520_000,
    frames_decoded=209_611,
    frames_dropped=342,
    freeze_count=7,
    freeze_duration_s=4.216,
    pair_bytes_sent=3_011_392_556,
    pair_bytes_received=2_741_266_090,
    rtt_ms=48.2,
    audio_jitter_ms=3.1,
    video_jitter_ms=7.9,
    fps_in=29.97,
    fps_out=30.0,
    width_in=1280,
    height_in=720,
    width_out=1280,
    height_out=720,
    available_outgoing_bps=2_450_000.0,
    limitation="bandwidth",
    audio_fec=True,
    local_candidate="relay",
    remote_candidate="srflx",
    relay_protocol="udp",
    turn_url="turn:turn1.example.net:3478?transport=udp",
    pair_id="CP4e2b9d71_a1b2c3d4",
    boot="b-93f1c2aa7e",
)
RTC_MINIMAL: Final = RtcSample(
    meeting="standup-4821", participant="u-1b9e4c7a", connection="pc-3", seq=0, client_ts=TS
)
HELLO_MINIMAL: Final = Hello(boot="b-93f1c2aa7e")
HELLO_BROWSER: Final = Hello(boot="b-93f1c2aa7e", kind="browser", agent="bwmon-js/0.1")
HELLO_SERVER: Final = Hello(
    boot="5d0c8e21a9f4", kind="server", agent="bwmon-py/0.1", host="api-7", pid=48213
)
HTTP: Final = HttpSample(
    service="checkout",
    instance="api-7:48213",
    boot="5d0c8e21a9f4",
    route="/v1/orders/{id}",
    method="GET",
    seq=311,
    client_ts=TS,
    requests=18_204,
    status=[0, 17_650, 212, 301, 41],
    bytes_in=2_913_640,
    bytes_out=96_480_127,
    latency_hist=[3_120, 6_904, 4_511, 2_108, 977, 402, 131, 38, 9, 3, 1, 0],
    latency_sum_ms=591_044.7,
)
EVENT_ICE: Final = Event(
    meeting="standup-4821",
    participant="u-1b9e4c7a",
    kind="ice",
    client_ts=TS,
    connection="pc-3",
    value="disconnected",
)
EVENT_JOIN: Final = Event(meeting="standup-4821", participant="u-77aa01", kind="join", client_ts=TS)
RTC_OTHER: Final = msgspec.structs.replace(
    RTC_MINIMAL,
    participant="u-77aa01",
    connection="pc-1",
    seq=88,
    video_bytes_received=12_880_113,
    video_packets_lost=17,
    rtt_ms=31.5,
)


def _nulls(frame: Frame) -> dict[str, Any]:
    """The frame's map with null for every optional field (PROTOCOL.md §3.2: null means
    absent)."""
    info = msgspec.inspect.type_info(type(frame))
    assert isinstance(info, msgspec.inspect.StructType)
    optional = {field.encode_name: None for field in info.fields if not field.required}
    return {**_as_map(frame), **optional}


def build_vectors() -> list[Vector]:
    """Every golden vector, in manifest order."""
    rtc_map = _as_map(RTC_MINIMAL)
    event_map = _as_map(EVENT_JOIN)
    http_map = _as_map(HTTP)
    full_msgpack = encode_msgpack(RTC_FULL)
    full_json = encode_json(RTC_FULL)
    return [
        # --- good messages ---
        Vector(
            "rtc_full",
            "An rtc sample with every field present, realistic values; at most 512 bytes "
            "as MessagePack.",
            _both(RTC_FULL),
            kinds=("rtc",),
        ),
        Vector(
            "rtc_minimal",
            "An rtc sample with only the required fields; optional fields are absent.",
            _both(RTC_MINIMAL),
            kinds=("rtc",),
        ),
        Vector(
            "hello",
            "A browser's hello: the first frame of a WebSocket session (v 1 is the default, "
            "so the encoder omits it).",
            _both(HELLO_BROWSER),
            kinds=("hello",),
        ),
        Vector(
            "hello_minimal",
            "A hello with its one required field, the boot nonce: v is 1 and kind is other.",
            _both(HELLO_MINIMAL),
            kinds=("hello",),
        ),
        Vector(
            "hello_nulls",
            "A hello with null for every optional field: null means absent, so v is 1 and "
            "kind is other, as in hello_minimal.",
            _both_raw(_nulls(HELLO_MINIMAL)),
            kinds=("hello",),
            equals="hello_minimal",
        ),
        Vector(
            "rtc_nulls",
            "An rtc sample with null for every optional field: the same frame as rtc_minimal.",
            _both_raw(_nulls(RTC_MINIMAL)),
            kinds=("rtc",),
            equals="rtc_minimal",
        ),
        Vector(
            "http",
            "Cumulative counters of one route of one server process: status classes "
            "1xx..5xx and a 12-bucket latency histogram.",
            _both(HTTP),
            kinds=("http",),
        ),
        Vector(
            "event",
            "An ICE state change of one participant's peer connection.",
            _both(EVENT_ICE),
            kinds=("event",),
        ),
        Vector(
            "batch_mixed",
            "A batch (array) of five frames of every kind.",
            _both([HELLO_SERVER, RTC_FULL, RTC_OTHER, EVENT_JOIN, HTTP]),
            kinds=("hello", "rtc", "rtc", "event", "http"),
        ),
        Vector(
            "json_lines",
            "JSON lines: one frame per line, as typed into `nc -u`. JSON only.",
            {"jsonl": encode_json_lines([HELLO_BROWSER, EVENT_JOIN, RTC_MINIMAL])},
            kinds=("hello", "event", "rtc"),
        ),
        Vector(
            "unknown_keys",
            "Keys the decoder does not know (from a newer client) are ignored, whatever "
            "their values.",
            _both_raw(
                {
                    **rtc_map,
                    "xq": 12,
                    "xnew": {"nested": [1, 2.5, None, "s"]},
                    "zz": [True, False],
                }
            ),
            kinds=("rtc",),
        ),
        Vector(
            "empty_batch",
            "An empty batch: accepted, holds no frame.",
            _both([]),
        ),
        # --- rejected messages and frames ---
        Vector(
            "bad_empty",
            "A message of zero bytes.",
            {"json": b"", "msgpack": b""},
            errors=((None, EMPTY),),
        ),
        Vector(
            "bad_truncated",
            "The rtc_full message cut in the middle.",
            {"json": full_json[: len(full_json) // 2], "msgpack": full_msgpack[:200]},
            errors=((None, MALFORMED),),
        ),
        Vector(
            "bad_unknown_tag",
            "A frame of a kind this version does not know.",
            _both_raw({"t": "metrics", "m": "standup-4821", "value": 3}),
            errors=((None, UNKNOWN_TAG),),
        ),
        Vector(
            "bad_missing_field",
            "An rtc sample without its required client timestamp `ts`.",
            _both_raw({k: v for k, v in rtc_map.items() if k != "ts"}),
            errors=((None, MISSING_FIELD),),
        ),
        Vector(
            "bad_wrong_type",
            "An rtc sample whose sequence number `q` is a string.",
            _both_raw({**rtc_map, "q": "1742"}),
            errors=((None, WRONG_TYPE),),
        ),
        Vector(
            "bad_out_of_range",
            "An rtc sample with a negative packets-lost counter `ail` (counters are >= 0).",
            _both_raw({**rtc_map, "ail": -3}),
            errors=((None, OUT_OF_RANGE),),
        ),
        Vector(
            "bad_string_too_long",
            "An event whose meeting id `m` has 129 characters (at most 128).",
            _both_raw({**event_map, "m": "m" * 129}),
            errors=((None, BAD_STRING),),
        ),
        Vector(
            "bad_identifier_chars",
            "A hello whose boot nonce holds a space: identifiers allow no whitespace or "
            "control characters.",
            _both_raw({"t": "hello", "boot": "boot 1"}),
            errors=((None, BAD_STRING),),
        ),
        Vector(
            "bad_enum",
            "An event of a kind `ev` outside its enumeration.",
            _both_raw({**event_map, "ev": "dance"}),
            errors=((None, BAD_VALUE),),
        ),
        Vector(
            "bad_length",
            "An http sample with four status classes instead of five.",
            _both_raw({**http_map, "st": [0, 17_650, 212, 301]}),
            errors=((None, BAD_LENGTH),),
        ),
        Vector(
            "batch_one_bad",
            "A batch of four: frame 1 has a string sequence number, frame 3 is not a map. "
            "Frames 0 and 2 are kept.",
            _both_raw([_as_map(RTC_OTHER), {**rtc_map, "q": "7"}, event_map, 42]),
            kinds=("rtc", "event"),
            errors=((1, WRONG_TYPE), (3, NOT_A_FRAME)),
        ),
        Vector(
            "json_lines_one_bad",
            "JSON lines where line 1 (counting non-blank lines from 0) is not JSON; the "
            "other lines are kept. JSON only.",
            {
                "jsonl": encode_json(HELLO_BROWSER)
                + b'\n{"t":"event",\n\n'
                + encode_json(EVENT_JOIN)
                + b"\n"
            },
            kinds=("hello", "event"),
            errors=((1, MALFORMED),),
        ),
    ]


def rendered(vectors: list[Vector]) -> dict[str, bytes]:
    """File name → content, manifest included."""
    files: dict[str, bytes] = {}
    for vector in vectors:
        for encoding, name in vector.files().items():
            files[name] = vector.encodings[encoding]
    manifest = {
        "protocol_version": PROTOCOL_VERSION,
        "about": (
            "Golden messages of the bwmon wire protocol (protocol/PROTOCOL.md). Each file is "
            "one message, byte for byte. 'kinds' are the tags of the frames a decoder must "
            "accept, in order; 'errors' the frames or messages it must reject, by index "
            "(null: the whole message) and reason code."
        ),
        "vectors": [vector.manifest_entry() for vector in vectors],
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def stale_files(directory: Path = VECTORS_DIR) -> list[str]:
    """Names of files that differ from what ``build_vectors`` makes, are missing, or are extra."""
    wanted = rendered(build_vectors())
    present = {
        path.name
        for path in directory.iterdir()
        if path.suffix in _VECTOR_SUFFIXES and path.name not in _OWN_FILES
    }
    stale = sorted(present - wanted.keys())
    for name, content in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_bytes() != content:
            stale.append(name)
    return stale


def write(directory: Path = VECTORS_DIR) -> list[str]:
    """Write every vector and the manifest; remove files of vectors that no longer exist."""
    wanted = rendered(build_vectors())
    changed = stale_files(directory)
    for name in changed:
        path = directory / name
        if name in wanted:
            path.write_bytes(wanted[name])
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        stale = stale_files()
        if stale:
            print(f"stale vectors: {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    for name in write():
        print(f"wrote {VECTORS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
