"""A database that refuses one row: the real daemon and the real MariaDB, a meeting with a
participant relayed through a TURN server whose URL is 512 code points of emoji (PROTOCOL.md
§4.3 allows it) among plain streams.

With the schema as migrated, every row is stored, that meeting's summary included. With the
meetings table narrowed back to the VARCHAR(4000) of schema version 1 (the server refuses that
summary: error 1406), every other row still arrives exactly, the summary is counted, logged and
set aside in ``refused.jsonl``, ``/readyz`` answers 200, SIGTERM spools nothing and the next
start retries nothing."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import Event, RtcSample, encode_msgpack
from tests.helpers import admin

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

EMOJI_TURN = "turn:" + "😀" * 507  # 512 code points; 6,089 characters as JSON (ensure_ascii)
STREAMS = [("m-relay", "emoji"), ("m-relay", "p1"), ("m-relay", "p2")] + [
    ("m-plain", f"p{i}") for i in range(1, 4)
]
SAMPLES = 6
T0 = 1_764_000_000_000.0


def sample(meeting: str, participant: str, seq: int) -> RtcSample:
    relay: dict[str, Any] = {}
    if participant == "emoji":
        relay = dict(
            local_candidate="relay",
            relay_protocol="udp",
            turn_url=EMOJI_TURN,
            pair_bytes_sent=150_000 * seq,
            pair_bytes_received=90_000 * seq,
        )
    return RtcSample(
        meeting=meeting,
        participant=participant,
        connection="pc1",
        seq=seq,
        client_ts=T0 + 1_000 * seq,
        audio_bytes_sent=4_000 * seq,
        video_bytes_sent=140_000 * seq,
        **relay,
    )


def send_meetings(port: int) -> float:
    """Every stream from ``q`` 0 (counted in full), then every participant leaves; returns the
    audio and video bytes sent, as the streams' last totals say."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in range(SAMPLES):
            for meeting, participant in STREAMS:
                sock.sendto(encode_msgpack(sample(meeting, participant, seq)), ("127.0.0.1", port))
        for meeting, participant in STREAMS:
            leave = Event(meeting=meeting, participant=participant, kind="leave", client_ts=T0)
            sock.sendto(encode_msgpack(leave), ("127.0.0.1", port))
    return float(len(STREAMS) * (4_000 + 140_000) * (SAMPLES - 1))


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def start(tmp_path: Path, database: str) -> DaemonProcess:
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
        f"mysql_database = '{database}'\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
        "[aggregate]\nmeeting_end_after_s = 1.0\n"
    )
    return start_daemon(tmp_path / "daemon.log", ["--config", str(config)])


def stored_bytes(database: str) -> float:
    ((stored,),) = admin(
        "SELECT COALESCE(SUM(audio_bytes_sent + video_bytes_sent), 0) FROM rtc_minute", database
    )
    assert isinstance(stored, float | int)
    return float(stored)


def meetings(database: str) -> dict[str, dict[str, float]]:
    rows = admin("SELECT meeting, relayed_bytes_by_turn_server FROM meetings", database)
    return {str(meeting): json.loads(str(servers)) for meeting, servers in rows}


def test_a_meeting_relayed_through_a_512_emoji_turn_url_is_stored_whole(
    tmp_path: Path, database: str
) -> None:
    daemon = start(tmp_path, database)
    try:
        sent = send_meetings(daemon.udp_port)
        wait_until(lambda: len(meetings(database)) == 2)
        assert stored_bytes(database) == sent
        storage = daemon.health()["storage"]
        assert readyz(daemon.http_port) == 200
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    assert storage["rows_refused"] == 0
    relayed = meetings(database)["m-relay"]
    assert list(relayed) == [EMOJI_TURN]
    ((total,),) = admin("SELECT relayed_bytes FROM meetings WHERE meeting = 'm-relay'", database)
    assert isinstance(total, float)
    assert relayed[EMOJI_TURN] == total > 0


def test_a_row_the_database_refuses_is_set_aside_and_blocks_nothing(
    tmp_path: Path, database: str
) -> None:
    daemon = start(tmp_path, database)  # migrates at start
    try:
        # The table of schema version 1: the relayed meeting's summary does not fit.
        admin(
            "ALTER TABLE meetings MODIFY relayed_bytes_by_turn_server VARCHAR(4000) NOT NULL",
            database,
        )
        sent = send_meetings(daemon.udp_port)
        wait_until(lambda: daemon.health()["storage"]["rows_refused"] == 1)
        wait_until(lambda: stored_bytes(database) == sent and "m-plain" in meetings(database))
        assert readyz(daemon.http_port) == 200
        storage = daemon.health()["storage"]
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    assert stored_bytes(database) == sent  # every minute row of every stream, exactly
    assert list(meetings(database)) == ["m-plain"]
    assert (storage["consecutive_failures"], storage["pending_rows"]) == (0, 0)
    refused = [json.loads(line) for line in (tmp_path / "refused.jsonl").read_text().splitlines()]
    assert [(r["table"], r["row"]["meeting"]) for r in refused] == [("meetings", "m-relay")]
    assert "1406" in refused[0]["error"]
    assert json.loads(refused[0]["row"]["relayed_bytes_by_turn_server"])[EMOJI_TURN] > 0
    logged = [e for e in daemon.log_events() if e.get("event") == "storage_row_refused"]
    assert [(e["table"], e["row_key"]["meeting"]) for e in logged] == [("meetings", "m-relay")]
    closed = [e for e in daemon.log_events() if e.get("event") == "storage_closed"]
    assert closed[-1]["spooled_batches"] == 0  # SIGTERM spooled nothing

    again = start(tmp_path, database)  # the next start has nothing to retry
    try:
        wait_until(lambda: again.health()["storage"]["flushes"] >= 2)
        storage = again.health()["storage"]
        assert readyz(again.http_port) == 200
    finally:
        again.stop()
    assert (storage["rows_refused"], storage["failed_flushes"]) == (0, 0)
    assert storage["rows_written"] == 0
