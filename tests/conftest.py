"""Fixtures shared by the test packages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import admin


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch MariaDB database, dropped after the test."""
    name = f"bwmon_test_{uuid.uuid4().hex[:10]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin(f"DROP DATABASE {name}")
