"""``render_metrics`` against the Prometheus parser: families, types, labels and values of a
realistic ``health()`` dict; hostile label values still parse; ``/readyz`` and ``/metrics``
routes of an in-process daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from collector import auth
from collector.app import Daemon
from collector.config import from_dict
from collector.http.metrics import ADMISSION_REASONS, render_metrics
from collector.http.server import Request
from collector.ingest import limits
from collector.ingest.limits import RATE_LIMITED
from collector.ingest.post import BUSY
from collector.ingest.websocket import NO_HELLO
from protocol.codec import REASONS, TOO_LARGE
from protocol.signing import BAD_SIGNATURE
from tests.helpers import http_sample

REQUEST = Request("GET", "/")


def health() -> dict[str, Any]:
    """A ``Daemon.health()`` of a busy daemon with SQLite storage and a Redis channel."""
    return {
        "status": "ok",
        "version": "0.1.0",
        "uptime_s": 12.5,
        "ingest": {
            "udp": {
                "messages": 100,
                "bytes": 51_200,
                "frames_accepted": 480,
                "frames_rejected": 3,
                "rejected_by_reason": {"malformed": 2, "too_large": 1},
                "kernel_drops": 4,
                "receive_buffer_bytes": 8_388_608,
                "turns": 90,
                "turns_bounded": 7,
                "turn_max_s": 0.0061,
                "turn_cpu_max_s": 0.0052,
            },
            "websocket": {
                "messages": 10,
                "bytes": 2_000,
                "frames_accepted": 40,
                "frames_rejected": 1,
                "rejected_by_reason": {"no_hello": 1},
            },
            "http": {
                "messages": 3,
                "bytes": 900,
                "frames_accepted": 12,
                "frames_rejected": 2,
                "rejected_by_reason": {"busy": 1, "unauthorized": 1},
            },
            "queue_batches": 5,
            "queue_capacity_batches": 4_096,
        },
        "loop": {"lag_s": 0.002, "lag_max_s": 0.15},
        "consumer": {
            "batches": 110,
            "frames_by_kind": {"event": 20, "rtc": 500},
            "produced": {"rtc_rows": 9, "http_rows": 0, "events": 20, "alerts": 1, "summaries": 0},
            "engine_errors": 0,
        },
        "aggregate": {
            "meetings": 2,
            "participants": 5,
            "rtc_streams": 6,
            "http_routes": 3,
            "http_instances": 17,
            "http_routes_expired": 2,
            "http_instances_expired": 40,
            "max_http_routes": 1_000,
            "max_http_instances_per_route": 256,
            "max_http_instances": 20_000,
            "http_idle_s": 600.0,
            "frames": 520,
            "refused_by_reason": {"max_meetings": 11, "http_instance_cap": 5},
            "baseline_samples": {"http": 0, "rtc": 2},
            "samples_not_applied": {
                "http": {
                    "duplicate": 0,
                    "old_boot": 0,
                    "http_route_cap": 0,
                    "http_instance_cap": 5,
                },
                "rtc": {"duplicate": 319, "old_boot": 1, "meeting_cap": 11},
            },
            "alerts_active": 1,
        },
        "storage": {
            "backend": "sqlite",
            "rows_written": 9,
            "flushes": 4,
            "failed_flushes": 1,
            "rows_spooled": 2,
            "rows_dropped": 0,
            "pending_rows": 3,
            "spooled_batches": 1,
            "statements": 12,
            "spool_bytes": 1_234,
            "flush_seconds": 0.75,
            "last_flush_s": 0.05,
            "last_error": None,
            "consecutive_failures": 0,
            "rows_refused": 1,
            "refused_bytes": 900,
            "probe_error": None,
            "checkpoint_bytes": 4_096,
            "checkpoint_errors": 0,
        },
        "fanout": {
            "channel": "redis",
            "epoch": "9824dfab68dd9810",
            "publishes": 12,
            "deltas": 30,
            "unavailable": 1,
            "epoch_changes": 0,
            "last_publish_ms": 1.5,
            "subscribers": 2,
            "sessions": 3,
            "refused": 0,
            "deltas_delivered": 30,
            "deltas_sent": 55,
            "deltas_written_now": 50,
            "snapshots_sent": 4,
            "resumed": 1,
            "queues_replaced": 1,
            "heartbeat_timeouts": 1,
            "bad_messages": 0,
            "redis": {
                "mode": "local",
                "delivered": 30,
                "outages": 2,
                "fallbacks": 3,
                "presumed_dead": 0,
                "daemons_reaped": 1,
                "entities_reaped": 7,
            },
        },
        "http": {
            "connections_open": 1,
            "connections_total": 20,
            "connections_refused": 0,
            "connections_refused_per_source": 3,
            "connection_errors": 0,
            "response_errors": 1,
            "requests_by_status": {"200": 17, "404": 2},
        },
    }


def parse(text: str) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    """Family name (as the parser names it) → (type, {sorted labels: value})."""
    out: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
    for family in text_string_to_metric_families(text):
        samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        assert family.name not in out, f"family {family.name} written twice"
        out[family.name] = (family.type, samples)
    return out


def test_every_family_has_help_type_and_the_prefix() -> None:
    text = render_metrics(health())
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("bwmon_")
        assert family.documentation
        assert family.type in {"counter", "gauge"}
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total")
    assert text.endswith("\n")
    assert text.count("# TYPE ") == text.count("# HELP ") == len(families)


def test_values_and_labels_come_from_the_health_dict() -> None:
    metrics = parse(render_metrics(health()))

    def value(name: str, **labels: str) -> float:
        return metrics[name][1][tuple(sorted(labels.items()))]

    # Counter families are named without `_total` by the parser; their samples keep it.
    assert metrics["bwmon_ingest_frames_accepted"][0] == "counter"
    assert value("bwmon_ingest_frames_accepted", transport="udp") == 480
    assert value("bwmon_ingest_frames_accepted", transport="websocket") == 40
    assert value("bwmon_ingest_frames_rejected", transport="udp", reason="malformed") == 2
    assert value("bwmon_ingest_frames_rejected", transport="udp", reason="too_large") == 1
    assert value("bwmon_ingest_frames_rejected", transport="websocket", reason="no_hello") == 1
    assert value("bwmon_ingest_frames_accepted", transport="http") == 12
    assert value("bwmon_ingest_frames_rejected", transport="http", reason="busy") == 1
    assert value("bwmon_ingest_frames_rejected", transport="http", reason="rate_limited") == 0
    # every protocol reason code has a series from the start, at zero
    assert value("bwmon_ingest_frames_rejected", transport="udp", reason="unknown_tag") == 0
    assert value("bwmon_ingest_messages", transport="udp") == 100
    assert value("bwmon_ingest_received_bytes", transport="udp") == 51_200
    assert value("bwmon_udp_kernel_drops") == 4
    assert metrics["bwmon_udp_receive_buffer_bytes"][0] == "gauge"
    assert value("bwmon_udp_receive_buffer_bytes") == 8_388_608
    assert value("bwmon_udp_turns") == 90
    assert value("bwmon_udp_turns_bounded") == 7
    assert metrics["bwmon_udp_turn_max_seconds"][0] == "gauge"
    assert value("bwmon_udp_turn_max_seconds") == 0.0061
    assert value("bwmon_udp_turn_cpu_max_seconds") == 0.0052
    assert value("bwmon_consumer_frames", kind="rtc") == 500
    assert value("bwmon_engine_outputs", kind="alerts") == 1
    assert value("bwmon_live_meetings") == 2
    assert value("bwmon_live_participants") == 5
    assert value("bwmon_live_rtc_streams") == 6
    assert value("bwmon_live_http_routes") == 3
    assert value("bwmon_live_http_instances") == 17
    assert value("bwmon_http_routes_max") == 1_000
    assert value("bwmon_http_instances_per_route_max") == 256
    assert value("bwmon_http_instances_max") == 20_000
    assert value("bwmon_http_idle_seconds") == 600
    assert metrics["bwmon_http_instances_expired"][0] == "counter"
    assert value("bwmon_http_instances_expired") == 40
    assert value("bwmon_http_routes_expired") == 2
    assert value("bwmon_samples_not_applied", kind="http", reason="http_instance_cap") == 5
    assert value("bwmon_frames_refused", reason="max_meetings") == 11
    assert value("bwmon_baseline_samples", kind="rtc") == 2
    assert value("bwmon_baseline_samples", kind="http") == 0
    assert value("bwmon_samples_not_applied", kind="rtc", reason="duplicate") == 319
    assert value("bwmon_samples_not_applied", kind="rtc", reason="old_boot") == 1
    assert value("bwmon_samples_not_applied", kind="http", reason="duplicate") == 0
    assert value("bwmon_storage_backend_info", backend="sqlite") == 1
    assert value("bwmon_storage_pending_rows") == 3
    assert value("bwmon_storage_spooled_rows") == 2
    assert value("bwmon_storage_dropped_rows") == 0
    assert value("bwmon_storage_failed_flushes") == 1
    assert value("bwmon_storage_checkpoint_bytes") == 4_096
    assert value("bwmon_storage_spool_bytes") == 1_234
    assert value("bwmon_storage_refused_rows") == 1
    assert value("bwmon_storage_refused_file_bytes") == 900
    assert value("bwmon_storage_responding") == 1
    assert metrics["bwmon_storage_flush_seconds"][0] == "counter"
    assert value("bwmon_storage_flush_seconds") == 0.75
    assert value("bwmon_storage_last_flush_seconds") == 0.05
    assert value("bwmon_ingest_queue_batches") == 5
    assert value("bwmon_ingest_queue_capacity_batches") == 4_096
    assert value("bwmon_event_loop_lag_seconds") == 0.002
    assert value("bwmon_event_loop_lag_max_seconds") == 0.15
    assert value("bwmon_http_connections_refused_per_source") == 3
    assert value("bwmon_http_response_errors") == 1
    assert value("bwmon_fanout_channel_info", channel="redis") == 1
    assert value("bwmon_fanout_subscribers") == 2
    assert value("bwmon_fanout_redis_outages") == 2
    assert value("bwmon_fanout_redis_fallbacks") == 3
    assert value("bwmon_fanout_redis_daemons_reaped") == 1
    assert value("bwmon_fanout_redis_entities_reaped") == 7
    assert value("bwmon_fanout_redis_presumed_dead") == 0
    assert value("bwmon_fanout_deltas_sent") == 55
    assert value("bwmon_fanout_deltas_written_now") == 50
    assert value("bwmon_fanout_snapshots_sent") == 4
    assert value("bwmon_fanout_queues_replaced") == 1
    assert value("bwmon_fanout_publishes") == 12
    assert value("bwmon_fanout_heartbeat_timeouts") == 1
    assert value("bwmon_fanout_last_publish_seconds") == 0.0015
    assert value("bwmon_http_connections_open") == 1
    assert value("bwmon_http_connections") == 20
    assert value("bwmon_http_connections_refused") == 0
    assert value("bwmon_http_requests", code="200") == 17
    assert value("bwmon_http_requests", code="404") == 2
    assert metrics["bwmon_uptime_seconds"] == ("gauge", {(): 12.5})
    assert value("bwmon_build_info", version="0.1.0") == 1


PROTOCOL_MD = Path(__file__).parents[2] / "protocol" / "PROTOCOL.md"


def documented_reasons() -> set[str]:
    """The reason codes of PROTOCOL.md §6's table."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    errors = text[text.index("\n## 6. Errors") : text.index("\n## 7. ")]
    return set(re.findall(r"^\| `([a-z_]+)` \| (?:message|frame)", errors, re.MULTILINE))


def test_every_reason_ingest_counts_is_in_section_6_and_has_a_series() -> None:
    # What ingest can count: the decoder's reasons and those it gives itself (admission, rate
    # limits, the WebSocket hello, POST /ingest's busy); §6 lists exactly these, and /metrics
    # has a series for each from the start.
    own = {BAD_SIGNATURE, auth.FORBIDDEN, auth.UNAUTHORIZED, limits.FORBIDDEN, RATE_LIMITED, BUSY}
    counted = {*REASONS, *own, NO_HELLO, TOO_LARGE}
    assert counted == {*REASONS, *ADMISSION_REASONS}
    assert documented_reasons() == counted
    series = parse(render_metrics({"ingest": {"udp": {"rejected_by_reason": {}}}}))
    rejected = series["bwmon_ingest_frames_rejected"][1]
    assert {dict(labels)["reason"] for labels in rejected} == counted


def test_no_label_carries_an_id() -> None:
    allowed = {"transport", "reason", "kind", "backend", "channel", "code", "version"}
    for family in text_string_to_metric_families(render_metrics(health())):
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample


def test_absent_sections_are_skipped() -> None:
    doc = health()
    doc["storage"] = {"backend": "none"}
    del doc["ingest"]["udp"]["kernel_drops"]
    del doc["ingest"]["udp"]["receive_buffer_bytes"]
    metrics = parse(render_metrics(doc))
    assert metrics["bwmon_storage_backend_info"][1] == {(("backend", "none"),): 1}
    assert not [
        name for name in metrics if name.startswith("bwmon_storage_") and "info" not in name
    ]
    assert "bwmon_udp_kernel_drops" not in metrics
    assert "bwmon_udp_receive_buffer_bytes" not in metrics
    assert parse(render_metrics({})) == {}


def test_hostile_label_values_are_escaped_and_still_parse() -> None:
    hostile = 'a"b\\c\nd} x{y="z"'
    doc = health()
    doc["ingest"]["udp"]["rejected_by_reason"] = {hostile: 5}
    text = render_metrics(doc)
    escaped = 'reason="a\\"b\\\\c\\nd} x{y=\\"z\\""'
    assert f'bwmon_ingest_frames_rejected_total{{transport="udp",{escaped}}} 5' in text
    metrics = parse(text)
    samples = metrics["bwmon_ingest_frames_rejected"][1]
    assert samples[(("reason", hostile), ("transport", "udp"))] == 5
    assert all(line.startswith(("#", "bwmon_")) for line in text.splitlines())


def daemon(tmp_path: Path, backend: str) -> Daemon:
    return Daemon(from_dict({"storage": {"backend": backend, "state_dir": str(tmp_path)}}))


def test_metrics_route_renders_the_daemons_health(tmp_path: Path) -> None:
    response = trio.run(daemon(tmp_path, "none").health_routes.metrics, REQUEST)
    assert response.status == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    metrics = parse(response.body.decode())
    assert metrics["bwmon_ingest_frames_accepted"][1][(("transport", "udp"),)] == 0
    assert metrics["bwmon_fanout_channel_info"][1] == {(("channel", "local"),): 1}


def test_healthz_and_metrics_show_the_http_caps_live_counts_and_expiries(tmp_path: Path) -> None:
    d = Daemon(
        from_dict(
            {
                "storage": {"backend": "none", "state_dir": str(tmp_path)},
                "aggregate": {"max_http_instances_per_route": 2, "http_idle_s": 90},
            }
        )
    )
    t0 = 1_800_000_000.0
    d.engine.add([http_sample()], t0)
    d.engine.add([msgspec.structs.replace(http_sample(), instance=f"w-{i}") for i in range(3)], t0)
    d.engine.add([http_sample(2)], t0 + 60)
    d.engine.tick(t0 + 95)  # w-0, silent for 95 s, expires; web-1 stays
    aggregate = json.loads(d.health_routes.healthz(REQUEST).body)["aggregate"]
    assert {k: v for k, v in aggregate.items() if "http" in k} == {
        "http_routes": 1,
        "http_instances": 1,
        "http_routes_expired": 0,
        "http_instances_expired": 1,
        "max_http_routes": 1_000,
        "max_http_instances_per_route": 2,
        "max_http_instances": 20_000,
        "http_idle_s": 90.0,
    }
    assert aggregate["samples_not_applied"]["http"]["http_instance_cap"] == 2
    d.engine.tick(t0 + 150)  # web-1 expires too, and with it the route
    metrics = parse(trio.run(d.health_routes.metrics, REQUEST).body.decode())

    def value(name: str, **labels: str) -> float:
        return metrics[name][1][tuple(sorted(labels.items()))]

    assert value("bwmon_live_http_routes") == value("bwmon_live_http_instances") == 0
    assert value("bwmon_http_routes_expired") == 1
    assert value("bwmon_http_instances_expired") == 2
    assert value("bwmon_http_instances_per_route_max") == 2
    assert value("bwmon_http_instances_max") == 20_000
    assert value("bwmon_http_routes_max") == 1_000
    assert value("bwmon_http_idle_seconds") == 90
    assert value("bwmon_samples_not_applied", kind="http", reason="http_instance_cap") == 2
    assert value("bwmon_frames_refused", reason="http_instance_cap") == 2


def test_readyz_is_ready_then_draining(tmp_path: Path) -> None:
    d = daemon(tmp_path, "none")
    ready = d.health_routes.readyz(REQUEST)
    assert ready.status == 200
    assert json.loads(ready.body)["status"] == "ready"
    d.draining = True
    draining = d.health_routes.readyz(REQUEST)
    assert (draining.status, json.loads(draining.body)) == (503, {"status": "draining"})


def test_readyz_is_not_ready_while_storage_fails(tmp_path: Path) -> None:
    d = daemon(tmp_path, "sqlite")
    assert d.flusher is not None
    assert d.health_routes.readyz(REQUEST).status == 200
    d.flusher.failures, d.flusher.last_error = 2, "database is locked"
    response = d.health_routes.readyz(REQUEST)
    body = json.loads(response.body)
    assert response.status == 503
    assert body["status"] == "not ready"
    assert body["reasons"] == ["storage: last flush failed: database is locked"]
    d.flusher.failures, d.flusher.last_error = 0, None  # a successful flush resets both
    assert d.health_routes.readyz(REQUEST).status == 200


def test_readyz_is_not_ready_while_the_database_does_not_answer_but_a_refused_row_is_fine(
    tmp_path: Path,
) -> None:
    d = daemon(tmp_path, "sqlite")
    assert d.flusher is not None
    d.flusher.counters["rows_refused"] = 1  # set aside: storage goes on
    assert d.health_routes.readyz(REQUEST).status == 200
    d.flusher.probe_error = "the database did not answer within 2 s"
    response = d.health_routes.readyz(REQUEST)
    assert response.status == 503
    assert json.loads(response.body)["reasons"] == [
        "storage: not responding: the database did not answer within 2 s"
    ]
    d.flusher.probe_error = None  # the next probe answered
    assert d.health_routes.readyz(REQUEST).status == 200
