"""A webhook receiver that is down for 30 s, with a daemon restart in the middle: every raise
and every clear made meanwhile arrives once it is up — nothing lost (the restart kept what was
pending in the checkpoint), nothing doubled, each clear after its raise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon
from tests.e2e.notify_support import Feeder, active_alerts, config, sink_health
from tests.helpers import free_port
from tests.notifications.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOWN_S = 30.0


def test_a_receiver_down_for_30_s_gets_every_transition_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    sinks = (
        f"[[notify]]\nname = 'hook'\nkind = 'webhook'\nurl = 'http://127.0.0.1:{port}/hook'\n"
        "retry_initial_s = 0.5\nretry_max_s = 4.0\n"
    )
    path = config(tmp_path, sinks)
    down_since = time.monotonic()
    feeder = Feeder(("p1", "p2", "p3"))
    first = start_daemon(tmp_path / "first.log", ["--config", str(path)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    try:
        feeder.feed(first, 300, lambda: active_alerts(first) == 3)
        feeder.feed(first, 20, lambda: active_alerts(first) == 0)
        failing = sink_health(first, "hook")
        assert (failing["sent"], failing["queue_depth"]) == (0, 6)
        assert failing["failed"] >= 1
        assert first.stop() == 0
    finally:
        first.stop()

    second = start_daemon(tmp_path / "second.log", ["--config", str(path), *ports])
    receiver: Receiver | None = None
    try:
        assert sink_health(second, "hook")["queue_depth"] == 6  # from the checkpoint
        feeder.feed(second, 300, lambda: active_alerts(second) == 1, participants=["p1"])
        feeder.feed(second, 20, lambda: active_alerts(second) == 0, participants=["p1"])
        assert time.monotonic() - down_since < DOWN_S, "the transitions took too long to make"
        time.sleep(DOWN_S - (time.monotonic() - down_since))
        receiver = Receiver(port=port)
        receiver.wait_for(lambda got: len(got) >= 8, timeout_s=30)
        deadline = time.monotonic() + 10
        while sink_health(second, "hook")["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.1)
        health = sink_health(second, "hook")
        assert second.stop() == 0
    finally:
        second.stop()
        if receiver is not None:
            receiver.close()

    deliveries = [r.headers["x-bwmon-delivery"] for r in receiver.received()]
    assert len(deliveries) == 8 == len(set(deliveries)), deliveries
    raised = [d for d in deliveries if d.endswith(":raised")]
    assert sorted(d.split(":")[1] for d in raised) == ["m1/p1", "m1/p1", "m1/p2", "m1/p3"]
    for alert in raised:
        clear = alert.replace(":raised", ":cleared")
        assert deliveries.index(alert) < deliveries.index(clear)
    assert (health["sent"], health["dropped"], health["queue_depth"]) == (8, 0, 0)
    assert health["retried"] >= 1
