"""bwmon's wire contract: frames, codec and limits. Imports only msgspec and the stdlib."""

from protocol.codec import (
    DEFAULT_LIMITS,
    REASONS,
    Decoded,
    ProtocolError,
    decode_frame,
    decode_message,
    encode_json,
    encode_json_lines,
    encode_msgpack,
)
from protocol.errors import BwmonError
from protocol.frames import (
    FRAME_TYPES,
    HTTP_LATENCY_BOUNDS_MS,
    HTTP_LATENCY_BUCKETS,
    PROTOCOL_VERSION,
    Event,
    Frame,
    Hello,
    HttpSample,
    RtcSample,
)
from protocol.limits import Limits

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_TYPES",
    "HTTP_LATENCY_BOUNDS_MS",
    "HTTP_LATENCY_BUCKETS",
    "PROTOCOL_VERSION",
    "REASONS",
    "BwmonError",
    "Decoded",
    "Event",
    "Frame",
    "Hello",
    "HttpSample",
    "Limits",
    "ProtocolError",
    "RtcSample",
    "decode_frame",
    "decode_message",
    "encode_json",
    "encode_json_lines",
    "encode_msgpack",
]
