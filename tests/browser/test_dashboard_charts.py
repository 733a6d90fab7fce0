"""The meeting page's charts (collector/http/ui/charts.js) in the system Chromium against a real
daemon fed by ``bwmon emit``: drawn from ``/api/series`` with as many points as the chart has
pixels, refreshed while the page is visible and not while hidden, redrawn at a new width, and
gone without a trace (canvas, request, listener) after ``destroy()``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cli.bench.harness import child
from cli.daemon_process import DaemonProcess, running_daemon

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

MOUNT_JS = """
async ({ meeting, width }) => {
  const { mountCharts } = await import("/ui/charts.js");
  const section = document.createElement("section");
  section.style.width = `${width}px`;
  document.body.append(section);
  const api = (path, init) => fetch(path, init);
  window.charts = mountCharts(section, { meeting, api, refreshMs: 1000 });
  window.section = section;
}
"""

SET_HIDDEN_JS = """
(hidden) => {
  Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nbackend = 'none'\nstate_dir = '{tmp_path}'\n")
    with running_daemon(tmp_path / "daemon.log", ["--config", str(config)]) as running:
        command = [sys.executable, "-m", "cli.main", "emit", "--udp-port", str(running.udp_port)]
        command += ["--http-port", str(running.http_port), "--meetings", "1"]
        command += ["--participants", "2", "--duration", "120", "--seed", "5"]
        with child(subprocess.Popen(command, stdout=subprocess.DEVNULL)):
            yield running


def live_meeting(daemon: DaemonProcess) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        url = f"http://127.0.0.1:{daemon.http_port}/api/meetings"
        with urllib.request.urlopen(url, timeout=5) as response:
            ids: list[str] = json.load(response)["ids"]
        if ids:
            return ids[0]
        time.sleep(0.2)
    raise AssertionError("no live meeting")


def series_requests(page: Page) -> list[dict[str, str]]:
    """The query of every /api/series request the page sends from now on."""
    seen: list[dict[str, str]] = []

    def record(request: Any) -> None:
        if "/api/series?" in request.url:
            query = request.url.split("?", 1)[1]
            seen.append(dict(pair.split("=", 1) for pair in query.split("&")))

    page.on("request", record)
    return seen


def plots(page: Page) -> Any:
    return page.evaluate(
        "() => charts.plots.map((p) => ({ width: p.width, series: p.series.length, "
        "values: p.data.slice(1).map((column) => column.filter((v) => v != null).length) }))"
    )


def test_charts_draw_refresh_pause_resize_and_clean_up(
    browser: Browser, daemon: DaemonProcess
) -> None:
    meeting = live_meeting(daemon)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{daemon.http_port}/healthz")
    requests = series_requests(page)
    page.evaluate(MOUNT_JS, {"meeting": meeting, "width": 700})

    # Drawn: four charts (bitrate, loss, RTT and jitter, MOS), each with data from the live
    # window, at the section's width, from a request of that many points.
    page.wait_for_function("() => charts.plots.length === 4", timeout=10_000)
    page.wait_for_function(
        "() => charts.plots[0].data[1].some((v) => v != null)", timeout=15_000, polling=200
    )
    drawn = plots(page)
    assert [p["series"] for p in drawn] == [7, 4, 7, 4]  # x, then mean/max/min per metric
    assert all(p["width"] == 700 for p in drawn)
    assert requests[0]["meeting"] == meeting
    assert requests[0]["points"] == "700"
    assert page.locator("section canvas").count() == 4
    uplot_css = "[...document.styleSheets].some((s) => s.href?.endsWith('uPlot.min.css'))"
    assert page.evaluate(uplot_css)

    # Refreshed while visible (every refreshMs), not while hidden, at once when shown again.
    before = len(requests)
    page.wait_for_timeout(2_500)
    assert len(requests) >= before + 2
    page.evaluate(SET_HIDDEN_JS, True)
    page.wait_for_timeout(300)
    hidden_from = len(requests)
    page.wait_for_timeout(2_500)
    assert len(requests) == hidden_from
    page.evaluate(SET_HIDDEN_JS, False)
    page.wait_for_timeout(500)
    assert len(requests) == hidden_from + 1

    # Resized: every chart takes the new width, and the next request asks for its pixels.
    page.evaluate("() => { section.style.width = '420px'; }")
    page.wait_for_function("() => charts.plots.every((p) => p.width === 420)", timeout=5_000)
    page.wait_for_timeout(300)
    assert requests[-1]["points"] == "420"

    # Destroyed: nothing left in the section, no request afterwards, visible or not.
    page.evaluate("() => charts.destroy()")
    assert page.evaluate("() => section.childElementCount") == 0
    assert page.evaluate("() => charts.plots.length") == 0
    after = len(requests)
    page.evaluate(SET_HIDDEN_JS, True)
    page.evaluate(SET_HIDDEN_JS, False)
    page.wait_for_timeout(2_500)
    assert len(requests) == after
    assert errors == []
    page.close()
