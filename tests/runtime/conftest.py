from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from collector.runtime import AsyncioBridge, open_thread_bridge


@pytest.fixture
async def thread_bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_thread_bridge(shutdown_timeout=5) as bridge:
        yield bridge
