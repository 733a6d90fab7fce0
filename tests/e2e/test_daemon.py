"""The real daemon as a process on loopback: ``bwmon serve`` fed by ``bwmon emit`` over UDP and
WebSocket at once, then hostile input; ``/healthz`` must count exactly what was sent and every
rejection by its reason, and SIGTERM must stop the daemon cleanly."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import encode_json, encode_msgpack
from protocol.session import ErrorReply, SessionMessage, Welcome
from tests.helpers import assert_build, event, hello, http_sample, rtc

pytestmark = pytest.mark.e2e

EMIT_SECONDS = 5
MAX_DATAGRAM = 4096


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[ingest]\nmax_datagram_bytes = {MAX_DATAGRAM}\nack_interval_s = 0.2\n"
        f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.5\n"
    )
    process = start_daemon(tmp_path / "daemon.log", ["--config", str(config)])
    try:
        yield process
    finally:
        process.stop()


def emit(
    daemon: DaemonProcess, transport: str, *args: str, seconds: float = EMIT_SECONDS
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cli.main", "emit", "--json", "--transport", transport]
    command += ["--udp-port", str(daemon.udp_port), "--http-port", str(daemon.http_port)]
    command += ["--duration", str(seconds), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def report(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=EMIT_SECONDS + 30)
    assert process.returncode == 0
    result: dict[str, Any] = json.loads(out)
    return result


def test_every_emitted_frame_is_counted_over_udp_and_websocket(daemon: DaemonProcess) -> None:
    udp = emit(daemon, "udp", "--rate", "4000", "--meetings", "20")
    ws = emit(daemon, "ws", "--rate", "4000", "--meetings", "20", "--encoding", "json")
    udp_report, ws_report = report(udp), report(ws)
    health = daemon.settled_health()
    counted_udp, counted_ws = health["ingest"]["udp"], health["ingest"]["websocket"]
    # Tens of thousands of frames each, every one of them counted, none rejected.
    assert udp_report["frames_sent"] > 15_000
    assert ws_report["frames_sent"] > 15_000
    assert counted_udp["frames_accepted"] == udp_report["frames_sent"]
    assert counted_udp["messages"] == udp_report["messages_sent"]
    assert counted_ws["frames_accepted"] == ws_report["frames_sent"]
    assert ws_report["acked_accepted"] == ws_report["frames_sent"]
    assert counted_udp["frames_rejected"] == counted_ws["frames_rejected"] == 0
    assert counted_udp["kernel_drops"] == 0
    by_kind = health["consumer"]["frames_by_kind"]
    assert sum(by_kind.values()) == udp_report["frames_sent"] + ws_report["frames_sent"]
    for kind in ("rtc", "http", "event"):
        assert (
            by_kind[kind] == udp_report["frames_by_kind"][kind] + ws_report["frames_by_kind"][kind]
        )


def test_replayed_frames_are_counted_like_live_ones(daemon: DaemonProcess) -> None:
    replay = ["--replay", "500", "--rate", "20000"]
    udp_report = report(emit(daemon, "udp", *replay, seconds=2))
    ws_report = report(emit(daemon, "ws", *replay, seconds=2))
    counted = daemon.settled_health()["ingest"]
    assert udp_report["frames_by_kind"] == {"rtc": udp_report["frames_sent"]}
    assert udp_report["frames_sent"] > 20_000
    assert counted["udp"]["frames_accepted"] == udp_report["frames_sent"]
    assert counted["websocket"]["frames_accepted"] == ws_report["frames_sent"] > 20_000


BAD_DATAGRAMS: list[tuple[bytes, dict[str, int], int]] = [
    # (datagram, rejections by reason, good frames in it)
    # (not 0xC1 first: on UDP that is a signed datagram, PROTOCOL.md §2.3)
    (b"\x93\xc1 garbage", {"malformed": 1}, 0),
    (b"x" * (MAX_DATAGRAM + 1), {"too_large": 1}, 0),
    (b'{"t":"video","m":"m1"}', {"unknown_tag": 1}, 0),
    (encode_json(rtc(1)).replace(b'"q":1', b'"q":"one"'), {"wrong_type": 1}, 0),
    (b'{"t":"rtc","m":"m1","p":"p1"}', {"missing_field": 1}, 0),
    (b"", {"empty": 1}, 0),
    # A batch with one bad frame among good ones: the good ones are accepted.
    (
        b"[%s,%s,%s]" % (encode_json(rtc(2)), b'{"t":"rtc"}', encode_json(http_sample())),
        {"missing_field": 1},
        2,
    ),
    (encode_msgpack([rtc(3), event()]), {}, 2),
]


def test_bad_udp_input_is_counted_by_reason_and_good_frames_survive(
    daemon: DaemonProcess,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", daemon.udp_port))
        for datagram, _, _ in BAD_DATAGRAMS:
            sock.send(datagram)
    expected: dict[str, int] = {}
    for _, reasons, _ in BAD_DATAGRAMS:
        for reason, count in reasons.items():
            expected[reason] = expected.get(reason, 0) + count
    counted = daemon.settled_health()["ingest"]["udp"]
    assert counted["rejected_by_reason"] == dict(sorted(expected.items()))
    assert counted["frames_rejected"] == sum(expected.values())
    assert counted["frames_accepted"] == sum(good for _, _, good in BAD_DATAGRAMS)
    assert counted["messages"] == len(BAD_DATAGRAMS)
    assert daemon.process.poll() is None


_replies = msgspec.json.Decoder(SessionMessage)


async def _bad_ws_session(port: int) -> list[SessionMessage]:
    replies: list[SessionMessage] = []
    async with open_websocket_url(f"ws://127.0.0.1:{port}/ingest") as ws:
        await ws.send_message(encode_json(hello()).decode())
        welcome = _replies.decode(await ws.get_message())
        assert isinstance(welcome, Welcome)
        for datagram, _, _ in BAD_DATAGRAMS[:-1]:
            if len(datagram) <= MAX_DATAGRAM and datagram:
                await ws.send_message(datagram)
        with trio.fail_after(10):
            while len([r for r in replies if isinstance(r, ErrorReply)]) < 5:
                replies.append(_replies.decode(await ws.get_message()))
    return replies


def test_bad_websocket_input_gets_error_replies_and_is_counted(daemon: DaemonProcess) -> None:
    replies = trio.run(_bad_ws_session, daemon.http_port)
    errors = sorted(r.reason for r in replies if isinstance(r, ErrorReply))
    assert errors == ["malformed", "missing_field", "missing_field", "unknown_tag", "wrong_type"]
    counted = daemon.settled_health()["ingest"]["websocket"]
    assert counted["rejected_by_reason"] == {
        "malformed": 1,
        "missing_field": 2,
        "unknown_tag": 1,
        "wrong_type": 1,
    }
    assert counted["frames_accepted"] == 2


def test_sigterm_stops_the_daemon_cleanly(daemon: DaemonProcess) -> None:
    assert daemon.stop() == 0
    events = [e["event"] for e in daemon.log_events()]
    assert events[-3:] == ["stopping", "storage_closed", "stopped"]


@pytest.mark.slow
def test_bench_ingest_prints_the_figures_the_issue_names() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "ingest", "--json", "--quick"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    for key in (
        "udp_frames_per_s",
        "udp_loss_fraction",
        "ws_frames_per_s",
        "decode_ceiling_frames_per_s",
        "ratio_to_ceiling",
    ):
        assert figures[key] >= 0, key
    assert figures["target_udp_frames_per_s"] == 150_000
    assert figures["udp_frames_per_s"] > 0
    assert figures["ws_frames_per_s"] > 0
    assert figures["udp_loss_fraction"] < 0.001
    assert figures["ratio_to_ceiling"] == pytest.approx(
        figures["udp_frames_per_s"] / figures["decode_ceiling_frames_per_s"], abs=0.001
    )
    for step in figures["udp"]["steps"]:
        assert step["accepted_frames"] <= step["sent_frames"]


def test_healthz_shows_live_meetings_and_participants_while_emit_runs(
    daemon: DaemonProcess,
) -> None:
    sender = emit(daemon, "udp", "--meetings", "7", "--participants", "3", seconds=4)
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while sender.poll() is None and time.monotonic() < deadline:
        live = daemon.health()["aggregate"]
        seen.append((live["meetings"], live["participants"]))
        time.sleep(0.2)
    report(sender)
    assert (7, 21) in seen
    live = daemon.health()["aggregate"]
    assert live["rtc_streams"] == 21
    assert live["http_routes"] == 4
    assert live["refused_by_reason"] == {}


def test_the_start_log_and_healthz_say_which_build_runs(daemon: DaemonProcess) -> None:
    health = daemon.health()
    assert_build(health["compiled"])
    if health["compiled"]:
        assert (health["build"], health["build_reason"]) == ("compiled", None)
    else:
        assert health["build"] == "pure"
        assert health["build_reason"]  # why: BWMON_PURE=1, no C compiler, a failed build
    logged = [e for e in daemon.log_events() if e["event"] == "build"]
    assert [(e["build"], e["reason"], e["compiled"]) for e in logged] == [
        (health["build"], health["build_reason"], health["compiled"])
    ]


@pytest.mark.slow
def test_bench_aggregate_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "aggregate", "--json", "--quick"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["target_frames_per_s"] == 100_000
    assert figures["target_bytes_per_stream"] == 4096
    assert figures["frames_per_s"] > 0
    assert 0 < figures["ratio_to_ceiling"] < 1
    assert 0 < figures["tick_step_ms"] <= figures["tick_ms"]
    assert set(figures["bytes_per_stream"]) == {"1000", "5000"}
    assert all(0 < size < 64_000 for size in figures["bytes_per_stream"].values())


def test_sigterm_writes_everything_received_to_the_database(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    sent = report(emit(daemon, "udp", "--meetings", "4", "--participants", "3", seconds=3))
    counted = daemon.settled_health()["ingest"]["udp"]["frames_accepted"]
    assert counted == sent["frames_sent"]
    assert daemon.stop() == 0
    with sqlite3.connect(tmp_path / "bwmon.db") as db:
        (samples, streams) = db.execute(
            "SELECT SUM(samples), COUNT(DISTINCT participant) FROM rtc_minute"
        ).fetchone()
        (requests,) = db.execute("SELECT COUNT(*) FROM http_minute").fetchone()
    # Every rtc sample the daemon received is in a minute row, from all 12 participants, and
    # the bytes add up to what emit sent.
    assert samples == sent["frames_by_kind"]["rtc"]
    with sqlite3.connect(tmp_path / "bwmon.db") as db:
        (stored,) = db.execute(
            "SELECT SUM(audio_bytes_sent + video_bytes_sent) FROM rtc_minute"
        ).fetchone()
    assert stored == sent["rtc_bytes_sent"] > 0
    assert streams == 12
    assert requests >= 4


def test_kill_9_and_restart_lose_no_counted_byte(tmp_path: Path) -> None:
    """The daemon is killed with SIGKILL mid-run and started again on the same ports: the bytes
    in the database equal what emit sent, because the checkpoint brings every stream's last
    counters back and the first sample after the restart is a delta from them."""
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path}'\nflush_interval_s = 0.3\n")
    first = start_daemon(tmp_path / "first.log", ["--config", str(config)])
    ports = ["--udp-port", str(first.udp_port), "--http-port", str(first.http_port)]
    sender = emit(
        first, "udp", "--meetings", "3", "--participants", "3", "--interval", "0.2", seconds=10
    )
    time.sleep(2.5)
    first.process.kill()
    first.process.wait()
    second = start_daemon(tmp_path / "second.log", ["--config", str(config), *ports])
    try:
        # The last samples must reach the second daemon: they carry the bytes sent while no
        # daemon listened (on a slow machine a restart once outlasted a 6 s emit).
        assert sender.poll() is None, "emit ended before the daemon was back"
        sent = report(sender)
        assert any(e.get("event") == "checkpoint_restored" for e in second.log_events())
        assert second.stop() == 0
    finally:
        second.stop()
    with sqlite3.connect(tmp_path / "bwmon.db") as db:
        (stored,) = db.execute(
            "SELECT SUM(audio_bytes_sent + video_bytes_sent) FROM rtc_minute"
        ).fetchone()
    assert sent["rtc_bytes_sent"] > 0
    assert stored == sent["rtc_bytes_sent"]


@pytest.mark.slow
def test_bench_storage_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "storage", "--json", "--quick"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    for key in (
        "statements_per_min",
        "target_statements_per_table_per_min",
        "meets_target",
        "rows_per_s",
        "sqlite_rows_per_s",
    ):
        assert key in figures
    assert figures["target_statements_per_table_per_min"] == 10
    assert figures["rows_per_s"] > 0
    assert figures["sqlite_rows_per_s"] > 0
    small, large = figures["statements_per_min"]["100"], figures["statements_per_min"]["20000"]
    assert set(small) == set(large) == {"rtc_minute", "http_minute", "total"}
    # One upsert per table per minute whatever the participant count: the sink sizes its
    # statements from the server's max_allowed_packet (16 MiB here: 33,554 rows).
    assert small == {"rtc_minute": 1, "http_minute": 1, "total": 2}
    assert figures["mysql_rows_per_statement"] >= 20_000
    assert large == small
    for per_table in (small, large):
        assert per_table["rtc_minute"] <= 10
        assert per_table["http_minute"] <= 10
    assert figures["meets_target"] is True
