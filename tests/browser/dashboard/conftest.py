"""Fixtures of the dashboard's browser tests: a real daemon (MariaDB storage, one quick alert
rule) fed over UDP by ``bwmon emit`` (many meetings and HTTP routes) and by ``Feeder`` (a few
meetings whose RTT a test sets, to raise and clear an alert), and a page of the system Chromium
at 1366 by 768 per test, whose console errors and failed requests fail the test (but the charts
module, which this branch does not ship)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from cli.daemon_process import DaemonProcess, start_daemon
from protocol import encode_msgpack
from tests.helpers import rtc, video_gauges

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
RULE = (
    "[alerts]\nuse_default_rules = false\n"
    "[[alerts.rules]]\nname = 'slow_rtt'\nmetric = 'rtt_ms'\n"
    "raise_threshold = 100\nclear_threshold = 90\n"
    "raise_count = 2\nraise_window = 2\nclear_count = 2\nclear_window = 2\n"
)
FED = {"standup": ("alice", "bob"), "design-review": ("carol",)}
# Failed requests a test may see: the charts module is dash-meeting's (not on every branch).
EXPECTED_MISSING = ("/ui/charts.js",)


class Feeder:
    """rtc samples of ``FED`` four times a second over UDP, each participant's RTT as
    ``rtt_ms`` says (40 ms unless a test sets it), from a thread until ``stop``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rtt_ms: dict[str, float] = {}
        self.meetings = dict(FED)
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self._stop.wait(0.25):
                self.seq += 1
                for meeting, people in list(self.meetings.items()):
                    for person in people:
                        frame = msgspec.structs.replace(
                            rtc(self.seq, meeting, person),
                            rtt_ms=self.rtt_ms.get(person, 40.0),
                            audio_bytes_received=4_000 * self.seq,
                            video_bytes_received=150_000 * self.seq,
                            **video_gauges(),
                        )
                        with contextlib.suppress(OSError):  # the daemon may be restarting
                            sock.sendto(encode_msgpack(frame), ("127.0.0.1", self.port))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Dashboard:
    """The daemon under test, its feeders, and how to restart it on the same ports."""

    daemon: DaemonProcess
    feeder: Feeder
    config: Path
    log_dir: Path
    emitter: subprocess.Popen[bytes]
    restarts: list[DaemonProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    def restart(self) -> None:
        ports = ["--udp-port", str(self.daemon.udp_port), "--http-port", str(self.daemon.http_port)]
        assert self.daemon.stop() == 0
        self.daemon = start_daemon(
            self.log_dir / f"daemon-{len(self.restarts) + 2}.log",
            ["--config", str(self.config), *ports],
        )
        self.restarts.append(self.daemon)


def emit(daemon: DaemonProcess, meetings: int, seconds: float) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cli.main", "emit", "--udp-port", str(daemon.udp_port)]
    command += ["--meetings", str(meetings), "--participants", "3", "--interval", "1"]
    command += ["--duration", str(seconds), "--seed", "26", "--relay-share", "0.3"]
    command += ["--rtt-ms", "30"]  # below the alert rule: the only alerts are the tests'
    command += ["--http-routes", "6"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A daemon with MariaDB storage (a scratch database), fed until the module ends."""
    from tests.browser.database import query
    from tests.helpers import scratch_database

    tmp = tmp_path_factory.mktemp("dashboard")
    with scratch_database(query) as database:
        config = tmp / "collector.toml"
        config.write_text(
            "[storage]\nbackend = 'mysql'\nmysql_user = 'root'\n"
            f"mysql_database = '{database}'\nstate_dir = '{tmp}'\nflush_interval_s = 0.5\n" + RULE
        )
        daemon = start_daemon(tmp / "daemon-1.log", ["--config", str(config)])
        feeder = Feeder(daemon.udp_port)
        emitter = emit(daemon, 40, 300)
        dash = Dashboard(daemon, feeder, config, tmp, emitter)
        try:
            yield dash
        finally:
            emitter.kill()
            emitter.wait()
            feeder.stop()
            dash.daemon.stop()


@dataclass
class Watched:
    page: Page
    errors: list[str]


@contextlib.contextmanager
def watched_page(browser: Browser) -> Iterator[Watched]:
    """A page at 1366 by 768 in a fresh context (its own sessionStorage), recording console
    errors and failed requests but the expected ones."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []

    def console(message: object) -> None:
        if getattr(message, "type", "") == "error":
            url = str(getattr(message, "location", {}).get("url", ""))
            text = str(getattr(message, "text", ""))
            expected = text.startswith("Failed to load resource") and url.endswith(EXPECTED_MISSING)
            refusal = "401" in text or "403" in text  # refusals the page shows itself
            if not expected and not refusal:
                errors.append(f"console: {text} ({url})")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on(
        "response",
        lambda response: (
            errors.append(f"{response.status} {response.url}")
            if response.status >= 400
            and response.status not in (401, 403)
            and not response.url.endswith(EXPECTED_MISSING)
            else None
        ),
    )
    try:
        yield Watched(page, errors)
    finally:
        context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    with watched_page(browser) as opened:
        yield opened
    assert opened.errors == []
