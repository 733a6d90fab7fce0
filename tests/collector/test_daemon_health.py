"""``/healthz`` as liveness: 200 while the aggregation ticker runs, 503 ``stalled`` once its
last tick is too old (a tick restored from an earlier run's checkpoint counts from this run's
start); the loop lag and the engine queue are in the body."""

from __future__ import annotations

import json
import time

from collector.app import Daemon
from collector.config import from_dict
from collector.http.server import Request


def test_healthz_is_503_when_the_ticker_stalls() -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    request = Request(method="GET", path="/healthz")
    fresh = daemon.healthz(request)
    assert fresh.status == 200
    body = json.loads(fresh.body)
    assert body["consumer"]["last_tick_age_s"] is None  # no tick yet: starting up
    assert set(body["loop"]) == {"lag_s", "lag_max_s"}
    assert body["ingest"]["queue_capacity_batches"] == 4_096
    daemon.engine.last_tick = time.time() - 60  # restored: the last run's last tick
    assert daemon.healthz(request).status == 200  # this run has not had a tick yet
    daemon.started_wall -= 120  # up for two minutes
    daemon.engine.last_tick = time.time() - 2
    assert daemon.healthz(request).status == 200
    daemon.engine.last_tick = time.time() - 60
    stalled = daemon.healthz(request)
    assert stalled.status == 503
    body = json.loads(stalled.body)
    assert body["status"] == "stalled"
    assert body["reasons"][0].startswith("aggregation: no tick for 6")


def test_readyz_names_a_refusing_channel_and_draining() -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    request = Request(method="GET", path="/readyz")
    assert daemon.readyz(request).status == 200
    daemon.publisher.channel_error = "redis: no answer in time"
    refused = daemon.readyz(request)
    assert refused.status == 503
    assert json.loads(refused.body)["reasons"] == ["channel: redis: no answer in time"]
    daemon.draining = True
    assert json.loads(daemon.readyz(request).body) == {"status": "draining"}
