"""``<bwmon-indicator>`` in the system Chromium: defined on import (once, however often the
module is imported), it shows a view set with ``el.view`` in its shadow root.

The module and a blank page are served by Playwright's router from an origin that never
reaches the network; the view shown is the one ``localView`` computes in the page from a
golden vector (clients/browser/test/fixtures/quality-vectors.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

CLIENT = Path(__file__).resolve().parents[2] / "clients/browser"
ORIGIN = "http://bwmon.test"

PAGE_SCRIPT = """async (vector) => {
  const m = await import("/bwmon.js");
  await import("/bwmon.js?again");  // a second instance of the module: no second define
  const el = document.createElement("bwmon-indicator");
  document.body.append(el);
  const shown = () => {
    const [, dot, text] = el.shadowRoot.children;
    return { text: text.textContent, color: dot.style.background, title: el.title };
  };
  const view = m.localView(vector.prev, vector.cur, vector.prevScore);
  el.view = view;
  const withView = { ...shown(), expected: m.indicatorText(view), same: el.view === view };
  el.view = null;
  const tag = customElements.get("bwmon-indicator") === el.constructor;
  return { withView, without: shown(), tag };
}"""


def vector(name: str) -> dict[str, Any]:
    vectors = json.loads((CLIENT / "test/fixtures/quality-vectors.json").read_text())
    case: dict[str, Any] = next(c for c in vectors["cases"] if c["name"] == name)
    return case


def test_indicator_shows_a_view_and_clears(browser: Browser) -> None:
    module = (CLIENT / "bwmon.js").read_text()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def serve(route: Any) -> None:
        if route.request.url.split("?")[0].endswith("/bwmon.js"):
            route.fulfill(body=module, content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><body></body>", content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/")
    result = page.evaluate(PAGE_SCRIPT, vector("relay_tcp"))
    page.close()
    assert errors == []
    assert result["tag"]
    shown = result["withView"]
    assert shown["same"]
    assert shown["text"] == shown["expected"]
    assert "TURN/tcp" in shown["text"]
    assert "relay-tcp" in shown["text"]
    assert shown["color"] == "rgb(17, 136, 51)"  # excellent: #183
    assert shown["title"] == "excellent"
    assert result["without"] == {"text": "\N{EN DASH}", "color": "", "title": ""}
