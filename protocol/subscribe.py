"""Messages of a WebSocket subscriber session (``/subscribe``, PROTOCOL.md §12).

Client → daemon: ``auth`` (an access token, when the daemon requires one), ``subscribe`` (a topic,
optionally with the position to resume from) and ``unsubscribe``. Daemon → client: ``snapshot`` (a
topic's whole state, ``full`` true), ``delta`` (what changed since ``prev``), ``alert`` (one raise
or clear), ``heartbeat`` and ``error``. A topic's state is a map of entities (id → map of fields);
a delta carries the changed entities with only their changed fields, and the ids of removed
entities.

Encodings as on ``/ingest``: a client that sends text (JSON) gets text, binary (MessagePack)
gets binary. This module imports nothing but msgspec and the standard library, like the frames,
so that clients in Python can use it without the daemon's dependencies.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeAlias

import msgspec
from msgspec import Meta

from protocol.frames import PROTOCOL_VERSION, is_identifier
from protocol.tokens import MAX_TOKEN_CHARS

MAX_CLIENT_MESSAGE_BYTES: Final = 4096
MAX_TOPICS_PER_SESSION: Final = 64
TOPICS: Final = ("meetings", "http", "alerts")  # plus "meeting:<meeting id>"
MEETING_TOPIC_PREFIX: Final = "meeting:"

Entities: TypeAlias = dict[str, dict[str, Any]]
Epoch: TypeAlias = Annotated[str, Meta(min_length=1, max_length=64)]
Seq: TypeAlias = Annotated[int, Meta(ge=0, le=2**53 - 1)]


def is_topic(name: str) -> bool:
    """``meetings``, ``http``, ``alerts`` or ``meeting:<meeting id>`` (an identifier of
    PROTOCOL.md §4.1)."""
    if name in TOPICS:
        return True
    return name.startswith(MEETING_TOPIC_PREFIX) and is_identifier(
        name[len(MEETING_TOPIC_PREFIX) :]
    )


# -- client → daemon -------------------------------------------------------------------------


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="t", kw_only=True):
    """Start (or restart) a topic; with ``epoch`` and ``seq`` the daemon replays what was
    missed after ``seq`` if it still holds it, else sends a snapshot.

    ``topic`` is any string (bounded by the message size): one that ``is_topic`` refuses is
    answered ``unknown_topic``, not ``bad_message`` (PROTOCOL.md §12.6)."""

    topic: str
    epoch: Epoch | None = None
    seq: Seq | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="t", kw_only=True):
    topic: str  # as in Subscribe


class Authenticate(msgspec.Struct, tag="auth", tag_field="t", kw_only=True):
    """Present an access token (``protocol.tokens``) before subscribing, when the daemon
    requires one; a later ``auth`` replaces it (a fresh token before the old one expires)."""

    token: Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN_CHARS)]


ClientMessage: TypeAlias = Subscribe | Unsubscribe | Authenticate


# -- daemon → client -------------------------------------------------------------------------


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="t", kw_only=True):
    """The topic's whole state at ``seq``; replaces anything the client held for it."""

    topic: str
    epoch: str
    seq: int
    at: float  # daemon time (s since the Unix epoch) the state was published
    entities: Entities
    full: bool = True
    v: int = PROTOCOL_VERSION


class Delta(msgspec.Struct, tag="delta", tag_field="t", kw_only=True, omit_defaults=True):
    """The changes from ``prev`` to ``seq``: apply only when holding ``prev`` of ``epoch``.
    On the ``alerts`` topic, ``alerts`` lists the raises and clears it carries, in order."""

    topic: str
    epoch: str
    seq: int
    prev: int
    at: float  # daemon time of the publish tick that produced the (last) change
    changed: Entities = msgspec.field(default_factory=dict)
    removed: list[str] = msgspec.field(default_factory=list)
    alerts: list[dict[str, Any]] = msgspec.field(default_factory=list)


class Alert(msgspec.Struct, tag="alert", tag_field="t", kw_only=True):
    """An alert raised or cleared, sent on the ``alerts`` topic before the delta that carries
    the same change of state."""

    topic: str
    epoch: str
    seq: int
    alert: dict[str, Any]


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="t", kw_only=True):
    at: float
    epoch: str


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="t", kw_only=True):
    topic: str


class SubscribeError(msgspec.Struct, tag="error", tag_field="t", kw_only=True):
    code: str
    detail: str
    topic: str | None = None


ServerMessage: TypeAlias = Snapshot | Delta | Alert | Heartbeat | Unsubscribed | SubscribeError

# Error codes (PROTOCOL.md §12.6).
BAD_MESSAGE: Final = "bad_message"
UNKNOWN_TOPIC: Final = "unknown_topic"
TOO_MANY_TOPICS: Final = "too_many_topics"
UNAVAILABLE: Final = "unavailable"
UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"


def apply(entities: Entities, delta: Delta) -> None:
    """Apply ``delta`` to a client's copy of a topic's ``entities`` (in place): removals
    first, then each changed entity's fields are set (a new entity is created)."""
    for entity in delta.removed:
        entities.pop(entity, None)
    for entity, fields in delta.changed.items():
        current = entities.get(entity)
        if current is None:
            entities[entity] = dict(fields)
        else:
            current.update(fields)


class TopicMirror:
    """A client's copy of one topic, kept by the rules of PROTOCOL.md §12.5.

    ``receive`` takes each ``snapshot``/``delta`` of the topic and returns None when it was
    applied (or was old news), or the ``Subscribe`` to send because a delta did not follow what
    is held (a gap, another epoch). ``resume`` is what to send after a reconnect."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.entities: Entities = {}
        self.epoch: str | None = None
        self.seq: int | None = None
        self.at = 0.0

    def resume(self) -> Subscribe:
        return Subscribe(topic=self.topic, epoch=self.epoch, seq=self.seq)

    def receive(self, message: Snapshot | Delta) -> Subscribe | None:
        if isinstance(message, Snapshot):
            self.entities = {k: dict(v) for k, v in message.entities.items()}
        elif self.seq is not None and message.epoch == self.epoch and message.seq <= self.seq:
            return None
        elif message.epoch != self.epoch or message.prev != self.seq:
            return self.resume()
        else:
            apply(self.entities, message)
        self.epoch, self.seq, self.at = message.epoch, message.seq, message.at
        return None


client_json_decoder: Final[msgspec.json.Decoder[ClientMessage]] = msgspec.json.Decoder(
    ClientMessage
)
client_msgpack_decoder: Final[msgspec.msgpack.Decoder[ClientMessage]] = msgspec.msgpack.Decoder(
    ClientMessage
)
server_json_decoder: Final[msgspec.json.Decoder[ServerMessage]] = msgspec.json.Decoder(
    ServerMessage
)
server_msgpack_decoder: Final[msgspec.msgpack.Decoder[ServerMessage]] = msgspec.msgpack.Decoder(
    ServerMessage
)
