"""``bwmon tail`` and ``bwmon top`` in a real terminal: tmux sessions of a fixed size, keys
sent with ``send-keys``, the screen read with ``capture-pane``, against a real daemon (MariaDB
storage, Redis fan-out) fed by ``bwmon emit``.

The screen is read with ``capture-pane -J``, which joins a wrapped line to the next: a line
longer than the pane is a line that wrapped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.console import natural_key
from cli.daemon_process import DaemonProcess, running_daemon
from cli.main import app
from cli.synthetic import Profile, make_participants
from tests.helpers import free_port, redis_server, scratch_database

pytestmark = pytest.mark.e2e

GOOD_SEED = 1
BAD_SEED = 2
GOOD_MEETINGS = 12  # ids up to -11: numbers sort as numbers, -2 before -10
BAD_MEETING = make_participants(1, 2, Profile(seed=BAD_SEED))[0].meeting
GOOD_IDS = sorted({p.meeting for p in make_participants(GOOD_MEETINGS, 2, Profile(seed=GOOD_SEED))})
WAIT_S = 15.0

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@dataclass
class Fed:
    """A daemon, and the emitters that feed it once ``feed`` was called."""

    daemon: DaemonProcess
    emitters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def feed(self) -> None:
        if self.emitters:
            return
        port = str(self.daemon.udp_port)
        base = [sys.executable, "-m", "cli.main", "emit", "--udp-port", port, "--duration", "60"]
        good = ["--meetings", str(GOOD_MEETINGS), "--participants", "2", "--seed", str(GOOD_SEED)]
        good += ["--relay-share", "0", "--http-routes", "3"]
        bad = ["--meetings", "1", "--participants", "2", "--seed", str(BAD_SEED), "--loss", "0.3"]
        bad += ["--rtt-ms", "800", "--relay-share", "1", "--http-routes", "0"]
        for args in (good, bad):
            self.emitters.append(
                subprocess.Popen(
                    [*base, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("console")
    with ExitStack() as stack:
        database = stack.enter_context(scratch_database())
        redis_port = free_port()
        stack.enter_context(redis_server(redis_port))
        config = tmp / "collector.toml"
        config.write_text(
            "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
            f"mysql_database = '{database}'\nstate_dir = '{tmp}'\nflush_interval_s = 1.0\n"
            f"[fanout]\nredis_url = 'redis://127.0.0.1:{redis_port}/0'\n"
            f"redis_key_prefix = 'bwmon-console-{secrets.token_hex(4)}'\n"
        )
        daemon = stack.enter_context(running_daemon(tmp / "d.log", ["--config", str(config)]))
        fed = Fed(daemon)
        try:
            yield fed
        finally:
            for emitter in fed.emitters:
                emitter.kill()
                emitter.wait(10)


class Pane:
    """One command in a detached tmux session on a server of its own (``-L``), so that the
    user's tmux and its configuration play no part."""

    def __init__(self, command: list[str], width: int, height: int) -> None:
        self.server = f"bwmon-test-{secrets.token_hex(4)}"
        self.session = "console"
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX")}
        env["TERM"] = "xterm-256color"
        self.env = env
        # The shell that runs the command writes its exit status to a file: tmux may mark the
        # pane dead without ever filling in #{pane_dead_status} (seen with tmux 3.3a).
        self.status_file = Path(tempfile.mkdtemp(prefix="bwmon-pane-")) / "status"
        line = " ".join(_quote(arg) for arg in command)
        line = f"{line}; echo $? > {_quote(str(self.status_file))}"
        self._tmux(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), line
        )
        self._tmux("set-option", "-t", self.session, "remain-on-exit", "on")
        self.width = width

    def _tmux(self, *args: str) -> str:
        command = ["tmux", "-L", self.server, "-f", os.devnull, *args]
        done = subprocess.run(command, capture_output=True, env=self.env, timeout=10, check=True)
        return done.stdout.decode()

    def screen(self) -> list[str]:
        return self._tmux("capture-pane", "-p", "-J", "-t", self.session).splitlines()

    def keys(self, *keys: str) -> None:
        for key in keys:
            self._tmux("send-keys", "-t", self.session, key)
            time.sleep(0.05)  # a lone Escape is told from a sequence by a pause

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))
        self.width = width

    def wait(self, predicate: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + WAIT_S
        lines = self.screen()
        while not predicate(lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on screen after {WAIT_S} s:\n" + "\n".join(lines))
            time.sleep(0.1)
            lines = self.screen()
        assert all(len(line) <= self.width for line in lines), lines  # nothing wrapped
        return lines

    def exit_status(self) -> int | None:
        """The command's exit status once it ended (None: still running after the wait)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self.status_file.read_text())
            time.sleep(0.1)
        return None

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.server, "kill-server"],
            capture_output=True,
            env=self.env,
            check=False,
        )
        shutil.rmtree(self.status_file.parent, ignore_errors=True)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def bwmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def rows(lines: list[str]) -> list[str]:
    """The first cell of each table row: the lines after the header, up to the blank line."""
    at = next(
        i
        for i, line in enumerate(lines)
        if line.split()[:1] in (["MEETING"], ["PARTICIPANT"], ["ROUTE"])
    )
    out = []
    for line in lines[at + 1 :]:
        if not line.strip():
            break
        out.append(line.split()[0])
    return out


def ago(lines: list[str]) -> int | None:
    match = re.search(r"updated (\d+) s ago", lines[0]) if lines else None
    return int(match.group(1)) if match else None


@needs_tmux
@pytest.mark.slow
def test_tail_console_in_a_real_terminal(fed: Fed) -> None:
    pane = Pane(bwmon("tail", "--http-port", str(fed.daemon.http_port)), 100, 30)
    try:
        # Quiet daemon: the clock keeps ticking.
        first = pane.wait(lambda s: "0 live meetings" in s[0] and ago(s) is not None, "clock")
        start = ago(first)
        assert start is not None
        pane.wait(lambda s: (ago(s) or 0) >= start + 2, "a clock that advances")

        fed.feed()
        everyone = GOOD_MEETINGS + 1
        lines = pane.wait(
            lambda s: f"{everyone} live meetings" in s[0] and rows(s)[:1] == [BAD_MEETING],
            "the bad meeting first",
        )
        assert rows(lines)[1:]
        assert set(rows(lines)[1:]) <= set(GOOD_IDS)
        assert "RELAY COST" in lines[2]  # 100 columns: every column

        pane.keys("s")  # by id, numbers as numbers
        lines = pane.wait(lambda s: "sort: id" in s[1], "sort by id")
        by_id = rows(lines)
        assert by_id == sorted(by_id, key=natural_key)
        assert by_id[-1] != by_id[0]
        assert [m for m in by_id if m in GOOD_IDS] == sorted(GOOD_IDS, key=natural_key)
        assert by_id.index(GOOD_IDS[0][:-1] + "2") < by_id.index(GOOD_IDS[0][:-1] + "10")
        pane.keys("r")
        pane.wait(lambda s: rows(s) == by_id[::-1], "the order reversed")
        pane.keys(*["s"] * 7)  # the cycle back to worst first
        pane.wait(lambda s: "sort: worst first" in s[1] and rows(s)[0] == BAD_MEETING, "worst")

        eleven = GOOD_IDS[0][:-1] + "11"
        pane.keys("/", *"-11", "Enter")
        pane.wait(lambda s: rows(s) == [eleven] and "1 of 13 shown" in s[1], "the filter")
        pane.keys("Escape")
        pane.wait(lambda s: len(rows(s)) == everyone, "the filter cleared")
        pane.keys("t")
        pane.wait(lambda s: rows(s) == [BAD_MEETING] and "TURN only" in s[1], "TURN only")
        pane.keys("t", "l")
        pane.wait(lambda s: rows(s) == [BAD_MEETING] and "level: bad" in s[1], "the level band")
        pane.keys("Escape")
        pane.wait(lambda s: len(rows(s)) == everyone, "the band cleared")

        pane.keys("Down", "Enter")
        lines = pane.wait(
            lambda s: f"meeting {BAD_MEETING}: 2 participants" in s[0] and len(rows(s)) == 2,
            "the opened meeting",
        )
        assert sorted(rows(lines)) == ["p-0-0", "p-0-1"]
        pane.keys("t")  # both relayed, as sent
        pane.wait(lambda s: "TURN only" in s[1] and len(rows(s)) == 2, "relayed participants")
        pane.keys("Escape")  # clears the filter
        pane.wait(lambda s: "TURN only" not in s[1], "the participants' filter cleared")
        pane.keys("Escape")
        pane.wait(lambda s: "live meetings" in s[0], "back to the meetings")
        pane.keys("Enter")  # the selection stayed on the bad meeting
        pane.wait(lambda s: f"meeting {BAD_MEETING}" in s[0], "opened again")
        pane.keys("BSpace")
        pane.wait(lambda s: "live meetings" in s[0], "back with Backspace")

        pane.keys("h")
        lines = pane.wait(lambda s: "3 HTTP routes" in s[0] and len(rows(s)) == 3, "HTTP routes")
        assert "P99" in lines[2]
        assert "REQ/S" in lines[2]
        pane.keys("Tab")
        pane.wait(lambda s: "live meetings" in s[0], "back from HTTP")

        pane.resize(60, 20)
        lines = pane.wait(lambda s: "RELAY COST" not in s[2] and "MEETING" in s[2], "60 columns")
        assert rows(lines)[0] == BAD_MEETING
        assert len(lines) <= 20

        pane.keys("q")
        assert pane.exit_status() == 0
    finally:
        pane.close()


@needs_tmux
@pytest.mark.slow
def test_top_and_a_lost_daemon_in_a_real_terminal(fed: Fed) -> None:
    fed.feed()
    top = Pane(bwmon("top", "--http-port", str(fed.daemon.http_port)), 100, 30)
    tail: Pane | None = None
    try:

        def frames_flow(lines: list[str]) -> bool:
            udp = next((line.split() for line in lines if line.startswith("udp ")), None)
            return udp is not None and udp[1] not in ("-", "0.0")

        lines = top.wait(frames_flow, "UDP frames/s")
        text = "\n".join(lines)
        assert "FRAMES/S" in text
        assert "kernel drops" in text
        assert "storage mysql" in text
        assert "fanout redis" in text
        assert "loop lag" in text
        assert "subscribers" in text
        assert ago(lines) is not None
        top.resize(60, 20)
        top.wait(lambda s: "REJECTED/S" in "\n".join(s) and "MESSAGES/S" not in "\n".join(s), "60")

        samples = subprocess.run(
            bwmon("top", "--http-port", str(fed.daemon.http_port), "--json", "--count", "2"),
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
        first, second = (json.loads(line) for line in samples)
        assert first["transports"]["udp"]["frames_per_s"] is None  # no difference yet
        assert second["transports"]["udp"]["frames_per_s"] > 0
        assert second["storage"]["backend"] == "mysql"

        tail = Pane(bwmon("tail", "--http-port", str(fed.daemon.http_port)), 60, 20)
        tail.wait(lambda s: "live meetings" in s[0], "the tail console")
        fed.daemon.stop()
        tail.wait(lambda s: "reconnecting…" in s[0], "reconnecting…")
        top.wait(lambda s: "unreachable" in s[0], "unreachable")
        top.keys("q")
        assert top.exit_status() == 0
    finally:
        top.close()
        if tail is not None:
            tail.close()


@pytest.mark.parametrize("command", ["tail", "top"])
def test_json_count_against_a_dead_port_fails_within_the_timeout(command: str) -> None:
    port = free_port()  # nobody listens there
    started = time.monotonic()
    args = [command, "--http-port", str(port), "--json", "--count", "1", "--timeout", "0.5"]
    result = CliRunner().invoke(app, args)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert f"bwmon {command}: no answer from " in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert elapsed < 10  # the timeout, and a slow machine
