"""Headless Chromium for the browser client's benchmark and tests: Debian's system browser
driven by Playwright (a dev dependency), never a browser Playwright downloads.

``serving_http`` serves the pages Chromium opens from a loopback origin (a secure context for
``getUserMedia``, and one Chromium lets reach the daemon, which a page Playwright routes is
not). ``launch_chromium`` yields a Playwright ``Browser`` started with the flags a closed loopback
machine needs: no sandbox (root in CI), no background networking (its connections are refused
here), loopback peer connections allowed (WebRTC calls between two pages of one machine), and
fake media devices so that ``getUserMedia`` gives audio and video without a camera. With
``deadline_s`` it kills the browser that is still running that long after its launch: a
Playwright call has no timeout of its own (``evaluate``, a CDP command), and one that the browser
never answers would hang its caller for good; killed, the call raises, and ``ChromiumStalled``
says so.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from protocol.errors import BwmonError

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)


class ChromiumMissing(BwmonError):
    """No system Chromium, or no Playwright to drive it."""


class ChromiumStalled(BwmonError):
    """The browser was still running at its deadline: killed, and its caller's call failed."""


def chromium_path() -> str:
    """The system Chromium: $BWMON_CHROMIUM, else `chromium` on PATH."""
    path = os.environ.get("BWMON_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise ChromiumMissing(
            "no Chromium found: install Debian's package (apt-get install chromium) "
            "or set BWMON_CHROMIUM to the browser's path"
        )
    return path


def kill_processes(marker: str) -> int:
    """SIGKILL every process whose command line has the argument ``marker``; how many."""
    killed = 0
    with contextlib.suppress(OSError):
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if marker.encode() not in file.read().split(b"\0"):
                        continue
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return killed


@contextlib.contextmanager
def launch_chromium(*extra_args: str, deadline_s: float | None = None) -> Iterator[Browser]:
    """A headless system Chromium, closed on exit; killed if it still runs ``deadline_s``
    after its launch (the module docstring says why)."""
    # Imported when a browser is asked for: Playwright is a dev dependency, and every `bwmon`
    # command imports this module (cli.bench.commands) before it knows which one runs.
    try:
        sync_playwright = importlib.import_module("playwright.sync_api").sync_playwright
    except ImportError:
        raise ChromiumMissing(
            "Playwright is not installed: pip install -e '.[dev]' (it drives the system "
            "Chromium; no browser is downloaded)"
        ) from None
    path = chromium_path()
    # An argument Chromium ignores, to find this browser's process by (Playwright keeps it).
    marker = f"--bwmon-browser={secrets.token_hex(8)}"
    killed = threading.Event()

    def stop() -> None:
        if kill_processes(marker):
            killed.set()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *extra_args, marker]
        )
        timer = None
        if deadline_s is not None:
            timer = threading.Timer(deadline_s, stop)
            timer.daemon = True
            timer.start()
        try:
            yield browser
        except Exception as exc:
            if killed.is_set():
                raise ChromiumStalled(
                    f"the browser was still running {deadline_s:g} s after its launch, and "
                    f"killed: a call to it had not returned ({exc.__class__.__name__})"
                ) from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
            browser.close()


@contextlib.contextmanager
def serving_http(
    handler: Callable[..., http.server.BaseHTTPRequestHandler], name: str
) -> Iterator[str]:
    """An HTTP server of ``handler`` on a free loopback port, in a thread, stopped on exit;
    yields its base URL (``http://127.0.0.1:PORT``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
