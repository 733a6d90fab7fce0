"""The dashboard on a daemon that requires tokens: the page asks for a read token, refuses a
wrong one with the daemon's reason and asks again, and with a read token reads ``/subscribe``
(the meetings show) and ``/api`` (with ``Authorization: Bearer``); the token is kept for the
tab (sessionStorage), and a stale one is refused again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from cli.daemon_process import DaemonProcess, running_daemon
from protocol.tokens import Claims, mint
from tests.browser.dashboard.conftest import Feeder, Watched

pytestmark = pytest.mark.browser

KEY = "dashboard-token-key-" + "k" * 20
OTHER_KEY = "another-daemons-key-" + "o" * 20


def token(*rights: str, key: str = KEY) -> str:
    return mint(key, Claims(rights=list(rights), exp=int(time.time()) + 600))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("tokens")
    config = tmp / "collector.toml"
    config.write_text(
        f"[storage]\nbackend = 'none'\nstate_dir = '{tmp}'\n[auth]\ntoken_secrets = ['{KEY}']\n"
    )
    with running_daemon(tmp / "daemon.log", ["--config", str(config)]) as running:
        feeder = Feeder(running.udp_port)
        try:
            yield running
        finally:
            feeder.stop()


def test_a_wrong_token_is_refused_and_a_read_token_works(
    daemon: DaemonProcess, watched: Watched
) -> None:
    page = watched.page
    url = f"http://127.0.0.1:{daemon.http_port}/"
    page.goto(url)
    dialog = page.locator("#login")
    expect(dialog).to_be_visible(timeout=10_000)
    expect(dialog).to_contain_text("requires an access token")
    expect(page.locator("#login-token")).to_be_focused()
    assert page.locator(".vrow:not([hidden])").count() == 0

    page.fill("#login-token", token("read", key=OTHER_KEY))
    page.click("#login-form button[type=submit]")
    error = page.locator("#login-error")
    expect(error).to_contain_text("Refused: unauthorized")
    expect(dialog).to_be_visible()

    page.fill("#login-token", token("ingest"))
    page.click("#login-form button[type=submit]")
    expect(error).to_contain_text("Refused: forbidden")
    expect(dialog).to_be_visible()

    reader = token("read")
    page.fill("#login-token", reader)
    with page.expect_response(lambda r: "/api/alerts" in r.url) as alerts:
        page.click("#login-form button[type=submit]")
    expect(dialog).to_be_hidden()
    assert alerts.value.status == 200
    assert alerts.value.request.headers["authorization"] == f"Bearer {reader}"
    expect(page.locator(".vrow a", has_text="standup")).to_be_visible(timeout=10_000)  # /subscribe
    expect(page.locator("#banner")).to_be_hidden()

    page.reload()  # the token is kept for the tab
    expect(page.locator(".vrow a", has_text="standup")).to_be_visible(timeout=10_000)
    expect(dialog).to_be_hidden()

    page.evaluate(f"sessionStorage.setItem('bwmon.token', '{token('read', key=OTHER_KEY)}')")
    page.reload()
    expect(dialog).to_be_visible(timeout=10_000)
    expect(error).to_contain_text("Refused:")
    # Without storage, the relay cost of the meetings ended today cannot be read: said once.
    ended = [e for e in watched.errors if "/api/export?what=meetings" in e]
    assert len(ended) <= 6  # once per page load (a response and its console line)
    watched.errors[:] = [e for e in watched.errors if e not in ended]
