"""``launch_chromium``'s deadline: a call the browser never answers (Playwright's ``evaluate``
and CDP commands have no timeout of their own) ends in ``ChromiumStalled`` once the browser
is killed at its deadline, instead of hanging the benchmark or the test that made it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Error as PlaywrightError

from cli.bench.chromium import ChromiumStalled, launch_chromium

pytestmark = pytest.mark.browser


def evaluate(script: str, deadline_s: float) -> object:
    with launch_chromium(deadline_s=deadline_s) as browser:
        return browser.new_page().evaluate(script)


def test_a_call_the_browser_never_answers_fails_at_the_deadline() -> None:
    with pytest.raises(ChromiumStalled, match="still running 3 s after its launch"):
        evaluate("new Promise(() => {})", 3)  # never settles


def test_an_error_before_the_deadline_is_the_callers_own() -> None:
    assert evaluate("1 + 1", 600) == 2
    with pytest.raises(PlaywrightError, match="ReferenceError"):
        evaluate("undefinedName", 600)
