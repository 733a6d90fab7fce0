"""The real daemon guarding its UDP port: a source over ``limits.source_frames_per_s`` is
limited while another source's frames all arrive; with ``auth.udp_keys`` only datagrams signed
by ``bwmon emit --udp-key`` are accepted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import encode_msgpack
from tests.helpers import rtc

pytestmark = pytest.mark.e2e

KEY = "an-e2e-test-key-of-32-characters-or-more"
STEADY_FRAMES = 40
FLOOD_DATAGRAMS, FLOOD_BATCH = 300, 10


def _daemon(tmp_path: Path, extra: str) -> DaemonProcess:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nbackend = 'none'\nstate_dir = '{tmp_path}'\n{extra}")
    return start_daemon(tmp_path / "daemon.log", ["--config", str(config)])


@pytest.fixture
def limited_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = _daemon(tmp_path, "[limits]\nsource_frames_per_s = 50.0\nsource_burst_frames = 100\n")
    try:
        yield process
    finally:
        process.stop()


def _sender(host: str, daemon: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.connect(("127.0.0.1", daemon.udp_port))
    return sock


def _event(n: int) -> bytes:
    frame = {"t": "event", "m": "steady", "p": f"p{n}", "ev": "join", "ts": 1.764e12}
    return json.dumps(frame).encode()


def test_a_flooding_source_is_limited_and_a_steady_one_is_not(
    limited_daemon: DaemonProcess,
) -> None:
    daemon = limited_daemon
    flood_batch = encode_msgpack([rtc(seq, meeting="flood") for seq in range(FLOOD_BATCH)])
    with _sender("127.0.0.1", daemon) as steady, _sender("127.0.0.2", daemon) as flood:
        # Interleaved: 127.0.0.2 floods at full speed, 127.0.0.1 sends one event frame every
        # seventh of its datagrams (40 in all: within its own burst whatever the timing).
        sent_steady = 0
        for i in range(FLOOD_DATAGRAMS):
            flood.send(flood_batch)
            if i % 7 == 0 and sent_steady < STEADY_FRAMES:
                steady.send(_event(sent_steady))
                sent_steady += 1
    sent_flood = FLOOD_DATAGRAMS * FLOOD_BATCH
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        udp = daemon.health()["ingest"]["udp"]
        if udp["messages"] == FLOOD_DATAGRAMS + sent_steady:
            break
        time.sleep(0.05)
    health = daemon.settled_health()
    udp = health["ingest"]["udp"]
    assert udp["messages"] == FLOOD_DATAGRAMS + sent_steady
    assert udp["kernel_drops"] == 0
    limited = udp["rejected_by_reason"]["rate_limited"]
    assert udp["rejected_by_reason"] == {"rate_limited": limited}
    # every frame of 127.0.0.1 got through (its frames are the only events) ...
    assert health["consumer"]["frames_by_kind"]["event"] == sent_steady
    # ... while most of 127.0.0.2's flood was refused, and all of it is accounted for
    accepted_flood = health["consumer"]["frames_by_kind"]["rtc"]
    assert limited > sent_flood // 2
    assert accepted_flood + limited == sent_flood
    assert udp["frames_accepted"] == sent_steady + accepted_flood
    assert health["limits"]["tracked_sources"] == 2
    metrics = _metrics(daemon)
    assert 'bwmon_ingest_frames_rejected_total{transport="udp",reason="rate_limited"}' in metrics


def _metrics(daemon: DaemonProcess) -> str:
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_only_signed_datagrams_reach_a_daemon_with_udp_keys(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, f"[auth]\nudp_keys = ['{KEY}']\n")
    try:
        command = [sys.executable, "-m", "cli.main", "emit", "--json", "--transport", "udp"]
        command += ["--udp-port", str(daemon.udp_port), "--duration", "2", "--rate", "500"]
        signed = subprocess.run(
            command, env={**_env(), "BWMON_UDP_KEY": KEY}, capture_output=True, check=True
        )
        report = json.loads(signed.stdout)
        with _sender("127.0.0.1", daemon) as unsigned:
            unsigned.send(encode_msgpack(rtc(1)))
        health = daemon.settled_health()
    finally:
        daemon.stop()
    udp = health["ingest"]["udp"]
    assert report["frames_sent"] > 500
    assert udp["frames_accepted"] == report["frames_sent"]
    assert udp["messages"] == report["messages_sent"] + 1
    assert udp["rejected_by_reason"] == {"bad_signature": 1}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BWMON_")}
