"""Run a step generator (``collector.aggregate.steps``) on the trio loop, letting the other
tasks (ingest above all) run between its steps. Never sleeps: a checkpoint per step only."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

import trio

T = TypeVar("T")


async def finish_between_tasks(steps: Generator[None, None, T]) -> T:
    """Run ``steps`` to the end with a trio checkpoint after each step; return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        await trio.lowlevel.checkpoint()
