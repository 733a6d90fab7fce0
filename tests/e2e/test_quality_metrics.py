"""Call quality and HTTP traffic in ``/metrics`` of a real daemon fed known frames over UDP,
read with the Prometheus parser: the values the frames make, and labels from fixed sets only
(never a meeting or participant id, a route only when listed)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.daemon_process import DaemonProcess, running_daemon
from collector.aggregate.alerts import DEFAULT_RULES
from protocol import Frame, HttpSample, RtcSample, encode_msgpack

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
IDS = {"m-one", "m-two", "alice", "bob", "carol", "pc", "api-1", "boot-1"}
# Label names /metrics may use, and where label values come from (docs/METRICS.md).
LABELS = {
    "backend", "channel", "code", "kind", "le", "level", "method", "protocol", "reason",
    "route", "rule", "service", "severity", "status", "transport", "version",
}  # fmt: skip
ROUNDS = 7
PARTICIPANTS = {
    # participant: (meeting, rtt ms, packets lost per round, relay protocol or None)
    "alice": ("m-one", 40.0, 0, None),
    "bob": ("m-one", 300.0, 1, "tcp"),
    "carol": ("m-two", 120.0, 0, "udp"),
}
RELAY: dict[str | None, Literal["udp", "tcp", "tls"] | None] = {
    None: None,
    "tcp": "tcp",
    "udp": "udp",
}


def rtc(participant: str, seq: int, ts: float) -> RtcSample:
    meeting, rtt, lost, relay = PARTICIPANTS[participant]
    return RtcSample(
        meeting=meeting,
        participant=participant,
        connection="pc",
        seq=seq,
        client_ts=ts,
        audio_bytes_sent=4_000 * seq,
        audio_packets_sent=50 * seq,
        audio_bytes_received=4_000 * seq,
        audio_packets_received=50 * seq,
        audio_packets_lost=lost * seq,
        pair_bytes_sent=4_000 * seq,
        pair_bytes_received=4_000 * seq,
        rtt_ms=rtt,
        audio_jitter_ms=8.0,
        local_candidate="relay" if relay else "host",
        relay_protocol=RELAY[relay],
    )


def http(seq: int, ts: float, route: str) -> HttpSample:
    return HttpSample(
        service="api",
        instance="api-1",
        boot="boot-1",
        route=route,
        method="GET",
        seq=seq,
        client_ts=ts,
        requests=10 * seq,
        status=[0, 9 * seq, 0, seq, 0],
        bytes_in=100 * seq,
        bytes_out=1_000 * seq,
        latency_sum_ms=300.0 * seq,
        latency_hist=[0, 0, 5 * seq, 5 * seq, 0, 0, 0, 0, 0, 0, 0, 0],
    )


def scrape(daemon: DaemonProcess) -> Samples:
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def send_round(sock: socket.socket, seq: int) -> None:
    ts = time.time() * 1000
    frames: list[Frame] = [rtc(p, seq, ts) for p in PARTICIPANTS]
    frames += [http(seq, ts, "/listed"), http(seq, ts, "/other")]
    sock.send(encode_msgpack(frames))


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'none'\nstate_dir = '{tmp_path}'\n"
        "[metrics]\nhttp_routes = ['api:/listed']\n"
    )
    return config


@contextmanager
def fed_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon fed ``ROUNDS`` rounds of samples half a second apart: three participants in
    two meetings, and two routes of service ``api`` of which one is listed."""
    config = write_config(tmp_path)
    with running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", daemon.udp_port))
            for seq in range(ROUNDS):
                send_round(sock, seq)
                time.sleep(0.5)
        yield daemon


@contextmanager
def kept_live(daemon: DaemonProcess) -> Iterator[None]:
    """The same rounds, every half second, until the block ends (for a scraper that takes
    its time)."""
    stop = threading.Event()

    def feed() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", daemon.udp_port))
            seq = 0
            while not stop.is_set():
                send_round(sock, seq)
                seq += 1
                stop.wait(0.5)

    thread = threading.Thread(target=feed, name="feed", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def settled(daemon: DaemonProcess) -> Samples:
    """A scrape once every participant's values are in and the last HTTP sample counted."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(daemon)
        done = (
            samples.get(("bwmon_participant_rtt_seconds_count", ()), 0) == 3
            and samples.get(("bwmon_participant_loss_ratio_count", ()), 0) == 3
            and samples.get(("bwmon_http_service_sent_bytes_total", (("service", "api"),)), 0)
            == 2 * 1_000 * (ROUNDS - 1)
        )
        if done or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_quality_and_http_metrics_have_the_values_the_frames_make(tmp_path: Path) -> None:
    with fed_daemon(tmp_path) as daemon:
        samples = settled(daemon)
    levels = sum(v for (name, _), v in samples.items() if name == "bwmon_quality_participants")
    assert levels == 3
    assert sum(v for (name, _), v in samples.items() if name == "bwmon_quality_meetings") == 2
    # RTT: 40 ms, 120 ms, 300 ms
    rtt = "bwmon_participant_rtt_seconds_bucket"
    assert value(samples, rtt, le="0.025") == 0
    assert value(samples, rtt, le="0.05") == 1
    assert value(samples, rtt, le="0.15") == 2
    assert value(samples, rtt, le="0.3") == 3
    assert value(samples, rtt, le="+Inf") == 3
    assert value(samples, "bwmon_participant_rtt_seconds_sum") == pytest.approx(0.46)
    # loss: none for alice and carol, 1 in 51 packets for bob
    loss = "bwmon_participant_loss_ratio_bucket"
    assert value(samples, loss, le="0.001") == 2
    assert value(samples, loss, le="0.01") == 2
    assert value(samples, loss, le="0.02") == 3
    assert value(samples, "bwmon_participant_loss_ratio_sum") == pytest.approx(1 / 51, abs=1e-3)
    assert value(samples, "bwmon_participant_jitter_seconds_bucket", le="0.01") == 3
    assert value(samples, "bwmon_participant_mos_count") == 3
    # 8,000 bytes per half second each way per participant, over the last ticks
    up = value(samples, "bwmon_rtc_up_bytes_per_second")
    assert up == pytest.approx(3 * 8_000, rel=0.2)
    # relay: bob over TCP, carol over UDP
    relayed = "bwmon_participants_relayed"
    assert value(samples, relayed, protocol="tcp") == 1
    assert value(samples, relayed, protocol="udp") == 1
    assert value(samples, relayed, protocol="tls") == 0
    assert value(samples, f"{relayed}_ratio", protocol="tcp") == pytest.approx(1 / 3)
    tcp_bytes = value(samples, "bwmon_relayed_bytes_total", protocol="tcp")
    assert tcp_bytes > 0
    assert value(samples, "bwmon_relay_cost_total", protocol="tcp") == pytest.approx(
        tcp_bytes / 1e9 * 0.09
    )
    # the open alerts: one series per rule in force, with its severity
    alerts = {labels for (name, labels) in samples if name == "bwmon_alerts_open"}
    assert alerts == {(("rule", rule.name), ("severity", rule.severity)) for rule in DEFAULT_RULES}
    # HTTP: both routes in the service; only the listed one on its own
    last = ROUNDS - 1
    service = {"service": "api"}
    requests = "bwmon_http_service_requests_total"
    assert value(samples, requests, **service, status="2xx") == 2 * 9 * last
    assert value(samples, requests, **service, status="4xx") == 2 * last
    assert value(samples, "bwmon_http_service_received_bytes_total", **service) == 2 * 100 * last
    duration = "bwmon_http_service_request_duration_seconds"
    assert value(samples, f"{duration}_bucket", **service, le="0.01") == 0
    assert value(samples, f"{duration}_bucket", **service, le="0.025") == 2 * 5 * last
    assert value(samples, f"{duration}_bucket", **service, le="+Inf") == 2 * 10 * last
    assert value(samples, f"{duration}_count", **service) == 2 * 10 * last
    assert value(samples, f"{duration}_sum", **service) == pytest.approx(2 * 0.3 * last)
    route = {"service": "api", "route": "/listed", "method": "GET"}
    assert value(samples, "bwmon_http_route_requests_total", **route, status="2xx") == 9 * last
    assert value(samples, "bwmon_http_route_sent_bytes_total", **route) == 1_000 * last
    routes = {
        dict(labels).get("route")
        for (name, labels) in samples
        if name.startswith("bwmon_http_route_")
    }
    assert routes == {"/listed"}
    # bounded labels: fixed names, and never an id a client sent (but the listed route's)
    for name, labels in samples:
        for label, label_value in labels:
            assert label in LABELS, (name, label)
            assert label_value not in IDS, (name, label, label_value)
