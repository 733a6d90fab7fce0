"""A UDP sender of ``rtc`` streams with known totals, for tests that kill the daemon under load.

Each stream starts at ``q`` 0 with every counter from 0 (PROTOCOL.md §8.5: counted in full) and
sends its cumulative totals in every round; a round lost while no daemon listens loses nothing,
the next one carries the totals. ``expected`` is what the database must hold per stream once the
last round has been applied: the totals of its last sample. With the helpers of tests that kill
the daemon: wait until it holds streams, kill it, read what SQLite stored.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import socket
import sqlite3
import threading
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from cli.daemon_process import DaemonProcess
from protocol import Frame, RtcSample, encode_msgpack


@dataclass
class Stream:
    meeting: str
    participant: str
    boot: str
    seq: int = -1
    audio: int = 0
    video: int = 0


class RtcSender:
    """Streams to one UDP port: a round every ``interval_s`` in a thread from ``start`` until
    ``stop``, or one at a time with ``send_round``."""

    def __init__(self, port: int, seed: int, interval_s: float = 0.2) -> None:
        self.port = port
        self.interval_s = interval_s
        self.random = random.Random(seed)
        self.streams: list[Stream] = []
        self.rounds = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._thread: threading.Thread | None = None

    def join(self, count: int, meeting: str) -> list[Stream]:
        """``count`` new streams in ``meeting``; their ``q`` 0 goes out with ``send_round``."""
        with self._lock:
            first = len(self.streams)
            new = [Stream(meeting, f"p{first + i}", secrets.token_hex(8)) for i in range(count)]
            self.streams += new
        return new

    def send_round(self) -> None:
        """One sample of every stream, its counters grown by a random amount, one datagram
        per meeting."""
        with self._lock:
            by_meeting: dict[str, list[Frame]] = {}
            for s in self.streams:
                s.seq += 1
                s.audio += self.random.randrange(1_000, 5_000)
                s.video += self.random.randrange(10_000, 200_000)
                by_meeting.setdefault(s.meeting, []).append(self._sample(s))
            self.rounds += 1
        for frames in by_meeting.values():
            self._send(frames)

    def resend_last(self) -> None:
        """Every stream's last sample again: a duplicate where it arrived (not applied), the
        totals where it was lost."""
        with self._lock:
            frames: list[Frame] = [self._sample(s) for s in self.streams if s.seq >= 0]
        for i in range(0, len(frames), 20):
            self._send(frames[i : i + 20])

    def _sample(self, s: Stream) -> RtcSample:
        return RtcSample(
            meeting=s.meeting,
            participant=s.participant,
            connection="pc1",
            seq=s.seq,
            client_ts=1_764_000_000_000.0 + 200 * s.seq,
            boot=s.boot,
            audio_bytes_sent=s.audio,
            video_bytes_sent=s.video,
            rtt_ms=40.0,
        )

    def _send(self, frames: list[Frame]) -> None:
        # No daemon listening (ICMP port unreachable): the next round carries the totals.
        with contextlib.suppress(OSError):
            self._sock.sendto(encode_msgpack(frames), ("127.0.0.1", self.port))

    def expected(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(meeting, participant) → (audio bytes sent, video bytes sent) of the last sample."""
        with self._lock:
            return {(s.meeting, s.participant): (s.audio, s.video) for s in self.streams}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.send_round()

    def stop(self) -> None:
        """No more rounds (``send_round`` and ``resend_last`` still send)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self.stop()
        self._sock.close()


def wait_for_streams(daemon: DaemonProcess, count: int, timeout_s: float = 20.0) -> None:
    """Until the daemon's engine holds ``count`` streams: their first samples are applied."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            health = daemon.health()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/healthz {exc.code}: {exc.read()[:500]!r}") from None
        if health["aggregate"]["rtc_streams"] >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the daemon never held {count} streams")


def kill(daemon: DaemonProcess) -> None:
    daemon.process.kill()
    daemon.process.wait()


def stored_totals(db_file: Path) -> dict[tuple[str, str], tuple[int, int]]:
    with sqlite3.connect(db_file) as db:
        rows = db.execute(
            "SELECT meeting, participant, SUM(audio_bytes_sent), SUM(video_bytes_sent) "
            "FROM rtc_minute GROUP BY meeting, participant"
        ).fetchall()
    return {(m, p): (int(a), int(v)) for m, p, a, v in rows}
