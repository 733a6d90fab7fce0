"""The calls of the browser tests, driven from Python: which paths each case takes, the local
HTTP server of the call page, and ``Call``, the page's functions (tests/browser/page/call.js)
behind typed methods.

A call is two ``RTCPeerConnection``s in one page, side ``a`` (the offerer) and side ``b``. Each
side's path is ``direct`` (no ICE server: host candidates on loopback) or ``udp``/``tcp``
(``iceTransportPolicy: "relay"`` through the test's coturn over that transport). The
``RESTART`` call starts as ``one-side`` (a relayed over UDP) and moves to the direct pair at an
ICE restart that lets side a use host candidates (``Call.restart_ice``). The page is served from
127.0.0.1, a secure context, so that ``getUserMedia`` gives the fake devices.
"""

from __future__ import annotations

import functools
import http.server
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.bench.chromium import serving_http
from tests.browser.turn import TurnServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PAGE_DIR = Path(__file__).parent / "page"
SIDES = ("a", "b")


@dataclass(frozen=True)
class Case:
    """A call's paths: side a's and side b's."""

    name: str
    a: str
    b: str

    def path(self, side: str) -> str:
        return self.a if side == "a" else self.b

    def relayed(self, side: str) -> bool:
        return self.path(side) != "direct"

    def peer(self, side: str) -> str:
        return "b" if side == "a" else "a"


CASES = {
    case.name: case
    for case in (
        Case("direct", "direct", "direct"),
        Case("turn-udp", "udp", "udp"),
        Case("turn-tcp", "tcp", "tcp"),
        # only a relays: b sees a relayed remote from its own host candidate
        Case("one-side", "udp", "direct"),
    )
}


# The paths before the restart; after it, both sides are direct.
RESTART = Case("ice-restart", "udp", "direct")


def rtc_configuration(path: str, turn: TurnServer) -> dict[str, Any]:
    """The ``RTCConfiguration`` of one side's path."""
    if path == "direct":
        return {}
    return {"iceTransportPolicy": "relay", "iceServers": [turn.ice_server(path)]}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving_pages(directory: Path = PAGE_DIR) -> Iterator[str]:
    """A static HTTP server of ``directory`` on a free loopback port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with serving_http(handler, "call-pages") as base:
        yield base


@dataclass
class Call:
    """The call page of one browser context."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def start(self, case: Case, turn: TurnServer) -> None:
        """Connects a and b on the case's paths; returns once media flows both ways."""
        config = {side: rtc_configuration(case.path(side), turn) for side in SIDES}
        self.page.evaluate("config => window.call.start(config)", config)

    def stats(self, side: str) -> list[dict[str, Any]]:
        """One getStats() report of ``side``: its stats objects, as the browser gives them."""
        report: list[dict[str, Any]] = self.page.evaluate("side => window.call.stats(side)", side)
        return report

    def path(self, side: str) -> dict[str, Any]:
        """The selected pair of ``side``: ``pair`` id, ``local`` and ``remote`` candidate
        types, the local candidate's ``relayProtocol``."""
        selected: dict[str, Any] = self.page.evaluate("side => window.call.path(side)", side)
        return selected

    def restart_ice(self, turn: TurnServer) -> None:
        """An ICE restart after which side a may also use host candidates (its TURN server
        kept); returns once both sides use a new, direct pair: the ``RESTART`` call's switch."""
        config = {"iceTransportPolicy": "all", "iceServers": [turn.ice_server(RESTART.a)]}
        self.page.evaluate("config => window.call.restartIce(config)", config)


@contextmanager
def open_call(browser: Browser, pages_url: str) -> Iterator[Call]:
    """A new browser context on the call page; closed (and its call ended) on exit."""
    context = browser.new_context()
    try:
        page = context.new_page()
        call = Call(page)
        page.on("pageerror", lambda error: call.errors.append(str(error)))
        page.goto(f"{pages_url}/call.html")
        page.wait_for_function("window.callReady === true")
        yield call
    finally:
        context.close()
