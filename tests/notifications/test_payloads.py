"""The bodies each kind of sink is sent, and the webhook's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from collector.aggregate.alerts import AlertEvent
from collector.notifications import payloads

NAMES = st.text(min_size=1, max_size=40)
TIMES = st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False)
VALUES = st.none() | st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def events(draw: st.DrawFn) -> AlertEvent:
    key = tuple(draw(st.lists(NAMES, min_size=1, max_size=2)))
    raised_at = draw(TIMES)
    state: Literal["raised", "cleared"] = draw(st.sampled_from(["raised", "cleared"]))
    return AlertEvent(
        id=f"{draw(NAMES)}:{'/'.join(key)}:1@{round(raised_at * 1000)}",
        rule=draw(NAMES),
        key=key,
        state=state,
        severity=draw(st.sampled_from(["info", "warning", "critical"])),
        value=draw(VALUES),
        threshold=draw(st.floats(allow_nan=False, allow_infinity=False)),
        at=raised_at + (draw(st.floats(0, 86_400)) if state == "cleared" else 0),
        raised_at=raised_at,
    )


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@given(events(), TIMES)
def test_the_webhook_body_describes_the_transition(event: AlertEvent, now: float) -> None:
    body = json.loads(payloads.webhook_body(event, now))
    assert body["id"] == f"{event.id}:{event.state}" == payloads.delivery_id(event)
    assert body["alert_id"] == event.id
    assert (body["rule"], body["severity"], body["state"]) == (
        event.rule,
        event.severity,
        event.state,
    )
    assert body["meeting"] == event.key[0]
    assert body["participant"] == (event.key[1] if len(event.key) == 2 else None)
    assert body["scope"] == ("participant" if len(event.key) == 2 else "meeting")
    assert abs(parse_iso(body["raised_at"]) - event.raised_at) < 0.001
    assert abs(parse_iso(body["at"]) - event.at) < 0.001
    assert (body["cleared_at"] is None) == (event.state == "raised")
    finite = event.value is not None and abs(event.value) < float("inf")
    assert body["value"] == (event.value if finite else None)


@given(st.binary(), st.binary(min_size=1))
def test_the_signature_is_hmac_sha256_of_the_body(body: bytes, secret: bytes) -> None:
    header = payloads.signature(secret, body)
    assert header == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert payloads.verify(secret, body, header)
    assert not payloads.verify(secret + b"x", body, header)
    assert not payloads.verify(secret, body + b"x", header)


@given(events())
def test_slack_messages_tell_raised_from_cleared(event: AlertEvent) -> None:
    body = json.loads(payloads.slack_body(event, "http://127.0.0.1:1/api/alerts?meeting=m"))
    first = body["blocks"][0]["text"]["text"]
    word = "*RAISED*" if event.state == "raised" else "*CLEARED*"
    assert word in first
    assert body["text"].startswith(event.state.upper())
    assert body["blocks"][0]["type"] == "section"
    assert body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert body["blocks"][1]["elements"][0]["text"].startswith("id `")
    # Slack's control characters are escaped: no link or mention can be injected by a name.
    assert "<" not in body["text"]


@given(events())
def test_alertmanager_alerts_carry_labels_and_ends_only_once_cleared(event: AlertEvent) -> None:
    alert = payloads.alertmanager_alert(event, "http://bwmon:8470/", {"team": "media"})
    labels = alert["labels"]
    assert labels["alertname"] == event.rule
    assert labels["severity"] == event.severity
    assert labels["meeting"] == event.key[0]
    assert labels["team"] == "media"
    assert ("participant" in labels) == (len(event.key) == 2)
    assert alert["annotations"]["alert_id"] == event.id
    assert abs(parse_iso(alert["startsAt"]) - event.raised_at) < 0.001
    assert ("endsAt" in alert) == (event.state == "cleared")
    assert alert["generatorURL"].startswith("http://bwmon:8470/api/alerts?meeting=")
    json.loads(payloads.alertmanager_body([alert]))  # valid JSON whatever the value


def test_iso_times_are_utc_with_milliseconds() -> None:
    assert payloads.iso(0) == "1970-01-01T00:00:00.000Z"
    assert payloads.iso(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
