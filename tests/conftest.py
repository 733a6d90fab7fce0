"""Fixtures shared by the test packages, and the refusal to test a stale compiled build."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from protocol.build import stale_message, stale_sources
from tests.helpers import scratch_database

# The Python client's modules compiled in place (clients/python/setup.py).
CLIENT = Path(__file__).parents[1] / "clients" / "python" / "bwmon_client"
CLIENT_COMPILED = (CLIENT / "wsgi.py", CLIENT / "asgi.py")


def stale_client() -> list[Path]:
    """The client's compiled sources that an extension beside them is older than."""
    stale = []
    for source in CLIENT_COMPILED:
        extensions = [source.with_name(source.stem + suffix) for suffix in EXTENSION_SUFFIXES]
        built = [path.stat().st_mtime for path in extensions if path.exists()]
        if built and min(built) < source.stat().st_mtime:
            stale.append(source)
    return stale


def pytest_configure(config: pytest.Config) -> None:
    # In a checkout, Python imports a compiled module's extension before its source: tests of
    # an edited source must not run the extension of the one before (protocol/build.py).
    if stale := stale_sources() + stale_client():
        raise pytest.UsageError(stale_message(stale))


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch MariaDB database, dropped after the test."""
    with scratch_database() as name:
        yield name
