"""Fixtures shared by the test packages, and the refusal to test a stale compiled build."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from protocol.build import stale_message, stale_sources
from tests.helpers import admin


def pytest_configure(config: pytest.Config) -> None:
    # In a checkout, Python imports a compiled module's extension before its source: tests of
    # an edited source must not run the extension of the one before (protocol/build.py).
    if stale := stale_sources():
        raise pytest.UsageError(stale_message(stale))


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch MariaDB database, dropped after the test."""
    name = f"bwmon_test_{uuid.uuid4().hex[:10]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin(f"DROP DATABASE {name}")
