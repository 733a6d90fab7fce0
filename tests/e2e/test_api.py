"""``/api`` of the real daemon process: frames sent over UDP show up in ``/api/meetings`` and
``/api/meetings/{id}`` while the meeting is live (searched, filtered and counted per quality
level; no alert open or stored); after SIGTERM has written them, a daemon
started on the same state exports them as CSV, streamed with chunked encoding."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli.daemon_process import DaemonProcess, running_daemon, start_daemon
from protocol import encode_msgpack
from tests.helpers import rtc, video_gauges

pytestmark = pytest.mark.e2e

SAMPLES = 20
PEOPLE = ("p1", "p2")
RESOLUTIONS = ("width_in", "height_in", "width_out", "height_out")
VIDEO = ("fps_in", "fps_out", *RESOLUTIONS, "bwe_bps", "remote_relayed")
VIDEO_COLUMNS = ("fps_in_avg", "fps_out_avg", *RESOLUTIONS, "bwe_bps_avg", "remote_relayed")
GAUGES = video_gauges() | dict(local_candidate="host", remote_candidate="relay")


def get(daemon: DaemonProcess, target: str) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{daemon.http_port}{target}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _lower(error.headers.items()), error.read()


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def get_json(daemon: DaemonProcess, target: str) -> Any:
    status, _, body = get(daemon, target)
    assert status == 200, body
    return json.loads(body)


def send_samples(daemon: DaemonProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", daemon.udp_port))
        for seq in range(1, SAMPLES + 1):
            frames = [rtc(seq, "room-é", person) for person in PEOPLE]
            sock.send(encode_msgpack([msgspec.structs.replace(f, **GAUGES) for f in frames]))


def wait_for_meeting(daemon: DaemonProcess) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        meetings: dict[str, Any] = get_json(daemon, "/api/meetings")["meetings"]
        if meetings.get("room-é", {}).get("participants") == len(PEOPLE):
            return meetings
        assert time.monotonic() < deadline, meetings
        time.sleep(0.05)


def test_live_meetings_then_a_csv_export_of_what_was_stored(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n")
    first = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    try:
        send_samples(first)
        meetings = wait_for_meeting(first)
        assert list(meetings) == ["room-é"]
        assert meetings["room-é"]["started_at"] > 0

        meeting = get_json(first, "/api/meetings/room-%C3%A9")
        assert meeting["meeting"] == "room-é"
        assert sorted(meeting["participants"]) == list(PEOPLE)
        assert meeting["participants"]["p1"]["connections"] == 1
        assert {"up_bps", "rtt_ms", "quality", "relay"} <= set(meeting["participants"]["p1"])
        shown = {k: meeting["participants"]["p1"][k] for k in VIDEO}
        assert shown == dict(zip(VIDEO, (24.0, 30.0, 1280, 720, 640, 360, 2e6, True), strict=True))
        assert set(meeting["series"]) <= set(PEOPLE)

        found = get_json(first, "/api/meetings?q=room&relay=false&alerts=false&sort=-quality")
        assert (found["total"], found["ids"]) == (1, ["room-é"])
        assert get_json(first, "/api/meetings?relay=true")["total"] == 0  # the peer relays
        assert get_json(first, "/api/meetings?q=nobody")["total"] == 0
        quality = get_json(first, "/api/quality")
        assert sum(quality["meetings"].values()) == 1
        assert sum(quality["participants"].values()) == len(PEOPLE)
        alerts = get_json(first, "/api/alerts?since=0")
        assert (alerts["open"], alerts["recent"]) == ([], [])  # real storage, nothing raised
        status, _, body = get(first, "/api/meetings?level=awful")
        assert status == 400
        assert json.loads(body)["error"].startswith("level 'awful': each one of excellent")

        status, _, body = get(first, "/api/meetings/nobody")
        assert (status, json.loads(body)) == (
            404,
            {"error": "meeting 'nobody' is not live"},
        )
        status, _, body = get(first, "/api/export?what=rtc&format=xml")
        assert status == 400
        assert json.loads(body) == {"error": "format 'xml': one of csv, json, ndjson"}
        assert first.settled_health()["ingest"]["udp"]["frames_accepted"] == SAMPLES * len(PEOPLE)
    finally:
        assert first.stop() == 0  # closes every open minute and writes it

    with running_daemon(tmp_path / "second.log", ["--config", str(config)]) as second:
        status, headers, body = get(second, "/api/export?what=rtc&format=csv&meeting=room-%C3%A9")
        history = get_json(second, "/api/series?meeting=room-%C3%A9&points=1")
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == 'attachment; filename="bwmon-rtc.csv"'
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert {row["meeting"] for row in rows} == {"room-é"}
    assert {row["participant"] for row in rows} == set(PEOPLE)
    assert sum(int(row["samples"]) for row in rows) == SAMPLES * len(PEOPLE)
    video = sum(float(row["video_bytes_sent"]) for row in rows)
    # cumulative counters: the first sample has q 1 (the daemon did not see the stream start),
    # a baseline; the bytes are what came after it
    assert video == len(PEOPLE) * 180_000 * (SAMPLES - 1)
    # /api/series from the stored rows alone (the second daemon has nothing live): per minute,
    # the participants' bytes sent as bit/s, summed; one bucket keeps the highest minute
    up: dict[str, float] = {}
    for row in rows:
        sent = float(row["audio_bytes_sent"]) + float(row["video_bytes_sent"])
        up[row["minute"]] = up.get(row["minute"], 0.0) + 8 * sent / 60
    assert history["series"]["up_bps"]["max"] == [pytest.approx(max(up.values()), abs=1e-3)]
    assert history["series"]["up_bps"]["min"] == [pytest.approx(min(up.values()), abs=1e-3)]
    assert {tuple(row[c] for c in VIDEO_COLUMNS) for row in rows} == {
        ("24.0", "30.0", "1280", "720", "640", "360", "2000000.0", "1")
    }
