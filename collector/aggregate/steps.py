"""Work done in steps: a generator that yields between steps and returns its result.

Long passes over every stream (a tick, a checkpoint, the ``meetings`` topic) are written as
such generators so that the daemon can let ingest drain between steps
(``collector.runtime.steps.finish_between_tasks``); ``finish`` runs one to the end at once,
for tests and tools. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def finish(steps: Generator[None, None, T]) -> T:
    """Run ``steps`` to the end; return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
