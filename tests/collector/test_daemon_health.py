"""``/healthz`` as liveness: 200 while the aggregation ticker runs, 503 ``stalled`` once its
last tick is too old (a tick restored from an earlier run's checkpoint counts from this run's
start); the loop lag and the engine queue are in the body, which is every service's health
Struct under the keys docs/API.md names."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import trio

from collector.app import Daemon
from collector.config import from_dict
from collector.http.server import Request
from collector.runtime import open_thread_bridge
from protocol.build import compiled_modules

REQUEST = Request(method="GET", path="/healthz")


def test_healthz_is_503_when_the_ticker_stalls() -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    request = Request(method="GET", path="/healthz")
    fresh = daemon.health_routes.healthz(request)
    assert fresh.status == 200
    body = json.loads(fresh.body)
    assert body["consumer"]["last_tick_age_s"] is None  # no tick yet: starting up
    assert set(body["loop"]) == {"lag_s", "lag_max_s"}
    assert body["ingest"]["queue_capacity_batches"] == 4_096
    daemon.engine.last_tick = time.time() - 60  # restored: the last run's last tick
    assert daemon.health_routes.healthz(request).status == 200  # this run has not had a tick yet
    daemon.started_wall -= 120  # up for two minutes
    daemon.engine.last_tick = time.time() - 2
    assert daemon.health_routes.healthz(request).status == 200
    daemon.engine.last_tick = time.time() - 60
    stalled = daemon.health_routes.healthz(request)
    assert stalled.status == 503
    body = json.loads(stalled.body)
    assert body["status"] == "stalled"
    assert body["reasons"][0].startswith("aggregation: no tick for 6")


def test_readyz_names_a_refusing_channel_and_draining() -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    request = Request(method="GET", path="/readyz")
    assert daemon.health_routes.readyz(request).status == 200
    daemon.publisher.channel_error = "redis: no answer in time"
    refused = daemon.health_routes.readyz(request)
    assert refused.status == 503
    assert json.loads(refused.body)["reasons"] == ["channel: redis: no answer in time"]
    daemon.draining = True
    assert json.loads(daemon.health_routes.readyz(request).body) == {"status": "draining"}


# The keys of /healthz, in order, as docs/API.md and dashboards read them: each service's
# health Struct encoded. The UDP socket's figures join once it is open (tests/e2e).
HEALTHZ_KEYS = [
    "status", "version", "build", "build_reason", "compiled", "uptime_s", "ingest", "loop",
    "consumer", "aggregate", "storage", "fanout", "http", "limits", "notify",
]  # fmt: skip
SECTION_KEYS = {
    "ingest": ["udp", "websocket", "http", "queue_batches", "queue_capacity_batches"],
    "loop": ["lag_s", "lag_max_s"],
    "consumer": ["batches", "frames_by_kind", "produced", "engine_errors", "last_tick_age_s"],
    "aggregate": [
        "meetings", "participants", "rtc_streams", "http_routes", "http_instances",
        "http_routes_expired", "http_instances_expired", "max_http_routes",
        "max_http_instances_per_route", "max_http_instances", "http_idle_s", "frames",
        "refused_by_reason", "baseline_samples", "samples_not_applied", "alerts_active",
    ],
    "storage": [
        "backend", "rows_written", "flushes", "failed_flushes", "rows_spooled", "rows_dropped",
        "rows_refused", "spool_errors", "pending_rows", "spooled_batches", "spool_bytes",
        "flush_seconds", "last_flush_s", "statements", "last_error", "consecutive_failures",
        "refused_bytes", "probe_error", "checkpoint_bytes", "checkpoint_errors",
    ],
    "fanout": [
        "channel", "epoch", "publishes", "deltas", "unavailable", "epoch_changes",
        "last_publish_ms", "prepared", "parts_timeouts", "subscribers", "sessions", "refused",
        "deltas_delivered", "deltas_sent", "deltas_written_now", "snapshots_sent", "resumed",
        "queues_replaced", "heartbeat_timeouts", "bad_messages", "refused_unauthorized",
        "refused_forbidden", "tokens_expired",
    ],
    "http": [
        "connections_open", "connections_total", "connections_refused",
        "connections_refused_per_source", "connections_evicted", "connections_operator",
        "head_timeouts", "connection_errors", "response_errors", "requests_by_status",
    ],
    "limits": ["tracked_sources", "forgotten_sources"],
}  # fmt: skip
TRANSPORT_KEYS = ["messages", "bytes", "frames_accepted", "frames_rejected", "rejected_by_reason"]


def test_healthz_is_every_services_report_under_its_keys(tmp_path: Path) -> None:
    daemon = Daemon(from_dict({"storage": {"backend": "sqlite", "state_dir": str(tmp_path)}}))
    body = json.loads(daemon.health_routes.healthz(Request(method="GET", path="/healthz")).body)
    assert list(body) == HEALTHZ_KEYS
    assert {section: list(body[section]) for section in SECTION_KEYS} == SECTION_KEYS
    assert list(body["ingest"]["websocket"]) == TRANSPORT_KEYS
    assert list(body["ingest"]["http"]) == TRANSPORT_KEYS
    assert list(body["ingest"]["udp"]) == [
        *TRANSPORT_KEYS, "turns", "turns_bounded", "turn_max_s", "turn_cpu_max_s"
    ]  # fmt: skip
    assert body["storage"]["backend"] == "sqlite"
    assert body["fanout"]["channel"] == "local"
    assert (body["status"], body["compiled"]) == ("ok", compiled_modules())
    assert body["consumer"]["produced"] == dict.fromkeys(
        ["rtc_rows", "http_rows", "events", "alerts", "summaries"], 0
    )
    assert body["aggregate"]["samples_not_applied"]["http"]["http_route_cap"] == 0
    none = Daemon(from_dict({"storage": {"backend": "none"}}))
    assert json.loads(none.health_routes.healthz(REQUEST).body)["storage"] == {"backend": "none"}


async def test_healthz_has_the_redis_channels_counters_and_mode() -> None:
    config = {"storage": {"backend": "none"}, "fanout": {"redis_url": "redis://127.0.0.1:6379/0"}}
    async with open_thread_bridge() as bridge:
        daemon = Daemon(from_dict(config), bridge)
        fanout = json.loads(daemon.health_routes.healthz(REQUEST).body)["fanout"]
        await daemon.channel.aclose()
    assert list(fanout) == [*SECTION_KEYS["fanout"], "redis"]
    assert fanout["channel"] == "redis"
    assert fanout["redis"] == {
        "mode": "redis",
        "delivered": 0,
        "epoch_changes": 0,
        "bad_entries": 0,
        "outages": 0,
        "presumed_dead": 0,
        "daemons_reaped": 0,
        "entities_reaped": 0,
        "fallbacks": 0,
    }


def test_healthz_answers_while_draining_after_ingest_stopped() -> None:
    """Shutdown closes the UDP socket before it writes what the daemon holds, while HTTP still
    answers: ``/healthz`` and ``/metrics`` then leave the socket's figures out."""
    daemon = Daemon(from_dict({"storage": {"backend": "none"}}))
    daemon._udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon._udp_sock.close()
    daemon.draining = True
    response = daemon.health_routes.healthz(REQUEST)
    assert response.status == 200
    assert "receive_buffer_bytes" not in json.loads(response.body)["ingest"]["udp"]
    assert trio.run(daemon.health_routes.metrics, REQUEST).status == 200
