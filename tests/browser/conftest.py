"""Fixtures of the browser tests: one coturn and one page server for the whole session, one
headless Chromium per module, a fresh browser context (a call page) per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from cli.bench.chromium import launch_chromium
from tests.browser.call import Call, open_call, serving_pages
from tests.browser.database import query
from tests.browser.turn import TurnServer, running_turn
from tests.helpers import scratch_database

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="session")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    with running_turn(tmp_path_factory.mktemp("turn")) as server:
        yield server


@pytest.fixture(scope="session")
def pages_url() -> Iterator[str]:
    with serving_pages() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per module. Playwright's sync API runs one at a time per thread: a test of
    this folder takes this one rather than launching its own, and it is closed before the
    modules elsewhere that launch theirs (``make browser`` runs them in the same session)."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def call(browser: Browser, pages_url: str) -> Iterator[Call]:
    with open_call(browser, pages_url) as opened:
        yield opened
    assert opened.errors == []


@pytest.fixture
def database() -> Iterator[str]:
    """tests/conftest.py's scratch database, made from another thread (database.py)."""
    with scratch_database(query) as name:
        yield name
