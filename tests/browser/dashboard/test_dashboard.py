"""The dashboard (``/``) in the system Chromium against the real daemon: the meetings show
live; the table is driven from the keyboard; level badges carry text and shape; an alert
raised and cleared reaches the feed; an export button's file equals ``/api/export`` for the
same filter; the page rides out a daemon restart (banner, then fresh data); screenshots of
the main views for the README. Tokens: ``test_dashboard_tokens.py``."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.dashboard.conftest import Dashboard, Watched

pytestmark = pytest.mark.browser

MEETINGS = re.compile(r"^4[2-4] of 4[2-4] meetings$")
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


def wait_until(condition: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def open_overview(dashboard: Dashboard, watched: Watched) -> None:
    page = watched.page
    page.goto(dashboard.url + "/")
    # bwmon emit's 40 meetings and the feeder's two (and those the tests below add)
    expect(page.locator("#count")).to_have_text(MEETINGS, timeout=15_000)


def test_the_page_loads_at_the_root_and_shows_the_live_meetings(
    dashboard: Dashboard, watched: Watched
) -> None:
    open_overview(dashboard, watched)
    page = watched.page
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator('[data-card="meetings"]')).to_have_text("42")
    rows = page.locator(".vrow:not([hidden])").count()
    assert 0 < rows <= 42  # only what is visible, and the overscan
    people = page.locator('.vhead button[data-sort="participants"]')
    people.click()
    expect(page.locator('.vhead [aria-sort="descending"]')).to_have_text("People")
    counts = page.evaluate(
        "[...document.querySelectorAll('.vrow:not([hidden])')]"
        ".sort((a, b) => a.dataset.index - b.dataset.index)"
        ".map(row => Number(row.children[3].textContent))"
    )
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == 3  # bwmon emit's meetings have 3 participants, the feeder's fewer
    people.click()
    expect(page.locator('.vhead [aria-sort="ascending"]')).to_have_text("People")
    page.fill("#search", "design")
    expect(page.locator("#count")).to_have_text("1 of 42 meetings")
    expect(page.locator(".vrow:not([hidden]) a")).to_have_text(["design-review"])


def test_the_table_is_driven_from_the_keyboard_and_enter_opens_a_meeting(
    dashboard: Dashboard, watched: Watched
) -> None:
    open_overview(dashboard, watched)
    page = watched.page
    page.keyboard.press("Tab")
    expect(page.locator("#skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    page.click('.vhead button[data-sort="id"]')  # by id: a stable order while data moves
    ids = json.loads(get(dashboard.url + "/api/meetings"))["ids"]  # by id too
    assert ids[-1] == "standup"
    page.locator(".vbody").focus()
    focused = page.locator(".vrow.focused a")
    expect(focused).to_have_text(ids[0])
    page.keyboard.press("ArrowDown")
    expect(focused).to_have_text(ids[1])
    page.keyboard.press("End")
    expect(focused).to_have_text("standup")  # the last by id
    page.keyboard.press("Home")
    expect(focused).to_have_text(ids[0])
    page.keyboard.press("PageDown")
    assert page.evaluate("document.querySelector('.vrow.focused').dataset.index") != "0"
    page.keyboard.press("PageUp")
    expect(focused).to_have_text(ids[0])
    page.keyboard.press("End")
    page.keyboard.press("ArrowUp")
    expect(focused).to_have_text(ids[-2])
    page.keyboard.press("ArrowDown")
    expect(focused).to_have_text("standup")
    page.keyboard.press("Enter")
    expect(page).to_have_url(dashboard.url + "/#/meeting/standup")
    expect(page.locator("#meeting-id")).to_have_text("standup")
    expect(page.locator("#people th[scope=row]")).to_have_text(["alice", "bob"], timeout=10_000)
    expect(page.get_by_role("combobox", name="Chart range")).to_be_visible()  # charts.js mounted
    expect(page.locator("#main")).to_be_focused()  # the new view's start
    page.go_back()  # the overview as it was left: sorted by id, standup focused
    expect(page.locator('.vhead [aria-sort="ascending"]')).to_have_text("Meeting")
    expect(focused).to_have_text("standup")


def test_level_badges_carry_text_and_a_shape_not_colour_only(
    dashboard: Dashboard, watched: Watched
) -> None:
    open_overview(dashboard, watched)
    page = watched.page
    expect(page.locator(".vrow .badge").first).not_to_have_text("unknown", timeout=15_000)
    badges = page.evaluate(
        """[...document.querySelectorAll('.badge')].map(b => ({
             level: b.dataset.level, text: b.textContent,
             shape: getComputedStyle(b, '::before').content,
             colour: getComputedStyle(b).backgroundColor}))"""
    )
    assert len(badges) > 12
    shapes: dict[str, set[str]] = {}
    colours: dict[str, set[str]] = {}
    for badge in badges:
        assert badge["text"] == badge["level"]
        assert badge["shape"] not in ("none", "normal", '""')
        shapes.setdefault(badge["level"], set()).add(badge["shape"])
        colours.setdefault(badge["level"], set()).add(badge["colour"])
    assert set(shapes) == {"excellent", "good", "fair", "poor", "bad", "unknown"}
    assert all(len(found) == 1 for found in shapes.values())
    assert len({next(iter(found)) for found in shapes.values()}) == 6  # a shape per level
    assert len({next(iter(found)) for found in colours.values()}) == 6


def test_a_raised_and_a_cleared_alert_appear_in_the_feed(
    dashboard: Dashboard, watched: Watched
) -> None:
    page = watched.page
    page.goto(dashboard.url + "/#/alerts")
    expect(page.locator("#feed-title")).to_be_visible()
    dashboard.feeder.rtt_ms["alice"] = 400.0
    raised = page.locator("#feed .event.raised", has_text="slow_rtt")
    expect(raised.filter(has_text="alice")).to_have_count(1, timeout=15_000)
    expect(page.locator("#open")).to_contain_text("slow_rtt")
    dashboard.feeder.rtt_ms["alice"] = 20.0
    cleared = page.locator("#feed .event.cleared", has_text="slow_rtt")
    expect(cleared.filter(has_text="alice")).to_have_count(1, timeout=15_000)
    expect(cleared.first.locator(".state")).to_have_text("cleared")
    expect(page.locator("#open-empty")).to_be_visible()


def test_an_export_button_downloads_what_the_api_exports_for_the_same_filter(
    dashboard: Dashboard, watched: Watched
) -> None:
    page = watched.page

    # A stored and cleared alert of standup (the test above leaves one): rows that stay put.
    def stored() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = json.loads(
            get(dashboard.url + "/api/export?what=alerts&format=json&meeting=standup")
        )
        return rows

    if not stored():
        dashboard.feeder.rtt_ms["alice"] = 400.0
        wait_until(lambda: bool(stored()))
        dashboard.feeder.rtt_ms["alice"] = 20.0
    wait_until(lambda: all(row["cleared_at"] is not None for row in stored()))
    page.goto(dashboard.url + "/#/meeting/standup")
    slot = page.locator(".export-slot")
    slot.locator("select").first.select_option("alerts")
    for format_ in ("csv", "json"):
        with (
            page.expect_download() as download,
            page.expect_request(lambda request: "/api/export" in request.url) as request,
        ):
            slot.locator(f'button[data-format="{format_}"]').click()
        target = urlsplit(request.value.url)
        assert f"format={format_}" in target.query
        assert "meeting=standup" in target.query
        assert "what=alerts" in target.query
        saved = download.value.path()
        assert download.value.suggested_filename == f"bwmon-alerts.{format_}"
        expected = get(f"{dashboard.url}{target.path}?{target.query}")
        assert Path(saved).read_bytes() == expected
        assert b"slow_rtt" in expected
    expect(slot).to_contain_text("Downloaded bwmon-alerts.json")


def test_screenshots_of_the_main_views(dashboard: Dashboard, watched: Watched) -> None:
    page = watched.page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dashboard.feeder.rtt_ms["bob"] = 400.0  # an open alert to show
    open_overview(dashboard, watched)
    time.sleep(1.5)  # a few ticks: rates and levels for every meeting
    page.screenshot(path=SCREENSHOTS / "overview.png")
    emitted = [m for m in json.loads(get(dashboard.url + "/api/meetings"))["ids"] if m[:2] == "m-"]
    page.goto(f"{dashboard.url}/#/meeting/{emitted[0]}")
    expect(page.locator("#people th[scope=row]")).to_have_count(3, timeout=10_000)
    audio = page.locator("#people tr:first-child td:nth-child(7)")
    expect(audio).to_contain_text(re.compile(r"\d k / \d"), timeout=5_000)  # two publishes seen
    page.screenshot(path=SCREENSHOTS / "meeting.png")
    page.goto(dashboard.url + "/#/alerts")
    expect(page.locator("#open")).to_contain_text("bob", timeout=15_000)
    page.screenshot(path=SCREENSHOTS / "alerts.png")
    page.goto(dashboard.url + "/#/http")
    expect(page.locator(".vrow:not([hidden])")).to_have_count(6, timeout=10_000)
    page.screenshot(path=SCREENSHOTS / "http.png")
    dashboard.feeder.rtt_ms["bob"] = 40.0
    for name in ("overview", "meeting", "alerts", "http"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_a_hidden_tab_draws_nothing_and_catches_up_when_shown(
    dashboard: Dashboard, watched: Watched
) -> None:
    open_overview(dashboard, watched)
    page = watched.page
    page.evaluate(
        """() => {
          window.drawn = 0;
          new MutationObserver((changes) => { window.drawn += changes.length; })
            .observe(document.querySelector('main'), {subtree: true, childList: true,
                                                      characterData: true, attributes: true});
          window.setVisibility = (state) => {
            Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
            document.dispatchEvent(new Event('visibilitychange'));
          };
        }"""
    )
    before = page.locator("#count").inner_text()
    page.evaluate("setVisibility('hidden')")
    time.sleep(0.3)  # a frame already asked for may still come
    page.evaluate("window.drawn = 0")
    dashboard.feeder.meetings["while-hidden"] = ("erin",)
    wait_until(lambda: "while-hidden" in get(dashboard.url + "/api/meetings?q=while").decode())
    time.sleep(2.5)  # two more publishes, applied but not drawn
    assert page.evaluate("window.drawn") == 0
    assert page.locator("#count").inner_text() == before
    page.evaluate("setVisibility('visible')")
    expect(page.locator("#count")).not_to_have_text(before, timeout=3_000)
    assert page.evaluate("window.drawn") > 0
    page.fill("#search", "while-hidden")
    expect(page.locator(".vrow:not([hidden]) a")).to_have_text(["while-hidden"])


def test_a_daemon_restart_shows_the_banner_then_fresh_data(
    dashboard: Dashboard, watched: Watched
) -> None:
    open_overview(dashboard, watched)
    page = watched.page
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()
    stopped = dashboard.daemon
    assert stopped.stop() == 0
    expect(banner).to_be_visible(timeout=5_000)
    expect(banner).to_contain_text("Reconnecting… data is")
    first = banner.inner_text()
    expect(banner).not_to_have_text(first, timeout=3_000)  # the age keeps ticking
    expect(page.locator("#connection")).to_have_text("offline")
    dashboard.feeder.meetings["after-restart"] = ("dave",)
    dashboard.restart()
    expect(banner).to_be_hidden(timeout=15_000)
    expect(page.locator("#connection")).to_have_text("live")
    page.fill("#search", "after-restart")
    expect(page.locator(".vrow:not([hidden]) a")).to_have_text(["after-restart"], timeout=10_000)
    # Chromium logs each refused attempt to reconnect: expected while the daemon was down.
    watched.errors[:] = [e for e in watched.errors if "/subscribe' failed" not in e]
