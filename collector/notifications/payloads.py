"""What a sink is sent for one alert transition, and the webhook's signature. Pure: no I/O, no
clock (the send time is handed in), so every builder is tested with hypothesis.

* ``delivery_id``: the stable id of one transition, ``<alert id>:<raised|cleared>``. The
  raise and the clear of one alert share the alert id; a transition delivered twice (a kill
  between its delivery and the next checkpoint) carries the same delivery id both times, so a
  receiver can drop the second.
* ``webhook_body``: the generic JSON document (README "Notifications" shows one).
* ``slack_body``: Slack's incoming-webhook shape, ``text`` (the notification's fallback) and
  ``blocks``; raised and cleared differ in their first word and emoji.
* ``alertmanager_alert``: one element of Alertmanager's ``POST /api/v2/alerts`` array: labels
  (``alertname`` is the rule), annotations, ``startsAt``, ``endsAt`` only once cleared, and
  ``generatorURL``.
* ``signature``: ``sha256=<hex HMAC-SHA256 of the body>``, the value of ``X-Bwmon-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import msgspec

from collector.aggregate.alerts import AlertEvent

BODY_VERSION: Final = 1
SIGNATURE_HEADER: Final = "x-bwmon-signature"
DELIVERY_HEADER: Final = "x-bwmon-delivery"

_encoder = msgspec.json.Encoder()


def delivery_id(event: AlertEvent) -> str:
    return f"{event.id}:{event.state}"


def iso(at: float) -> str:
    """A Unix time as RFC 3339 in UTC with milliseconds, as Alertmanager and people read it."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def scope_of(event: AlertEvent) -> str:
    return "participant" if len(event.key) > 1 else "meeting"


def _participant(event: AlertEvent) -> str | None:
    return event.key[1] if len(event.key) > 1 else None


def _number(value: float | None) -> float | None:
    # JSON has no NaN or infinity; the engine never raises on them, a clear may carry None.
    return value if value is None or abs(value) < float("inf") else None


def webhook_body(event: AlertEvent, sent_at: float) -> bytes:
    """The generic webhook's JSON body for ``event`` (docs/CONFIG.md ``[[notify]]``)."""
    doc: dict[str, Any] = {
        "version": BODY_VERSION,
        "id": delivery_id(event),
        "alert_id": event.id,
        "state": event.state,
        "rule": event.rule,
        "severity": event.severity,
        "scope": scope_of(event),
        "meeting": event.key[0] if event.key else None,
        "participant": _participant(event),
        "value": _number(event.value),
        "threshold": _number(event.threshold),
        "raised_at": iso(event.raised_at),
        "cleared_at": iso(event.at) if event.state == "cleared" else None,
        "at": iso(event.at),
        "at_unix": event.at,
        "sent_at": iso(sent_at),
    }
    return _encoder.encode(doc)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does with ``X-Bwmon-Signature`` (README shows the same in a snippet)."""
    return hmac.compare_digest(signature(secret, body), header)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _where(event: AlertEvent) -> str:
    meeting = event.key[0] if event.key else "?"
    participant = _participant(event)
    return f"meeting {meeting}" + (f", participant {participant}" if participant else "")


def summary(event: AlertEvent) -> str:
    """One line for people: what, where, the value against the threshold."""
    value = "n/a (gone)" if event.value is None else f"{event.value:g}"
    return (
        f"{event.rule} ({event.severity}) {event.state} for {_where(event)}: "
        f"value {value}, threshold {event.threshold:g}"
    )


def slack_body(event: AlertEvent, link: str | None = None) -> bytes:
    """Slack's incoming-webhook message: ``text`` and ``blocks``, raised and cleared told apart
    by the first word and the emoji. ``link``: where the alert can be looked at."""
    raised = event.state == "raised"
    head = (
        f":rotating_light: *RAISED* {event.severity}"
        if raised
        else f":white_check_mark: *CLEARED* {event.severity}"
    )
    value = "n/a (gone)" if event.value is None else f"{event.value:g}"
    lines = [
        f"{head} `{_slack_escape(event.rule)}` — {_slack_escape(_where(event))}",
        f"value *{value}*, threshold {event.threshold:g}",
        f"raised {iso(event.raised_at)}" + ("" if raised else f", cleared {iso(event.at)}"),
    ]
    context = f"id `{_slack_escape(delivery_id(event))}`"
    if link:
        context += f" · <{link}|open>"
    doc = {
        "text": ("RAISED " if raised else "CLEARED ") + _slack_escape(summary(event)),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }
    return _encoder.encode(doc)


def alert_link(public_url: str, event: AlertEvent) -> str:
    """``GET /api/alerts`` of the alert's meeting on the daemon (docs/API.md)."""
    meeting = event.key[0] if event.key else ""
    return f"{public_url.rstrip('/')}/api/alerts?meeting={quote(meeting, safe='')}"


def alertmanager_alert(
    event: AlertEvent, public_url: str, extra_labels: Mapping[str, str]
) -> dict[str, Any]:
    """One alert of ``POST /api/v2/alerts``. Its labels identify it to Alertmanager (a raise,
    its resends and its clear carry the same ones); ``endsAt`` only on the clear: a firing one
    resolves when the daemon stops resending it (Alertmanager's ``resolve_timeout``)."""
    labels = {
        **extra_labels,
        "alertname": event.rule,
        "severity": event.severity,
        "scope": scope_of(event),
        "meeting": event.key[0] if event.key else "",
        "source": "bwmon",
    }
    if (participant := _participant(event)) is not None:
        labels["participant"] = participant
    annotations = {
        "summary": summary(event),
        "alert_id": event.id,
        "threshold": f"{event.threshold:g}",
    }
    if event.value is not None:
        annotations["value"] = f"{event.value:g}"
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso(event.raised_at),
        "generatorURL": alert_link(public_url, event),
    }
    if event.state == "cleared":
        alert["endsAt"] = iso(max(event.at, event.raised_at))
    return alert


def alertmanager_body(alerts: list[dict[str, Any]]) -> bytes:
    return _encoder.encode(alerts)
