"""Retention: on a schedule, minute rows older than N days become hourly rows, then go.

Runs inside the daemon every ``retention_interval_s``; the cutoff is on an hour boundary so an
hour is always rolled up whole. Deletes go in small batches (short transactions that do not
hold up the flushes). A database that is down only postpones the work to the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from collector.logs import get_logger
from collector.storage.sinks import Sink, StorageUnavailable

log = get_logger("retention")


def retention_cutoff(now: float, days: float) -> int:
    """The hour boundary before which minute rows are rolled up (Unix seconds)."""
    cutoff = int(now - days * 86_400)
    return cutoff - cutoff % 3600


async def run_retention(
    sink: Sink,
    days: float,
    interval_s: float,
    clock: Callable[[], float] = time.time,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        cutoff = retention_cutoff(clock(), days)
        try:
            deleted = await sink.retain(cutoff)
        except StorageUnavailable as exc:
            log.warning("retention_postponed", error=str(exc)[:300])
            continue
        if any(deleted.values()):
            log.info("retention_done", cutoff=cutoff, deleted=deleted)
