"""Alert notifications from the real daemon to real HTTP receivers on loopback, with a restart
between the raise and the clear: a signed webhook and a Slack-shaped one get the raise from the
first run and the clear from the second, each once; ``/healthz`` and ``/metrics`` count them.
The receiver down for 30 s is ``test_notify_down.py`` (slow); a real Alertmanager is
``test_notify_alertmanager.py`` (slow)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon
from collector.notifications.payloads import verify
from tests.e2e.notify_support import Feeder, active_alerts, config, sink_health
from tests.notifications.receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "a-webhook-secret-of-the-test"


def sinks(hook: Receiver, chat: Receiver) -> str:
    return (
        f"[[notify]]\nname = 'hook'\nkind = 'webhook'\nurl = '{hook.url}'\n"
        "secret_env = 'BWMON_TEST_HOOK_SECRET'\nheaders = { X-Team = 'media' }\n"
        "retry_initial_s = 0.2\nretry_max_s = 1.0\n"
        f"[[notify]]\nname = 'chat'\nkind = 'slack'\nurl = '{chat.url}'\n"
        "public_url = 'https://bwmon.example.com'\n"
    )


def test_raise_and_clear_reach_a_signed_webhook_and_slack_once_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BWMON_TEST_HOOK_SECRET", SECRET)
    hook, chat = Receiver(), Receiver()
    path = config(tmp_path, sinks(hook, chat))
    feeder = Feeder()
    first = start_daemon(tmp_path / "first.log", ["--config", str(path)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    try:
        feeder.feed(first, 300, lambda: len(hook.received()) == 1 and len(chat.received()) == 1)
        assert first.stop() == 0
        second = start_daemon(tmp_path / "second.log", ["--config", str(path), *ports])
        try:
            assert active_alerts(second) == 1  # from the checkpoint
            feeder.feed(second, 20, lambda: active_alerts(second) == 0)
            hook.wait_for(lambda got: len(got) >= 2)
            chat.wait_for(lambda got: len(got) >= 2)
            health = sink_health(second, "hook")
            with urllib.request.urlopen(f"http://127.0.0.1:{second.http_port}/metrics") as r:
                metrics = r.read().decode()
            assert second.stop() == 0
        finally:
            second.stop()
    finally:
        first.stop()
        hook.close()
        chat.close()

    for receiver in (hook, chat):  # nothing lost, nothing doubled
        deliveries = [r.headers["x-bwmon-delivery"] for r in receiver.received()]
        assert len(deliveries) == 2 == len(set(deliveries))
        assert deliveries[0].endswith(":raised")
        assert deliveries[1] == deliveries[0].replace(":raised", ":cleared")

    raised, cleared = hook.received()
    for request in (raised, cleared):
        assert verify(SECRET.encode(), request.body, request.headers["x-bwmon-signature"])
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-team"] == "media"
        assert request.headers["x-bwmon-delivery"] == request.json()["id"]
    body = raised.json()
    assert {
        k: body[k] for k in ("state", "rule", "severity", "scope", "meeting", "participant")
    } == {
        "state": "raised",
        "rule": "slow_rtt",
        "severity": "critical",
        "scope": "participant",
        "meeting": "m1",
        "participant": "p1",
    }
    assert (body["value"], body["threshold"], body["cleared_at"]) == (300.0, 100.0, None)
    assert cleared.json()["state"] == "cleared"
    assert cleared.json()["alert_id"] == body["alert_id"]
    assert (cleared.json()["value"], cleared.json()["threshold"]) == (20.0, 90.0)
    assert cleared.json()["cleared_at"] is not None

    slack_raised, slack_cleared = (r.json() for r in chat.received())
    assert "*RAISED*" in slack_raised["blocks"][0]["text"]["text"]
    assert "*CLEARED*" in slack_cleared["blocks"][0]["text"]["text"]
    assert slack_raised["text"].startswith("RAISED slow_rtt (critical)")
    assert "https://bwmon.example.com/api/alerts?meeting=m1" in str(slack_raised["blocks"][1])
    assert "x-bwmon-signature" not in chat.received()[0].headers  # Slack verifies none

    # The second run delivered the clear only.
    assert (health["sent"], health["failed"], health["dropped"], health["queue_depth"]) == (
        1,
        0,
        0,
        0,
    )
    assert 'bwmon_notify_sent_total{sink="hook",kind="webhook"} 1' in metrics
    assert 'bwmon_notify_queue_depth{sink="chat",kind="slack"} 0' in metrics
