"""Retention runs on its schedule against a real SQLite sink and rolls whole hours up."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from collector.storage.retention import retention_cutoff, run_retention
from collector.storage.schema import RTC_MINUTE, Batch, rtc_row
from collector.storage.sinks import SqliteSink
from tests.storage.test_sinks import rtc

HOUR = 1_800_000_000 - 1_800_000_000 % 3600


def test_the_cutoff_is_an_hour_boundary_n_days_back() -> None:
    assert retention_cutoff(HOUR + 3600 * 24 * 7 + 1_234, 7) == HOUR
    assert retention_cutoff(HOUR + 59, 0) == HOUR


async def test_the_scheduled_run_rolls_up_what_is_old_enough(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "bwmon.db")
    await sink.migrate()
    batch = Batch()
    batch.add(RTC_MINUTE, [rtc_row(rtc(HOUR + 60)), rtc_row(rtc(HOUR + 3 * 3600))])
    await sink.write(batch)
    now = HOUR + 2 * 3600 + 86_400  # one day later: the first hour is old, the other is not
    async with trio.open_nursery() as nursery:
        await nursery.start(run_retention, sink, 1.0, 0.05, lambda: now)
        with trio.fail_after(5):
            while (await sink.query("SELECT COUNT(*) FROM rtc_hour")) != [(1,)]:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert await sink.query("SELECT minute FROM rtc_minute") == [(HOUR + 3 * 3600,)]
    await sink.close()
