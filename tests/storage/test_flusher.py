"""The flusher against a real SQLite sink that can be switched off: nothing lost, nothing
twice, order kept, overflow counted."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import trio

from collector.aggregate.engine import Output
from collector.storage.flusher import Flusher, decode_batch, encode_batch
from collector.storage.schema import RTC_MINUTE, Batch, rtc_row
from collector.storage.sinks import SqliteSink, StorageError, StorageUnavailable
from collector.storage.spool import PEEK_MAX_PAYLOAD_BYTES, Spool, SpoolError
from tests.helpers import wait_for
from tests.storage.test_sinks import RAISED, rtc


class FlakySink(SqliteSink):
    down = False

    async def write(self, batch: Batch) -> None:
        if self.down:
            raise StorageUnavailable("switched off by the test")
        await super().write(batch)


def output(*minutes: int) -> Output:
    return Output(rtc_rows=[rtc(m, video=float(m)) for m in minutes], alerts=[RAISED])


@pytest.fixture
async def sink(tmp_path: Path) -> FlakySink:
    return FlakySink(tmp_path / "bwmon.db")


async def count(sink: SqliteSink) -> int:
    ((rows,),) = await sink.query("SELECT COUNT(*) FROM rtc_minute")
    return int(rows)


async def test_rows_wait_while_the_database_is_down_then_go_once(sink: FlakySink) -> None:
    flusher = Flusher(sink)
    flusher.offer(output(60, 120))
    assert await flusher.flush()
    sink.down = True
    flusher.offer(output(180))
    assert not await flusher.flush()
    flusher.offer(output(240))
    assert not await flusher.flush()
    assert flusher.failures == 2
    assert len(flusher.pending) == 4  # two rtc rows and two alert rows
    sink.down = False
    assert await flusher.flush()
    assert await count(sink) == 4
    assert await sink.query("SELECT minute FROM rtc_minute ORDER BY minute") == [
        (60,),
        (120,),
        (180,),
        (240,),
    ]
    assert flusher.counters["rows_written"] == 7  # 3 in the first flush, 4 in the last
    assert flusher.counters["failed_flushes"] == 2
    assert flusher.failures == 0


async def test_retries_back_off_up_to_the_cap(
    sink: FlakySink, autojump_clock: trio.testing.MockClock
) -> None:
    sink.down = True
    flusher = Flusher(sink, flush_interval_s=1, retry_max_s=8, migrate=False)
    flusher.offer(output(60))
    attempts: list[float] = []
    original = flusher.flush

    async def timed_flush() -> bool:
        attempts.append(trio.current_time())
        return await original()

    flusher.flush = timed_flush  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a) for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [2, 4, 8, 8]


async def test_overflow_without_a_spool_is_dropped_and_counted(sink: FlakySink) -> None:
    flusher = Flusher(sink, queue_max_rows=100)
    sink.down = True
    flusher.offer(Output(rtc_rows=[rtc(60 * i) for i in range(101)]))
    assert flusher.counters["rows_dropped"] == 101
    assert len(flusher.pending) == 0


async def test_close_writes_what_it_can_within_the_deadline(sink: FlakySink) -> None:
    flusher = Flusher(sink)
    flusher.offer(output(60))
    await flusher.close(deadline_s=2)
    assert await count(sink) == 1
    sink.down = True
    flusher.offer(output(120))
    with trio.fail_after(5):
        await flusher.close(deadline_s=0.5)
    assert flusher.counters["rows_dropped"] == 2


def test_batches_survive_their_spool_encoding() -> None:
    rows = [rtc_row(rtc(1_800_000_000)), rtc_row(rtc(1_800_000_060, "p2"))]
    batch = Batch()
    batch.merge(decode_batch(encode_batch(Batch({"rtc_minute": rows}))))
    assert batch.rows == {"rtc_minute": rows}


async def test_rows_spooled_before_the_upgrade_are_written_with_null_new_columns(
    sink: FlakySink, tmp_path: Path
) -> None:
    """A spool record of the build before migration 0003 holds rtc_minute rows without its
    columns: they are written, the new columns NULL, and the spool drains."""
    before = RTC_MINUTE.columns.index("fps_in_avg")  # the first column 0003 added
    old = [rtc_row(rtc(1_800_000_000 + 60 * i))[:before] for i in range(3)]
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.append(encode_batch(Batch({"rtc_minute": old})))
    flusher = Flusher(sink, spool=spool)
    assert await flusher.flush()
    assert spool.peek(1) == []
    stored = await sink.query(
        "SELECT minute, video_bytes_sent, fps_in_avg, width_in, remote_relayed FROM rtc_minute"
    )
    assert stored == [(1_800_000_000 + 60 * i, 1_000.0, None, None, None) for i in range(3)]
    spool.close()


async def test_overflow_goes_to_the_spool_and_comes_back_in_order(
    sink: FlakySink, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    flusher = Flusher(sink, queue_max_rows=100, spool=spool)
    sink.down = True
    flusher.offer(Output(rtc_rows=[rtc(60 * i) for i in range(101)]))  # over the cap: spooled
    await flusher.spool_overflow()  # what ``run``'s spooling task does when offer wakes it
    flusher.offer(Output(rtc_rows=[rtc(60 * 200)]))  # stays pending
    await flusher.spool_overflow()
    assert flusher.counters["rows_spooled"] == 101
    assert not await flusher.flush()
    # The daemon restarts: a new flusher finds the spool and writes it before anything newer.
    spool.close()
    spool = Spool(tmp_path / "spool", fsync=False)
    sink.down = False
    again = Flusher(sink, spool=spool)
    again.offer(Output(rtc_rows=[rtc(60 * 300)]))
    assert await again.flush()
    assert await count(sink) == 102
    assert len(spool) == 0
    assert again.counters["rows_written"] == 102
    spool.close()


async def test_close_spools_what_the_dead_database_did_not_take(
    sink: FlakySink, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    flusher = Flusher(sink, spool=spool, migrate=False)
    sink.down = True
    flusher.offer(output(60))
    with trio.fail_after(5):
        await flusher.close(deadline_s=0.3)
    assert flusher.counters["rows_spooled"] == 2
    assert flusher.counters["rows_dropped"] == 0
    assert len(spool) == 1
    spool.close()


class FailingSpool(Spool):
    """A spool on a disk that fails: ``peek`` and ``append`` raise while ``broken``, ``ack``
    while ``ack_broken``."""

    broken = True
    ack_broken = False

    def peek(
        self, limit: int = 100, *, max_payload_bytes: int = PEEK_MAX_PAYLOAD_BYTES
    ) -> list[tuple[int, bytes]]:
        if self.broken:
            raise SpoolError("cannot read the spool: Input/output error (the test's)")
        return super().peek(limit, max_payload_bytes=max_payload_bytes)

    def append(self, payload: bytes) -> bool:
        if self.broken:
            raise SpoolError("cannot append to the spool: Input/output error (the test's)")
        return super().append(payload)

    def ack(self, upto: int) -> None:
        if self.ack_broken:
            raise SpoolError("cannot acknowledge in the spool: Input/output error (the test's)")
        super().ack(upto)


async def test_a_failing_spool_is_counted_and_survived_and_loses_nothing(
    sink: FlakySink, tmp_path: Path
) -> None:
    spool = FailingSpool(tmp_path / "spool", fsync=False)
    flusher = Flusher(sink, queue_max_rows=2, spool=spool)
    flusher.offer(output(60, 120))  # 3 rows, over the cap: the append fails, they stay queued
    await flusher.spool_overflow()
    assert flusher.counters["spool_errors"] == 1
    assert flusher.counters["rows_dropped"] == 0
    assert len(flusher.pending) == 3
    assert await flusher.flush()  # the spool cannot be read: the pending rows are written
    assert flusher.counters["spool_errors"] == 2
    assert await count(sink) == 2
    spool.broken = False
    sink.down = True
    flusher.offer(output(180, 240))  # the disk is back: spooled
    await flusher.spool_overflow()
    assert flusher.counters["rows_spooled"] == 3
    sink.down = False
    assert await flusher.flush()
    assert await count(sink) == 4
    assert flusher.health().spool_errors == 2
    spool.close()


class BrokenSink(FlakySink):
    """A sink whose database fails in a way that is not ``StorageUnavailable`` (a damaged
    file, say) while ``failure`` is set."""

    failure: StorageError | None = None

    async def write(self, batch: Batch) -> None:
        if self.failure is not None:
            raise self.failure
        await super().write(batch)


class SlowSpool(Spool):
    """A spool whose ``append`` takes ``APPEND_S`` (a disk stalled in fsync) in its thread."""

    APPEND_S = 0.3
    appending: trio.Event | None = None  # set (from the spool's thread) as an append starts

    def append(self, payload: bytes) -> bool:
        if self.appending is not None:
            trio.from_thread.run_sync(self.appending.set)
        time.sleep(self.APPEND_S)
        return super().append(payload)


async def test_spool_and_sink_failures_during_a_run_are_counted_and_survived(
    tmp_path: Path,
) -> None:
    """While ``run`` runs: a database that fails (not merely unavailable) fails flushes, a
    spool that fails every call (append, read, ack) is counted; ``run`` goes on, and once both
    work again every row is in the database once, none dropped."""
    sink = BrokenSink(tmp_path / "bwmon.db")
    spool = FailingSpool(tmp_path / "spool", fsync=False)
    flusher = Flusher(sink, flush_interval_s=0.05, retry_max_s=0.1, queue_max_rows=2, spool=spool)
    sink.failure = StorageError("sqlite: database disk image is malformed (the test's)")
    async with trio.open_nursery() as nursery:
        await nursery.start(flusher.run)
        flusher.offer(output(60, 120))  # over the cap: the spool's append fails
        await wait_for(lambda: flusher.counters["spool_errors"] >= 2)  # append, then peek
        await wait_for(lambda: flusher.counters["failed_flushes"] >= 2)
        assert flusher.counters["rows_dropped"] == 0
        assert len(flusher.queued()) == 3  # still queued: nothing lost
        assert flusher.problem() == f"last flush failed: {sink.failure}"
        spool.broken = False  # the disk is back, the database not yet: the rows are spooled
        flusher.offer(output(180))
        await wait_for(lambda: flusher.counters["rows_spooled"] == 5)
        spool.ack_broken = True  # and now the acks fail: the rows are written all the same
        errors = flusher.counters["spool_errors"]
        sink.failure = None
        await wait_for(lambda: flusher.counters["spool_errors"] > errors)
        await wait_for(lambda: flusher.failures == 0)
        spool.ack_broken = False  # the record written but not acknowledged is written again
        await wait_for(lambda: len(spool) == 0)
        nursery.cancel_scope.cancel()
    assert await count(sink) == 3
    ((alerts,),) = await sink.query("SELECT COUNT(*) FROM alerts")
    assert alerts == 1
    assert flusher.counters["rows_dropped"] == 0
    assert flusher.health().spool_errors >= 3
    spool.close()


async def test_a_batch_handed_to_the_spool_is_on_disk_even_when_cancelled(
    sink: FlakySink, tmp_path: Path
) -> None:
    """The append runs in a worker thread that a cancellation waits for: the rows taken from
    the queue are in the spool when the cancelled task ends, and counted there."""
    spool = SlowSpool(tmp_path / "spool", fsync=False)
    spool.appending = trio.Event()
    flusher = Flusher(sink, queue_max_rows=2, spool=spool)
    sink.down = True
    flusher.offer(output(60, 120))
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher.spool_overflow)
            await spool.appending.wait()
            assert len(flusher.queued()) == 3  # in the thread: still in what a checkpoint saves
            nursery.cancel_scope.cancel()
    assert len(spool) == 1
    assert flusher.counters["rows_spooled"] == 3
    assert len(flusher.queued()) == 0
    spool.close()


async def test_a_slow_spool_does_not_hold_the_loop(sink: FlakySink, tmp_path: Path) -> None:
    """While an append waits on the disk, the trio loop runs: ticks keep coming, the rows
    offered meanwhile queue, and the health report answers at once."""
    spool = SlowSpool(tmp_path / "spool", fsync=False)
    spool.appending = trio.Event()
    flusher = Flusher(sink, queue_max_rows=2, spool=spool)
    sink.down = True
    flusher.offer(output(60, 120))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.spool_overflow)
        await spool.appending.wait()
        started = time.monotonic()
        for _ in range(10):
            await trio.sleep(0.01)
        flusher.offer(output(180))
        assert flusher.health().pending_rows == 5
        assert time.monotonic() - started < SlowSpool.APPEND_S
    assert flusher.counters["rows_spooled"] == 3
    assert len(flusher.pending) == 2
    spool.close()
