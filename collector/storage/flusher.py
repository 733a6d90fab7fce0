"""The flusher: what the engine produced → batches → the sink, on an interval, never lost.

``offer`` (called by the consumer after each tick, synchronous and cheap) turns minute rows,
meeting summaries and alerts into rows of a pending ``Batch``. ``run`` writes the pending batch
every ``flush_interval_s`` in one transaction; if the database is down or slow the batch stays
pending and is retried with capped exponential backoff, while new rows keep joining it. When
the pending rows exceed ``queue_max_rows`` the batch is spooled to disk (if a spool is
configured) and written from there, in order, when the database returns; without a spool, or
with a full one, rows are dropped — counted and logged, never silently.

Never called from the ingest path with anything that waits: ``offer`` only appends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from collector.aggregate.engine import Output
from collector.logs import get_logger
from collector.storage.schema import (
    ALERTS,
    HTTP_MINUTE,
    MEETINGS,
    RTC_MINUTE,
    TABLES_BY_NAME,
    Batch,
    alert_row,
    http_row,
    meeting_row,
    pad_row,
    rtc_row,
)
from collector.storage.sinks import Sink, StorageUnavailable
from collector.storage.spool import Spool

log = get_logger("storage")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, list[list[Any]]])


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch.rows)


def decode_batch(payload: bytes) -> Batch:
    """A batch from ``encode_batch``, of this build or an earlier one (a spool record or a
    checkpoint written before an upgrade): rows lacking columns added since get NULL in them."""
    return Batch(
        {
            name: [pad_row(TABLES_BY_NAME[name], r) for r in rows]
            for name, rows in _decoder.decode(payload).items()
        }
    )


def batch_of(output: Output) -> Batch:
    batch = Batch()
    batch.add(RTC_MINUTE, [rtc_row(r) for r in output.rtc_rows])
    batch.add(HTTP_MINUTE, [http_row(r) for r in output.http_rows])
    batch.add(MEETINGS, [meeting_row(s) for s in output.summaries])
    batch.add(ALERTS, [alert_row(a) for a in output.alerts])
    return batch


class Flusher:
    def __init__(
        self,
        sink: Sink,
        *,
        flush_interval_s: float = 5.0,
        queue_max_rows: int = 200_000,
        retry_max_s: float = 30.0,
        spool: Spool | None = None,
        migrate: bool = True,
        after_flush: Callable[[], Awaitable[None]] | None = None,
        before_flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.after_flush = after_flush  # after every attempt, and at close
        self.before_flush = before_flush  # before every attempt of ``run`` (the checkpoint)
        self.sink = sink
        self.needs_migrate = migrate
        self.flush_interval_s = flush_interval_s
        self.queue_max_rows = queue_max_rows
        self.retry_max_s = retry_max_s
        self.spool = spool
        self.pending = Batch()
        self.failures = 0  # consecutive failed attempts
        self.counters = {
            "rows_written": 0,
            "flushes": 0,
            "failed_flushes": 0,
            "rows_spooled": 0,
            "rows_dropped": 0,
        }
        self.flush_seconds = 0.0  # every attempt, failed ones included
        self.last_flush_s: float | None = None
        self.last_error: str | None = None
        self._closing: trio.CancelScope | None = None  # close()'s deadline, for hurry()
        self._hurried = False

    def offer(self, output: Output) -> None:
        """Queue what the engine produced; spool or drop (counted) beyond the queue's cap."""
        self.offer_batch(batch_of(output))

    def offer_batch(self, batch: Batch) -> None:
        """``offer`` of rows already made (``batch_of``)."""
        self.pending.merge(batch)
        if len(self.pending) > self.queue_max_rows:
            self._overflow()

    def _overflow(self) -> None:
        batch, self.pending = self.pending, Batch()
        rows = len(batch)
        if self.spool is not None and self.spool.append(encode_batch(batch)):
            self.counters["rows_spooled"] += rows
            log.warning("storage_spooled", rows=rows, spooled_batches=len(self.spool))
            return
        self.counters["rows_dropped"] += rows
        log.error("storage_rows_dropped", rows=rows, reason="queue and spool full")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending rows every interval until cancelled (``close`` does the last flush)."""
        task_status.started()
        while True:
            delay = self.flush_interval_s
            if self.failures:
                delay = min(self.retry_max_s, self.flush_interval_s * 2 ** min(self.failures, 10))
            await trio.sleep(delay)
            if self.before_flush is not None:
                await self.before_flush()
            await self.flush()
            if self.after_flush is not None:
                await self.after_flush()

    async def flush(self) -> bool:
        """Write the spool's batches (oldest first), then the pending one. False if the
        database is unavailable (everything stays queued)."""
        started = time.monotonic()
        try:
            return await self._flush()
        finally:
            self.last_flush_s = time.monotonic() - started
            self.flush_seconds += self.last_flush_s

    async def _flush(self) -> bool:
        try:
            if self.needs_migrate:
                applied = await self.sink.migrate()
                self.needs_migrate = False
                if applied:
                    log.info("storage_migrated", statements=len(applied))
            if self.spool is not None:
                while entries := self.spool.peek(10):
                    for position, payload in entries:
                        batch = decode_batch(payload)
                        await self.sink.write(batch)
                        self.counters["rows_written"] += len(batch)
                        self.spool.ack(position)
            if len(self.pending):
                batch = self.pending
                self.pending = Batch()
                try:
                    await self.sink.write(batch)
                except BaseException:
                    batch.merge(self.pending)  # keep order: the failed rows, then newer ones
                    self.pending = batch
                    raise
                self.counters["rows_written"] += len(batch)
            self.counters["flushes"] += 1
        except StorageUnavailable as exc:
            self.failures += 1
            self.counters["failed_flushes"] += 1
            self.last_error = str(exc)[:300]
            log.warning(
                "storage_unavailable", error=self.last_error, pending_rows=len(self.pending)
            )
            return False
        if self.failures:
            log.info("storage_recovered", after_failures=self.failures)
        self.failures = 0
        self.last_error = None
        return True

    def hurry(self) -> None:
        """End ``close``'s attempts now (a second SIGTERM): what is unwritten is spooled."""
        self._hurried = True
        if self._closing is not None:
            self._closing.cancel()

    async def close(self, deadline_s: float) -> None:
        """Last flush within ``deadline_s`` (or until ``hurry``); what cannot be written in
        time is spooled."""
        with trio.move_on_after(0 if self._hurried else deadline_s) as self._closing:
            while True:
                if await self.flush():
                    break
                await trio.sleep(min(1.0, deadline_s / 4))
        if len(self.pending):
            self._overflow()
        if self.after_flush is not None:
            await self.after_flush()

    def health(self) -> dict[str, Any]:
        return {
            **self.counters,
            "pending_rows": len(self.pending),
            "spooled_batches": len(self.spool) if self.spool is not None else 0,
            "spool_bytes": self.spool.size_bytes if self.spool is not None else 0,
            "flush_seconds": round(self.flush_seconds, 6),
            "last_flush_s": None if self.last_flush_s is None else round(self.last_flush_s, 6),
            "statements": self.sink.statements,
            "last_error": self.last_error,
            "consecutive_failures": self.failures,
        }
