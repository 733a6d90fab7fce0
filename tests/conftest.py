"""Fixtures shared by the test packages, and the refusal to test a stale compiled build."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol.build import stale_message, stale_sources
from tests.helpers import scratch_database


def pytest_configure(config: pytest.Config) -> None:
    # In a checkout, Python imports a compiled module's extension before its source: tests of
    # an edited source must not run the extension of the one before (protocol/build.py).
    if stale := stale_sources():
        raise pytest.UsageError(stale_message(stale))


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch MariaDB database, dropped after the test."""
    with scratch_database() as name:
        yield name
