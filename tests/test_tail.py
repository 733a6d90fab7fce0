"""``bwmon tail``: the view rendered from recorded ``/subscribe`` messages, the session's
bookkeeping of positions and alerts, and the real command against a real daemon fed by
``bwmon emit``: NDJSON, a pseudo-terminal, and a daemon restart it must survive."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from cli.daemon_process import DaemonProcess, running_daemon, start_daemon
from cli.main import app
from cli.synthetic import Profile, make_participants
from cli.tail import (
    CLEAR_SCREEN,
    TailError,
    TailOptions,
    TailSession,
    TopicRefused,
    Update,
    bitrate,
    render,
    run_tail,
    update_line,
    wants_color,
)
from collector.auth import Auth
from collector.fanout.channel import LocalChannel
from collector.fanout.hub import change
from collector.fanout.subscribers import Fanout, FanoutSettings
from collector.http.server import HttpServer, HttpSettings
from protocol.subscribe import Alert, Delta, Entities, Snapshot, SubscribeError
from protocol.tokens import Claims, mint
from tests.helpers import free_port, wait_for

EPOCH = "5f0c2a9e1b7d4c3a"
SEED = 1  # emit's ids, so that the test knows them
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def meeting(participants: int, up: float, level: str | None, **more: Any) -> dict[str, Any]:
    return {
        "participants": participants,
        "up_bps": up,
        "down_bps": up * 0.99,
        "quality": None if level is None else 73,
        "level": level,
        "relay_share": 0.0,
        "relay_cost": 0.0,
        "alerts": 0,
        "started_at": 1_764_000_000.0,
        **more,
    }


def alert(
    meeting_id: str, participant: str, state: str = "raised", at: float = 1_764_000_002.0
) -> dict[str, Any]:
    return {
        "id": f"packet_loss:{meeting_id}/{participant}:1@1764000001000",
        "rule": "packet_loss",
        "key": [meeting_id, participant],
        "state": state,
        "severity": "warning",
        "value": 5.25,
        "threshold": 1.0,
        "at": at,
        "raised_at": 1_764_000_001.0,
    }


def snapshot(topic: str, seq: int, entities: Entities, epoch: str = EPOCH) -> Snapshot:
    return Snapshot(topic=topic, epoch=epoch, seq=seq, at=1_764_000_000.0 + seq, entities=entities)


def delta(topic: str, seq: int, prev: int | None = None, **fields: Any) -> Delta:
    at = 1_764_000_000.0 + seq
    return Delta(
        topic=topic, epoch=EPOCH, seq=seq, prev=seq - 1 if prev is None else prev, at=at, **fields
    )


def plain_rows(text: str, first_column: str) -> list[list[str]]:
    """The table's rows (header first), cells split on runs of 2+ spaces, colour removed."""
    lines = ANSI.sub("", text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


# -- rendering and the session, from recorded messages -----------------------------------------


@pytest.mark.parametrize(
    ("bps", "shown"),
    [
        (None, "-"),
        (0, "0 b/s"),
        (950, "950 b/s"),
        (12_345, "12.3 kb/s"),
        (999_600, "1.00 Mb/s"),
        (2_450_000, "2.45 Mb/s"),
        (24_500_000, "24.5 Mb/s"),
        (245_000_000, "245 Mb/s"),
        (3_100_000_000, "3.10 Gb/s"),
    ],
)
def test_bitrates_are_shown_in_human_units(bps: float | None, shown: str) -> None:
    assert bitrate(bps) == shown


def test_the_meetings_table_follows_snapshot_and_deltas_sorted_by_meeting() -> None:
    session = TailSession(["meetings", "alerts"])
    assert session.receive(snapshot("alerts", 3, {})).updates
    first = session.receive(snapshot("meetings", 7, {"standup": meeting(2, 2_450_000, "good")}))
    assert [u.kind for u in first.updates] == ["snapshot"]
    changed = {
        "retro": meeting(3, 980_000, "fair", relay_share=0.33, relay_cost=0.0123, alerts=2),
        "allhands": meeting(40, 61_200_000, "bad"),
        "standup": {"up_bps": 2_510_000.0},
    }
    applied = session.receive(delta("meetings", 8, changed=changed))
    assert [(u.kind, u.seq) for u in applied.updates] == [("delta", 8)]
    session.receive(delta("meetings", 9, changed={"gone": meeting(1, 1.0, None)}))
    session.receive(delta("meetings", 10, removed=["gone"]))

    text = render(session, color=False)
    assert "\x1b" not in text
    rows = plain_rows(text, "MEETING")
    assert rows[0] == [
        "MEETING", "PARTS", "UP", "DOWN", "QUALITY", "LEVEL", "RELAY %", "RELAY COST", "ALERTS"
    ]  # fmt: skip
    assert rows[1:] == [
        ["allhands", "40", "61.2 Mb/s", "60.6 Mb/s", "73", "bad", "0%", "0.0000", "0"],
        ["retro", "3", "980 kb/s", "970 kb/s", "73", "fair", "33%", "0.0123", "2"],
        ["standup", "2", "2.51 Mb/s", "2.43 Mb/s", "73", "good", "0%", "0.0000", "0"],
    ]
    assert text.startswith("3 live meetings")
    assert "alerts: 0 open" in text


def test_levels_are_coloured_only_when_asked() -> None:
    session = TailSession(["meetings", "alerts"])
    entities = {
        "a": meeting(2, 1e6, "excellent"),
        "b": meeting(2, 1e6, "fair"),
        "c": meeting(2, 1e6, "poor"),
        "d": meeting(2, 1e6, None),
    }
    session.receive(snapshot("meetings", 1, entities))
    coloured = render(session, color=True)
    assert re.search(r"\x1b\[32mexcellent\s*\x1b\[0m", coloured)
    assert re.search(r"\x1b\[33mfair\s*\x1b\[0m", coloured)
    assert re.search(r"\x1b\[31mpoor\s*\x1b\[0m", coloured)
    assert len(re.findall(r"\x1b\[3\dm", coloured)) == 3  # the unmeasured level stays plain
    # Colour does not move a column: without the escapes it is the plain table.
    assert ANSI.sub("", coloured) == render(session, color=False)
    assert "\x1b" not in render(session, color=False)


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_color(Terminal(), {})
    assert not wants_color(Terminal(), {"NO_COLOR": "1"})
    assert not wants_color(io.StringIO(), {})


def test_the_participant_view_shows_participants_not_points() -> None:
    session = TailSession(["meeting:standup", "alerts"])
    participant = {
        "kind": "participant",
        "joined_at": 1_764_000_000.0,
        "up_bps": 1_230_000.0,
        "down_bps": 45_600.0,
        "loss_down_pct": 1.2,
        "loss_up_pct": 0.0,
        "rtt_ms": 61.0,
        "jitter_ms": 14.7,
        "mos": 4.21,
        "quality": 73.0,
        "level": "good",
        "reasons": ["loss", "rtt"],
        "relay": "turn-udp",
        "turn_server": "turn1.example.org",
        "relayed_bytes": 1000,
        "connections": 1,
    }
    entities: Entities = {
        "zoe": participant,
        "adam": {**participant, "reasons": [], "relay": "direct", "turn_server": None},
        "zoe@1764000000": {"kind": "point", "participant": "zoe", "t": 1_764_000_000.0},
    }
    session.receive(snapshot("meeting:standup", 4, entities))
    session.receive(delta("meeting:standup", 5, changed={"adam": {"level": "bad", "mos": 1.5}}))
    session.receive(snapshot("alerts", 2, {}))
    text = render(session, color=True)
    rows = plain_rows(text, "PARTICIPANT")
    assert rows == [
        [
            "PARTICIPANT", "UP", "DOWN", "LOSS DN", "LOSS UP", "RTT", "JITTER", "MOS",
            "QUALITY", "LEVEL", "RELAY", "REASONS",
        ],
        [
            "adam", "1.23 Mb/s", "45.6 kb/s", "1.2%", "0.0%", "61 ms", "14.7 ms", "1.50",
            "73", "bad", "direct", "-",
        ],
        [
            "zoe", "1.23 Mb/s", "45.6 kb/s", "1.2%", "0.0%", "61 ms", "14.7 ms", "4.21",
            "73", "good", "turn-udp (turn1.example.org)", "loss,rtt",
        ],
    ]  # fmt: skip
    assert "1764000000" not in ANSI.sub("", text).replace("1764000000.0", "")
    assert re.search(r"\x1b\[31mbad\s*\x1b\[0m", text)
    assert ANSI.sub("", text).startswith("meeting standup: 2 participants")

    session.receive(delta("meeting:standup", 6, removed=sorted(entities)))
    assert render(session).startswith("meeting standup is not live")


def test_alert_transitions_are_listed_once_whether_announced_or_replayed() -> None:
    session = TailSession(["meetings", "alerts"], recent_alerts=3)
    session.receive(snapshot("meetings", 1, {"m1": meeting(2, 1e6, "good", alerts=1)}))
    session.receive(snapshot("alerts", 1, {}))
    raised = alert("m1", "p1")
    # Live: the ``alert`` message, then the delta carrying the same transition.
    announced = session.receive(Alert(topic="alerts", epoch=EPOCH, seq=2, alert=raised))
    assert [(u.kind, u.seq, u.alert) for u in announced.updates] == [("alert", 2, raised)]
    carried = session.receive(delta("alerts", 2, changed={raised["id"]: raised}, alerts=[raised]))
    assert [u.kind for u in carried.updates] == ["delta"]
    # A stale ``alert`` message (its delta is applied already) is old news.
    assert not session.receive(Alert(topic="alerts", epoch=EPOCH, seq=2, alert=raised)).updates
    # Replayed after a resume: one merged delta, no ``alert`` message before it.
    cleared = alert("m1", "p1", "cleared", at=1_764_000_009.0)
    other = alert("m2", "p7", at=1_764_000_009.5)
    replayed = session.receive(
        delta(
            "alerts",
            6,
            prev=2,
            changed={other["id"]: other},
            removed=[raised["id"]],
            alerts=[cleared, other],
        )
    )
    assert [(u.kind, u.seq) for u in replayed.updates] == [("alert", 6), ("alert", 6), ("delta", 6)]
    assert list(session.recent) == [raised, cleared, other]

    text = render(session, color=False)
    assert "alerts: 1 open" in text
    lines = text.splitlines()
    at = lines.index("alerts: 1 open")
    assert [line.split()[1:5] for line in lines[at + 1 :]] == [
        ["raised", "warning", "packet_loss", "m1/p1"],
        ["cleared", "warning", "packet_loss", "m1/p1"],
        ["raised", "warning", "packet_loss", "m2/p7"],
    ]
    assert "value 5.25  threshold 1.0" in lines[at + 1]
    coloured = render(session, color=True)
    assert "\x1b[31mraised" in coloured
    assert "\x1b[32mcleared" in coloured

    # The participant view lists only its meeting's alerts.
    view = TailSession(["meeting:m2", "alerts"])
    view.receive(snapshot("alerts", 6, {other["id"]: other}))
    view.receive(Alert(topic="alerts", epoch=EPOCH, seq=7, alert=raised))
    view.receive(Alert(topic="alerts", epoch=EPOCH, seq=7, alert=other))
    shown = render(view)
    assert "alerts: 1 open" in shown
    assert "m2/p7" in shown
    assert "m1/p1" not in shown


def test_a_gap_or_another_epoch_asks_to_resubscribe_and_old_news_is_ignored() -> None:
    session = TailSession(["meetings", "alerts"])
    assert [(s.topic, s.epoch, s.seq) for s in session.subscriptions()] == [
        ("meetings", None, None),
        ("alerts", None, None),
    ]
    session.receive(snapshot("meetings", 4, {"m1": meeting(1, 1e6, "good")}))
    gap = session.receive(delta("meetings", 7, prev=5, changed={"m1": {"participants": 9}}))
    assert not gap.updates
    assert [(s.topic, s.epoch, s.seq) for s in gap.send] == [("meetings", EPOCH, 4)]
    old = session.receive(delta("meetings", 4, prev=3, changed={"m1": {"participants": 8}}))
    assert (old.send, old.updates) == ([], [])
    other_epoch = Delta(topic="meetings", epoch="e2", seq=5, prev=4, at=1.0)
    assert [s.seq for s in session.receive(other_epoch).send] == [4]
    assert session.mirrors["meetings"].entities["m1"]["participants"] == 1
    # After a reconnect each topic resumes where it stands.
    assert [(s.topic, s.epoch, s.seq) for s in session.subscriptions()] == [
        ("meetings", EPOCH, 4),
        ("alerts", None, None),
    ]
    # A topic this session does not hold, a heartbeat, an unavailable channel: no update.
    assert not session.receive(snapshot("http", 1, {"x": {}})).updates
    unavailable = SubscribeError(code="unavailable", detail="redis down", topic="meetings")
    assert session.receive(unavailable).status == "daemon: unavailable (meetings): redis down"
    with pytest.raises(TopicRefused, match="meeting:x"):
        session.receive(SubscribeError(code="unknown_topic", detail="no", topic="meeting:x"))


def test_update_lines_carry_the_whole_state_after_applying() -> None:
    session = TailSession(["meetings", "alerts"])
    session.receive(snapshot("meetings", 1, {"m1": meeting(1, 1e6, "good")}))
    [update] = session.receive(delta("meetings", 2, changed={"m1": {"participants": 2}})).updates
    record = json.loads(update_line(update))
    assert list(record) == ["topic", "epoch", "seq", "at", "kind", "entities"]
    assert record["kind"] == "delta"
    assert record["seq"] == 2
    assert record["entities"] == {"m1": meeting(2, 1e6, "good")}
    raised = alert("m1", "p1")
    line = update_line(Update("alert", "alerts", EPOCH, 3, raised["at"], alert=raised))
    assert json.loads(line) == {
        "topic": "alerts",
        "epoch": EPOCH,
        "seq": 3,
        "at": raised["at"],
        "kind": "alert",
        "alert": raised,
    }


def test_bad_options_exit_2_before_connecting() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["tail", "--meeting", "two words", "--http-port", "1"])
    assert (bad.exit_code, bad.stdout) == (2, "")
    assert bad.stderr == "bwmon tail: 'two words' is not a meeting id\n"
    bad = runner.invoke(app, ["tail", "--encoding", "xml", "--http-port", "1"])
    assert (bad.exit_code, bad.stderr) == (2, "bwmon tail: --encoding is json or msgpack\n")


# -- the connection loop in process, against a real Fanout on loopback --------------------------


async def serve_hub(
    port: int,
    channel: LocalChannel,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's fan-out and HTTP server on ``port`` over ``channel``, until cancelled;
    then it closes its sessions as the daemon does. A channel that outlives it is what Redis
    gives: the next server resumes subscribers from the same epoch."""
    fanout = Fanout(channel, FanoutSettings(), lambda: Auth([]))
    http = HttpServer(
        http_routes={},
        ws_routes={"/subscribe": lambda ws, _request, wire: fanout.serve_session(ws, wire)},
        settings=HttpSettings(request_timeout_s=2),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.serve, fanout.deliver, fanout.on_epoch)
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await nursery.start(http.serve, listeners)
        task_status.started()


class Meetings:
    """The ``meetings`` topic of a channel, published by hand."""

    def __init__(self, channel: LocalChannel) -> None:
        self.channel = channel
        self.state: Entities = {}
        self.at = 1_764_000_000.0

    async def set(self, state: Entities) -> None:
        self.at += 1
        await self.channel.publish([change("meetings", self.state, state)], self.at)
        self.state = state


def lines_of(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_it_resumes_after_the_server_closed_first_and_leaks_nothing(
    nursery: trio.Nursery,
) -> None:
    """The server closes first (trio-websocket's client would leak its socket: with
    ``filterwarnings = error`` a ResourceWarning fails the test); the client reconnects and
    resubscribes from where it stands (MessagePack here), so what it missed comes as one
    merged delta, not a snapshot; ``count`` ends it."""
    port = free_port()
    channel = LocalChannel()
    meetings = Meetings(channel)
    await meetings.set({"m1": meeting(1, 1e6, "good")})
    out, err = io.StringIO(), io.StringIO()
    done = trio.Event()

    async def tail_in_process() -> None:
        options = TailOptions(http_port=port, as_json=True, encoding="msgpack", count=4)
        await run_tail(options, out, err)
        done.set()

    async with trio.open_nursery() as first_server:
        await first_server.start(serve_hub, port, channel)
        nursery.start_soon(tail_in_process)
        await wait_for(lambda: len(lines_of(out)) == 2)
        await meetings.set({"m1": meeting(2, 1e6, "good")})
        await wait_for(lambda: len(lines_of(out)) == 3)
        first_server.cancel_scope.cancel()
    # Missed while away: two deltas.
    await meetings.set({"m1": meeting(3, 1e6, "good")})
    await meetings.set({"m1": meeting(3, 1e6, "good"), "m2": meeting(1, 2e6, "fair")})
    await nursery.start(serve_hub, port, channel)
    with trio.fail_after(5):
        await done.wait()

    records = lines_of(out)
    positions = [(r["topic"], r["kind"], r["seq"]) for r in records]
    assert sorted(positions[:2]) == [("alerts", "snapshot", 0), ("meetings", "snapshot", 1)]
    assert positions[2:] == [("meetings", "delta", 2), ("meetings", "delta", 4)]
    assert {r["epoch"] for r in records} == {channel.epoch}
    assert records[3]["entities"] == meetings.state
    status = err.getvalue().splitlines()
    assert status[0] == f"bwmon tail: connected to ws://127.0.0.1:{port}/subscribe"
    assert status[1] == (
        "bwmon tail: reconnecting… (closed: 1001 daemon shutting down); next try in 0.5 s"
    )
    assert status[-1] == status[0]  # after refused attempts while the first one shut down
    assert all(line.startswith("bwmon tail: reconnecting… (") for line in status[2:-1])


async def test_without_a_terminal_each_batch_is_one_plain_frame(nursery: trio.Nursery) -> None:
    port = free_port()
    channel = LocalChannel()
    meetings = Meetings(channel)
    await meetings.set({"m1": meeting(1, 1e6, "good")})
    await nursery.start(serve_hub, port, channel)
    out, err = io.StringIO(), io.StringIO()
    done = trio.Event()

    async def tail_in_process() -> None:
        await run_tail(TailOptions(http_port=port, count=3), out, err)
        done.set()

    nursery.start_soon(tail_in_process)
    await wait_for(lambda: "live meetings" in out.getvalue())
    await meetings.set({"m1": meeting(2, 1e6, "good")})
    with trio.fail_after(5):
        await done.wait()
    text = out.getvalue()
    assert "\x1b" not in text
    frames = text.count("live meetings")
    assert 2 <= frames <= 3  # two snapshots (one batch, unless the machine is slow), a delta
    last = text[text.rindex("1 live meetings") :]
    assert plain_rows(last, "MEETING")[1][:2] == ["m1", "2"]
    assert text.endswith("alerts: 0 open\n")
    assert "\n\n1 live meetings" in text  # a blank line between frames


async def test_ctrl_c_ends_it_cleanly_and_a_refused_topic_is_an_error(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    channel = LocalChannel()
    await nursery.start(serve_hub, port, channel)
    out, err = io.StringIO(), io.StringIO()
    done = trio.Event()

    async def tail_in_process() -> None:
        await run_tail(TailOptions(http_port=port, as_json=True), out, err)
        done.set()

    nursery.start_soon(tail_in_process)
    await wait_for(lambda: len(lines_of(out)) == 2)
    os.kill(os.getpid(), signal.SIGINT)
    with trio.fail_after(3):
        await done.wait()
    assert err.getvalue() == f"bwmon tail: connected to ws://127.0.0.1:{port}/subscribe\n"

    # An id the daemon refuses (the command checks ids first; this one gets through).
    refused = TailOptions(http_port=port, meeting="two words", duration_s=5)
    with trio.fail_after(3), pytest.raises(TopicRefused, match="'meeting:two words'"):
        await run_tail(refused, io.StringIO(), io.StringIO())


async def test_a_daemon_never_reached_is_an_error_at_the_duration() -> None:
    port = free_port()  # nobody listens there
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(TailError, match=f"could not reach ws://127.0.0.1:{port}/subscribe"):
        await run_tail(TailOptions(http_port=port, as_json=True, duration_s=0.8), out, err)
    assert out.getvalue() == ""
    assert err.getvalue().startswith("bwmon tail: reconnecting… (")


# -- the real command against a real daemon ----------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text('[storage]\nbackend = "none"\n')
    return path


def emit(
    daemon: DaemonProcess, meetings: int, participants: int, seconds: float
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cli.main", "emit", "--udp-port", str(daemon.udp_port)]
    command += ["--meetings", str(meetings), "--participants", str(participants)]
    command += ["--duration", str(seconds), "--seed", str(SEED)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tail(daemon: DaemonProcess, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """``bwmon tail`` as a child. Its pipes are unbuffered: ``readline`` then takes exactly one
    line, and ``communicate`` (which reads the raw pipe) gets all the rest."""
    command = [sys.executable, "-m", "cli.main", "tail", "--http-port", str(daemon.http_port)]
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(
        [*command, *args], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0, **popen
    )


def finish(reader: subprocess.Popen[bytes]) -> tuple[list[dict[str, Any]], str]:
    """The NDJSON lines still to come and the status lines, once the child ends (bounded)."""
    out, err = reader.communicate(timeout=30)
    return [json.loads(line) for line in out.splitlines()], err.decode()


def stop(process: subprocess.Popen[Any]) -> None:
    """Kill the child if it still runs, reap it and close its pipes (on every path)."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def positions_follow_one_by_one(records: list[dict[str, Any]]) -> None:
    """Per topic: a snapshot first, then every snapshot or delta line one seq after the last;
    an alert line carries the seq of the delta that follows it."""
    held: dict[tuple[str, str], int] = {}
    for record in records:
        position = (record["topic"], record["epoch"])
        if record["kind"] == "snapshot":
            held[position] = record["seq"]
        elif record["kind"] == "delta":
            assert held[position] + 1 == record["seq"], record
            held[position] = record["seq"]
        else:
            assert record["seq"] > held[position], record


@pytest.mark.e2e
def test_json_streams_every_update_with_the_whole_state(tmp_path: Path, config: Path) -> None:
    with running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon:
        reader = tail(daemon, "--json", "--duration", "5")
        sender: subprocess.Popen[bytes] | None = None
        try:
            assert reader.stdout is not None
            first = json.loads(reader.stdout.readline())  # connected and subscribed
            sender = emit(daemon, meetings=3, participants=2, seconds=6)
            rest, errors = finish(reader)
        finally:
            stop(reader)
            if sender is not None:
                stop(sender)
    assert reader.returncode == 0, errors
    records = [first, *rest]
    assert first["kind"] == "snapshot"
    assert {r["topic"] for r in records} == {"meetings", "alerts"}
    assert [r["kind"] for r in records[:2]] == ["snapshot", "snapshot"]
    positions_follow_one_by_one(records)
    meetings = [r for r in records if r["topic"] == "meetings"]
    assert meetings[0]["entities"] == {}
    counts = [len(r["entities"]) for r in meetings]
    assert 3 in counts
    assert all(r["kind"] == "delta" for r in meetings[1:])
    last = meetings[-1]["entities"]
    assert sorted(last) == sorted({p.meeting for p in make_participants(3, 2, Profile(seed=SEED))})
    assert {m["participants"] for m in last.values()} == {2}
    assert any(m["up_bps"] and m["up_bps"] > 100_000 for m in last.values())
    assert "connected to ws://127.0.0.1" in errors


def read_terminal(fd: int, process: subprocess.Popen[Any], timeout_s: float) -> bytes:
    """Everything the child writes to its terminal until it exits (bounded)."""
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


@pytest.mark.e2e
def test_on_a_terminal_the_participants_are_drawn_in_colour(tmp_path: Path, config: Path) -> None:
    [first, second] = make_participants(1, 2, Profile(seed=SEED))
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    args = ["--meeting", first.meeting, "--encoding", "msgpack", "--duration", "4"]
    with running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon:
        sender = emit(daemon, meetings=1, participants=2, seconds=6)
        controller, terminal = pty.openpty()
        try:
            reader = tail(daemon, *args, stdout=terminal, env=env)
        finally:
            os.close(terminal)  # the child holds it now: its exit ends the reads below
        try:
            screen = read_terminal(controller, reader, timeout_s=20).decode()
            reader.wait(10)
            assert reader.stderr is not None
            errors = reader.stderr.read().decode()
        finally:
            stop(reader)
            stop(sender)
            os.close(controller)
    assert reader.returncode == 0, errors
    assert screen.startswith(CLEAR_SCREEN)
    frames = screen.split(CLEAR_SCREEN)[1:]
    assert len(frames) >= 2
    last = frames[-1]
    assert f"meeting {first.meeting}: 2 participants" in last
    assert first.participant in last
    assert second.participant in last
    assert re.search(r"\x1b\[3[123]m(excellent|good|fair|poor|bad)\s*\x1b\[0m", screen)
    assert " Mb/s" in last or " kb/s" in last


@pytest.mark.e2e
def test_it_reconnects_to_a_restarted_daemon_and_takes_its_snapshot(
    tmp_path: Path, config: Path
) -> None:
    daemon = start_daemon(tmp_path / "d1.log", ["--config", str(config)])
    restarted: DaemonProcess | None = None
    # Two snapshots from each daemon end it (nothing is sent, so no delta comes between); the
    # duration only bounds a run that would otherwise wait for ever, and the timeout lets a
    # slow machine take its time to start the second daemon.
    reader = tail(daemon, "--json", "--count", "4", "--duration", "20", "--timeout", "20")
    try:
        assert reader.stdout is not None
        first = json.loads(reader.stdout.readline())
        assert daemon.stop() == 0
        ports = ["--http-port", str(daemon.http_port), "--udp-port", str(daemon.udp_port)]
        restarted = start_daemon(tmp_path / "d2.log", ["--config", str(config), *ports])
        new_epoch = restarted.health()["fanout"]["epoch"]
        rest, errors = finish(reader)
    finally:
        stop(reader)
        daemon.stop()
        if restarted is not None:
            restarted.stop()
    assert reader.returncode == 0, errors
    records = [first, *rest]
    assert first["epoch"] != new_epoch
    after = [r for r in records if r["epoch"] == new_epoch]
    assert sorted((r["topic"], r["kind"]) for r in after[:2]) == [
        ("alerts", "snapshot"),
        ("meetings", "snapshot"),
    ]
    positions_follow_one_by_one(records)
    status = errors.splitlines()
    assert status[0].startswith("bwmon tail: connected")
    assert "bwmon tail: reconnecting… (closed: 1001 daemon shutting down)" in status[1]
    assert status[-1].startswith("bwmon tail: connected")


@pytest.mark.e2e
def test_with_tokens_required_it_reads_with_a_token_and_exits_2_without(tmp_path: Path) -> None:
    key = "tail-test-key-" + "t" * 20
    config = tmp_path / "collector.toml"
    config.write_text(f'[storage]\nbackend = "none"\n[auth]\ntoken_secrets = ["{key}"]\n')
    with running_daemon(tmp_path / "d.log", ["--config", str(config)]) as daemon:
        refused = tail(daemon, "--json", "--duration", "5")
        try:
            records, errors = finish(refused)
        finally:
            stop(refused)
        assert refused.returncode == 2
        assert records == []
        assert "unauthorized" in errors
        good = mint(key, Claims(rights=["read"], exp=int(time.time()) + 60))
        reader = tail(daemon, "--json", "--count", "2", env={**os.environ, "BWMON_TOKEN": good})
        try:
            records, errors = finish(reader)
        finally:
            stop(reader)
    assert reader.returncode == 0, errors
    assert sorted((r["topic"], r["kind"]) for r in records) == [
        ("alerts", "snapshot"),
        ("meetings", "snapshot"),
    ]
    assert good not in errors
