"""kill -9 right after new streams' first samples: the real daemon, killed within a second of
applying the first samples of 20 new streams (before any flush or checkpoint), then again
within a second of 10 more joining after the restart, keeps every byte they sent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cli.daemon_process import start_daemon
from tests.rtc_sender import RtcSender, kill, stored_totals, wait_for_streams

pytestmark = pytest.mark.e2e


def test_kill_9_within_a_second_of_new_streams_first_samples(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\n")  # flushes 5 s apart
    daemon = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    ports = ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    sender = RtcSender(daemon.udp_port, seed=23)
    try:
        sender.join(20, "m-before-first-kill")
        sender.send_round()
        wait_for_streams(daemon, 20)
        sender.send_round()
        kill(daemon)  # within a second of the first samples
        sender.send_round()  # to nobody
        daemon = start_daemon(tmp_path / "second.log", ["--config", str(config), *ports])
        sender.join(10, "m-after-restart")
        sender.send_round()
        wait_for_streams(daemon, 30)
        kill(daemon)  # within a second of a restart and of 10 more streams' first samples
        daemon = start_daemon(tmp_path / "third.log", ["--config", str(config), *ports])
        for _ in range(3):
            sender.send_round()
            time.sleep(0.2)
        sender.resend_last()
        daemon.settled_health()
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        sender.close()
    expected = sender.expected()
    assert len(expected) == 30
    assert stored_totals(tmp_path / "bwmon.db") == expected
