"""Bytes ↔ frames: the one decode entry point and the encoders.

``decode_message(data, limits)`` takes one UDP datagram or one WebSocket message and returns the
good frames and a ``ProtocolError`` for each bad one. It never raises: every failure, whatever
the input, becomes a ``ProtocolError`` value with a stable reason code (PROTOCOL.md §6).

A message is one of:

- a MessagePack map (one frame) or array (a batch of frames);
- a JSON object or array, the same;
- JSON lines: one JSON object per line (``echo '{...}' | nc -u host port``), recognised when
  the message is not a single JSON value and has two or more non-blank lines (PROTOCOL.md §3.3).

A batch that decodes cleanly takes one call into msgspec's C decoder. Only when it fails does the
decoder look at the frames one by one, so a single bad frame costs its own error and rejects
nothing else in the batch.

Exceptions raised to the caller: none. ``ProtocolError`` is an ``Exception`` so that callers that
want to fail fast (``decode_frame``) can raise it.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from protocol.errors import BwmonError
from protocol.frames import Event, Frame, HttpSample, RtcSample
from protocol.limits import Limits

# Reason codes: stable, part of the spec; counters and error replies use them as they are.
EMPTY: Final = "empty"
TOO_LARGE: Final = "too_large"
MALFORMED: Final = "malformed"
NOT_A_FRAME: Final = "not_a_frame"
UNKNOWN_TAG: Final = "unknown_tag"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
OUT_OF_RANGE: Final = "out_of_range"
BAD_STRING: Final = "bad_string"
BAD_VALUE: Final = "bad_value"
BAD_LENGTH: Final = "bad_length"
BATCH_TOO_LARGE: Final = "batch_too_large"
INVALID: Final = "invalid"

REASONS: Final = (
    EMPTY,
    TOO_LARGE,
    MALFORMED,
    NOT_A_FRAME,
    UNKNOWN_TAG,
    MISSING_FIELD,
    WRONG_TYPE,
    OUT_OF_RANGE,
    BAD_STRING,
    BAD_VALUE,
    BAD_LENGTH,
    BATCH_TOO_LARGE,
    INVALID,
)

MAX_DETAIL_CHARS: Final = 200


class ProtocolError(BwmonError):
    """A rejected message or frame: ``reason`` is a code from ``REASONS``.

    ``index`` is the frame's position in its batch (or its line, for JSON lines), ``None`` when
    the whole message was rejected. ``detail`` is for humans and may change between versions.
    """

    def __init__(self, reason: str, detail: str, index: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.index = index


DEFAULT_LIMITS: Final = Limits()


class Decoded:
    """What one message held: the good frames, in order, and one error per bad one."""

    __slots__ = ("errors", "frames")

    def __init__(self, frames: list[Frame], errors: list[ProtocolError]) -> None:
        self.frames = frames
        self.errors = errors

    def __repr__(self) -> str:
        return f"Decoded(frames={self.frames!r}, errors={self.errors!r})"


_Message = Frame | list[Frame]
_mp_message = msgspec.msgpack.Decoder(_Message)
_mp_frame = msgspec.msgpack.Decoder(Frame)
_mp_raw_batch = msgspec.msgpack.Decoder(list[msgspec.Raw])
_js_message = msgspec.json.Decoder(_Message)
_js_frame = msgspec.json.Decoder(Frame)
_js_raw_batch = msgspec.json.Decoder(list[msgspec.Raw])
_js_raw_value = msgspec.json.Decoder(msgspec.Raw)
_mp_encoder = msgspec.msgpack.Encoder()
_js_encoder = msgspec.json.Encoder()

_JSON_FIRST_BYTES: Final = frozenset(b"{[ \t\r\n")
_JSON_WHITESPACE: Final = b" \t\r\n"
# Invalid UTF-8 comes as UnicodeDecodeError (a ValueError); input nested deeper than the
# interpreter's recursion limit (a kilobyte of "[[[[…" suffices) as RecursionError.
_DecodeErrors = (msgspec.DecodeError, ValueError, RecursionError)

# msgspec's validation messages → our reason codes, first match wins.
_CLASSIFIERS: Final = (
    # anchored: details echo client strings, which must not steer the classification
    (
        re.compile(r"^Object missing required field `t`|^Invalid value .* - at `\$(\[\d+\])?\.t`$"),
        UNKNOWN_TAG,
    ),
    # a tag that is not a string: JSON and MessagePack word it differently
    (re.compile(r"^Expected `str`(, got `[a-z]+`)? - at `\$(\[\d+\])?\.t`$"), UNKNOWN_TAG),
    (re.compile(r"^Object missing required field"), MISSING_FIELD),
    (re.compile(r"^Expected `(int|float)` [<>]=|^Number out of range"), OUT_OF_RANGE),
    (re.compile(r"^Expected `str` (of length|matching)"), BAD_STRING),
    (re.compile(r"^Expected `array` of length"), BAD_LENGTH),
    (re.compile(r"^Invalid enum value"), BAD_VALUE),
    (re.compile(r"^Expected `(object|object \| array)`, got"), NOT_A_FRAME),
    (re.compile(r"^Expected `"), WRONG_TYPE),
    (re.compile(r"malformed|truncated|utf-8|UTF-8"), MALFORMED),
)


def _clean(text: str) -> str:
    """Make a detail safe to log and send back: printable, bounded (hostile input echoes)."""
    text = text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
    return text[:MAX_DETAIL_CHARS]


def _classify(exc: Exception, index: int | None) -> ProtocolError:
    if isinstance(exc, RecursionError):
        return ProtocolError(MALFORMED, "nested too deeply", index)
    message = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return ProtocolError(MALFORMED, _clean(message), index)
    for pattern, reason in _CLASSIFIERS:
        if pattern.search(message):
            return ProtocolError(reason, _clean(message), index)
    return ProtocolError(INVALID, _clean(message), index)


def _identifiers(frame: Frame) -> tuple[str | None, ...]:
    if isinstance(frame, RtcSample):
        return (
            frame.meeting,
            frame.participant,
            frame.connection,
            frame.turn_url,
            frame.pair_id,
            frame.boot,
        )
    if isinstance(frame, HttpSample):
        return (frame.service, frame.instance, frame.boot, frame.route)
    if isinstance(frame, Event):
        return (frame.meeting, frame.participant, frame.connection)
    return (frame.boot,)


def _check_identifiers(frame: Frame) -> ProtocolError | None:
    """Identifiers may hold no whitespace or control characters (PROTOCOL.md §4.1).

    Checked here rather than as a schema pattern: ``str.isprintable`` costs a fraction of a
    regex match, and identifiers come with every frame. The character rule of
    ``frames.is_identifier``, inlined (the lengths are the Structs' to check): this runs for
    every identifier of every frame.
    """
    for value in _identifiers(frame):
        if value is not None and (" " in value or not value.isprintable()):
            # repr() escapes the offending characters; _clean bounds the whole detail
            shown = repr(value[:40])
            return ProtocolError(
                BAD_STRING, _clean(f"identifier has whitespace or control characters: {shown}")
            )
    return None


def _accept(frames: list[Frame], errors: list[ProtocolError], offset: int = 0) -> list[Frame]:
    good: list[Frame] = []
    for i, frame in enumerate(frames):
        error = _check_identifiers(frame)
        if error is None:
            good.append(frame)
        else:
            error.index = i + offset
            errors.append(error)
    return good


def _decode_each(
    raws: list[msgspec.Raw], decoder: msgspec.msgpack.Decoder[Frame] | msgspec.json.Decoder[Frame]
) -> Decoded:
    frames: list[Frame] = []
    errors: list[ProtocolError] = []
    for i, raw in enumerate(raws):
        try:
            frame = decoder.decode(raw)
        except _DecodeErrors as exc:
            errors.append(_classify(exc, i))
            continue
        error = _check_identifiers(frame)
        if error is None:
            frames.append(frame)
        else:
            error.index = i
            errors.append(error)
    return Decoded(frames, errors)


def _whole(message: Frame | list[Frame], limits: Limits) -> Decoded:
    errors: list[ProtocolError] = []
    if isinstance(message, list):
        if len(message) > limits.max_frames_per_message:
            return _rejected(
                BATCH_TOO_LARGE, f"{len(message)} frames, at most {limits.max_frames_per_message}"
            )
        return Decoded(_accept(message, errors), errors)
    error = _check_identifiers(message)  # a single frame: its error concerns the whole message
    return Decoded([message], errors) if error is None else Decoded([], [error])


def _rejected(reason: str, detail: str) -> Decoded:
    return Decoded([], [ProtocolError(reason, detail)])


def _json_lines(data: bytes) -> list[bytes] | None:
    """The non-blank lines of a JSON-lines message; None if ``data`` is not one.

    A message is JSON lines when it is not a single JSON value (whatever the frames in it) and
    has at least two non-blank lines. A pretty-printed object or array is a single JSON value.
    """
    lines = [line for line in data.splitlines() if line.strip(_JSON_WHITESPACE)]
    if len(lines) < 2:
        return None
    try:
        _js_raw_value.decode(data)
    except _DecodeErrors:
        return lines
    return None


def _decode_json_lines(lines: list[bytes], limits: Limits) -> Decoded:
    if len(lines) > limits.max_frames_per_message:
        return _rejected(
            BATCH_TOO_LARGE, f"{len(lines)} lines, at most {limits.max_frames_per_message}"
        )
    return _decode_each([msgspec.Raw(line) for line in lines], _js_frame)


def decode_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Decoded:
    """Decode one datagram or WebSocket message. Never raises."""
    size = len(data)
    if size == 0:
        return _rejected(EMPTY, "empty message")
    if size > limits.max_message_bytes:
        return _rejected(TOO_LARGE, f"{size} bytes, at most {limits.max_message_bytes}")
    is_json = data[0] in _JSON_FIRST_BYTES
    try:
        message = (_js_message if is_json else _mp_message).decode(data)
    except _DecodeErrors as exc:
        # Without its traceback: kept in this frame, it would make a reference cycle (exception,
        # traceback, frame) that only the garbage collector frees, for every bad message.
        first_error = exc.with_traceback(None)
    else:
        return _whole(message, limits)
    # The fast path failed: find out which frames are bad, keeping the good ones.
    try:
        raws = (_js_raw_batch if is_json else _mp_raw_batch).decode(data)
    except _DecodeErrors as exc:
        if isinstance(exc, RecursionError):
            return Decoded([], [_classify(exc, None)])
        lines = _json_lines(data) if is_json else None
        if lines is not None:
            return _decode_json_lines(lines, limits)
        return Decoded([], [_classify(first_error, None)])  # not a batch: a single bad frame
    if len(raws) > limits.max_frames_per_message:
        return _rejected(
            BATCH_TOO_LARGE, f"{len(raws)} frames, at most {limits.max_frames_per_message}"
        )
    return _decode_each(raws, _js_frame if is_json else _mp_frame)


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Decode a message that must hold exactly one good frame; raise ``ProtocolError`` if not."""
    decoded = decode_message(data, limits)
    if decoded.errors:
        raise decoded.errors[0]
    if len(decoded.frames) != 1:
        raise ProtocolError(NOT_A_FRAME, f"expected one frame, got {len(decoded.frames)}")
    return decoded.frames[0]


def encode_msgpack(message: Frame | list[Frame]) -> bytes:
    """One frame or a batch as MessagePack (the compact form)."""
    return _mp_encoder.encode(message)


def encode_json(message: Frame | list[Frame]) -> bytes:
    """One frame or a batch as JSON (the readable form)."""
    return _js_encoder.encode(message)


def encode_json_lines(frames: list[Frame]) -> bytes:
    """Frames as JSON lines, one object per line."""
    return b"".join(_js_encoder.encode(frame) + b"\n" for frame in frames)
