"""What the notification end-to-end tests share: a daemon configuration with one fast alert
rule and ``[[notify]]`` sinks, and a feeder that sends samples of bad or good RTT until the
alerts it waits for have been raised or cleared."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from cli.daemon_process import DaemonProcess
from protocol import encode_msgpack
from tests.helpers import rtc

# Raise on 2 of 2 samples over 100 ms, clear on 2 of 2 at or below 90 ms; a raise again
# after a clear at once (no anti-flapping wait), so a test can raise and clear several times.
RULE = (
    "[alerts]\nuse_default_rules = false\n"
    "[[alerts.rules]]\nname = 'slow_rtt'\nmetric = 'rtt_ms'\n"
    "raise_threshold = 100\nclear_threshold = 90\nseverity = 'critical'\n"
    "raise_count = 2\nraise_window = 2\nclear_count = 2\nclear_window = 2\nmin_interval_s = 0\n"
)


def config(tmp_path: Path, sinks: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(
        f"[storage]\nbackend = 'sqlite'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        + RULE
        + sinks
    )
    return path


class Feeder:
    """Samples of participants of meeting ``m1`` over UDP, four a second, with the RTT asked;
    every participant's counters keep growing across calls (and across a daemon restart)."""

    def __init__(self, participants: Sequence[str] = ("p1",)) -> None:
        self.participants = list(participants)
        self.seq = 0

    def feed(
        self,
        daemon: DaemonProcess,
        rtt_ms: float,
        until: Callable[[], bool],
        timeout_s: float = 20,
        participants: Sequence[str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not until():
                assert time.monotonic() < deadline, "timed out feeding the daemon"
                self.seq += 1
                for participant in participants or self.participants:
                    frame = msgspec.structs.replace(
                        rtc(self.seq, participant=participant),
                        rtt_ms=rtt_ms,
                        audio_bytes_received=4_000 * self.seq,
                    )
                    sock.sendto(encode_msgpack(frame), ("127.0.0.1", daemon.udp_port))
                time.sleep(0.25)


def sink_health(daemon: DaemonProcess, name: str) -> dict[str, int]:
    sinks = {s["name"]: s for s in daemon.health()["notify"]["sinks"]}
    found: dict[str, int] = sinks[name]
    return found


def active_alerts(daemon: DaemonProcess) -> int:
    active: int = daemon.health()["aggregate"]["alerts_active"]
    return active
