"""Client messages of ``/subscribe`` (PROTOCOL.md §12.2): which topic names are valid."""

from __future__ import annotations

import msgspec
import pytest

from protocol.frames import MAX_ID_CHARS
from protocol.subscribe import (
    MAX_CLIENT_MESSAGE_BYTES,
    Subscribe,
    client_json_decoder,
    client_msgpack_decoder,
    is_topic,
)

VALID = [
    "meetings",
    "http",
    "alerts",
    "meeting:m",
    "meeting:" + "m" * MAX_ID_CHARS,
    "meeting:réunion-北京",
    "meeting:user@example.com",
]
NOT_TOPICS = [
    "",
    "rooms",
    "Meetings",
    "meetings ",
    "meeting:",
    "meeting:" + "m" * (MAX_ID_CHARS + 1),
    "meeting:has space",
    "meeting:tab\there",
    "meeting:zero\u200bwidth",  # a format character (Cf): not an identifier (§4.1)
    "meeting:no\u00a0break",  # a separator (Zs)
    "meeting:\x7f",
    "x" * 3000,
]


@pytest.mark.parametrize("topic", VALID)
def test_valid_topics(topic: str) -> None:
    assert is_topic(topic)


@pytest.mark.parametrize("topic", NOT_TOPICS, ids=lambda topic: repr(topic)[:40])
def test_strings_that_are_not_topics(topic: str) -> None:
    assert not is_topic(topic)


@pytest.mark.parametrize("topic", NOT_TOPICS, ids=lambda topic: repr(topic)[:40])
def test_any_topic_string_decodes_so_that_it_can_be_answered_unknown_topic(topic: str) -> None:
    # A topic that is not valid is unknown_topic, not bad_message: the decoder takes any
    # string that fits in a client message (PROTOCOL.md §12.6).
    message = {"t": "subscribe", "topic": topic}
    data = msgspec.json.encode(message)
    assert len(data) <= MAX_CLIENT_MESSAGE_BYTES
    assert client_json_decoder.decode(data) == Subscribe(topic=topic)
    assert client_msgpack_decoder.decode(msgspec.msgpack.encode(message)) == Subscribe(topic=topic)
