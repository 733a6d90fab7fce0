"""The progress of ``bwmon export`` on a terminal: a rich progress bar with the total, the rate
and the time left while rows are written, then a one-line summary."""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class ExportProgress:
    """``start(total)`` once the rows are counted, ``advance(written)`` after each page,
    ``stop()`` at the end, then ``summary(rows, complete)``."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("bwmon export"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows · {task.fields[rate]} rows/s · left"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task: TaskID | None = None
        self._began = time.monotonic()

    def start(self, total: int) -> None:
        self._began = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task("export", total=total, rate="-")

    def advance(self, written: int) -> None:
        if self._task is None:
            return
        elapsed = time.monotonic() - self._began
        rate = f"{written / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, completed=written, rate=rate)

    def stop(self) -> None:
        self._progress.stop()

    def summary(self, rows: int, complete: bool) -> str:
        elapsed = time.monotonic() - self._began
        rate = f", {rows / elapsed:,.0f} rows/s" if elapsed > 0 and rows else ""
        state = "" if complete else " (stopped before the end)"
        return f"{rows:,} rows in {elapsed:.1f} s{rate}{state}"
