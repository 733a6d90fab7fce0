"""The real daemon scraped like Prometheus would: ``/metrics`` parses, its ingest counters grow
by exactly what was sent over UDP (good frames and one malformed datagram), and ``/readyz``
says ready."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.daemon_process import DaemonProcess, running_daemon
from protocol import encode_msgpack
from tests.helpers import rtc

pytestmark = pytest.mark.e2e

FRAMES = 25

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: DaemonProcess) -> Samples:
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def accepted(samples: Samples) -> float:
    return samples[("bwmon_ingest_frames_accepted_total", (("transport", "udp"),))]


def malformed(samples: Samples) -> float:
    key = (("reason", "malformed"), ("transport", "udp"))
    return samples[("bwmon_ingest_frames_rejected_total", key)]


def test_metrics_count_what_was_sent_and_readyz_is_ready(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nbackend = 'none'\nstate_dir = '{tmp_path}'\n")
    with running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon:
        before = scrape(daemon)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", daemon.udp_port))
            for seq in range(1, FRAMES + 1):
                sock.send(encode_msgpack(rtc(seq)))
            sock.send(b"{not json")
        deadline = time.monotonic() + 10
        after = scrape(daemon)
        while time.monotonic() < deadline and (
            accepted(after) < accepted(before) + FRAMES or malformed(after) < malformed(before) + 1
        ):
            time.sleep(0.05)
            after = scrape(daemon)
        assert accepted(after) - accepted(before) == FRAMES
        assert malformed(after) - malformed(before) == 1
        messages = ("bwmon_ingest_messages_total", (("transport", "udp"),))
        assert after[messages] - before[messages] == FRAMES + 1
        # the first scrape is itself counted as a 200 response
        assert after[("bwmon_http_requests_total", (("code", "200"),))] >= 1
        assert ("bwmon_udp_receive_buffer_bytes", ()) in after
        assert after[("bwmon_storage_backend_info", (("backend", "none"),))] == 1

        url = f"http://127.0.0.1:{daemon.http_port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ready"
