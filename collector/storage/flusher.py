"""The flusher: what the engine produced → batches → the sink, on an interval, never lost.

``offer`` (called by the consumer after each tick, synchronous and cheap) turns minute rows,
meeting summaries and alerts into rows of a pending ``Batch``. ``run`` writes the pending batch
every ``flush_interval_s`` in one transaction; if the database is down or slow the batch stays
pending and is retried with capped exponential backoff, while new rows keep joining it. When
the pending rows exceed ``queue_max_rows`` the batch is spooled to disk (if a spool is
configured) and written from there, in order, when the database returns; without a spool, or
with a full one, rows are dropped — counted and logged, never silently.

Every spool call (``append`` with its fsync, ``peek``, ``ack``) runs in a worker thread, one at a
time: a slow disk stalls the spool, never the trio loop and so never ingest. ``offer`` only
wakes the task that spools (``run`` starts it); while a batch is in that thread, or a flush is
writing (it holds the spool, to write its records before the queue), new rows keep queueing in
``pending``. The thread is never abandoned: a batch handed to it is on disk (or back in the
queue) before the flusher returns, shutdown included.

A storage failure while the daemon runs is counted and survived, never the end of the daemon:
a database that fails (any ``StorageError``) fails the flush (``failed_flushes``), which is
retried; a spool that fails (``SpoolError``) is counted in ``spool_errors`` and its rows stay
queued (an append) or spooled (a read or an ack) for the next attempt.

A batch the database refuses for its content (``RowsRefused``: a value too long, a constraint)
is not retried whole: it is split in halves, each written on its own, until every row the
database takes is written and each row it refuses stands alone. A refused row is counted
(``rows_refused``), logged with its table and key, and set aside as one JSON line in the
``refused`` file (``REFUSED_FILE`` in the state directory) for an operator to read or replay;
it never blocks the rows around it, never makes the flush fail, and is never spooled.

While ``run`` runs, a probe asks the database every ``probe_interval_s`` whether it answers
(``Sink.ping``), waiting at most ``probe_timeout_s``: a database that stopped answering (a
stopped process, a hung proxy) makes ``problem`` say so within seconds, even while no flush is
due or a flush is still waiting for its statement timeout.

Never called from the ingest path with anything that waits: ``offer`` only appends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from collector.aggregate.engine import Output
from collector.logs import get_logger
from collector.storage.health import FlusherHealth
from collector.storage.schema import (
    ALERTS,
    HTTP_MINUTE,
    MEETINGS,
    RTC_MINUTE,
    TABLES_BY_NAME,
    Batch,
    Row,
    alert_row,
    http_row,
    meeting_row,
    pad_row,
    rtc_row,
)
from collector.storage.sinks import RowsRefused, Sink, StorageError, StorageUnavailable
from collector.storage.spool import Spool, SpoolError

log = get_logger("storage")

REFUSED_FILE: Final = "refused.jsonl"
# The refused file stops growing here: rows refused beyond it are counted and logged only.
REFUSED_MAX_BYTES: Final = 64 << 20
PROBE_INTERVAL_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 2.0


_encoder = msgspec.msgpack.Encoder()
_spool_encoder = msgspec.msgpack.Encoder()  # the spool's thread has its own
_decoder = msgspec.msgpack.Decoder(dict[str, list[list[Any]]])
_refused_encoder = msgspec.json.Encoder()


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


def _append(spool: Spool, batch: Batch) -> bool:
    """In the spool's worker thread: encode ``batch`` and append it, fsync included."""
    return spool.append(_spool_encoder.encode(batch.rows))


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
        refused_path: Path | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        before_flush: Callable[[], Awaitable[None]] | None = None,
        pending: Batch | None = None,
    ) -> None:
        """``pending``: rows to write first (the unwritten rows of the last checkpoint)."""
        self.before_flush = before_flush  # before every attempt of ``run`` (the checkpoint)
        self.sink = sink
        self.needs_migrate = migrate
        self.flush_interval_s = flush_interval_s
        self.queue_max_rows = queue_max_rows
        self.retry_max_s = retry_max_s
        self.spool = spool
        self.refused_path = refused_path  # None: refused rows are counted and logged only
        self.refused_bytes = _file_size(refused_path)
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_error: str | None = None  # the last probe's failure; None once one answers
        self.pending = pending if pending is not None else Batch()
        # Rows in the spool's worker thread, not yet on disk: written after the spool's records
        # and before ``pending``, and part of what a checkpoint holds (``queued``).
        self.spooling = Batch()
        self._spool_lock = trio.Lock()  # one spool call at a time; a flush holds it throughout
        self._overflowed = trio.Event()  # set: pending rows exceed the cap, spool them
        self.failures = 0  # consecutive failed attempts
        self.counters = {
            "rows_written": 0,
            "flushes": 0,
            "failed_flushes": 0,
            "rows_spooled": 0,
            "rows_dropped": 0,
            "rows_refused": 0,
            "spool_errors": 0,
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
        """``offer`` of rows already made (``batch_of``). Beyond the queue's cap: wake the
        task that spools, or, without a spool, drop the rows (counted)."""
        self.pending.merge(batch)
        if len(self.pending) > self.queue_max_rows:
            if self.spool is not None:
                self._overflowed.set()
            else:
                self._drop(self.pending)
                self.pending = Batch()

    def queued(self) -> Batch:
        """The rows neither written nor on disk in the spool, oldest first: those in the
        spool's thread, then the pending ones (what a checkpoint must hold)."""
        rows = Batch()
        rows.merge(self.spooling)
        rows.merge(self.pending)
        return rows

    def _drop(self, batch: Batch) -> None:
        self.counters["rows_dropped"] += len(batch)
        log.error("storage_rows_dropped", rows=len(batch), reason="queue and spool full")

    async def _spool_when_overflowed(self) -> None:
        """``spool_overflow`` each time ``offer`` finds the queue over its cap, until
        cancelled."""
        while True:
            await self._overflowed.wait()
            self._overflowed = trio.Event()
            await self.spool_overflow()

    async def spool_overflow(self) -> None:
        """Spool the pending rows if they exceed the queue's cap (and a spool is configured)."""
        if self.spool is not None and len(self.pending) > self.queue_max_rows:
            await self._spool_pending(self.spool, more_than=self.queue_max_rows)

    async def _spool_pending(self, spool: Spool, *, more_than: int = 0) -> None:
        """Move the pending rows to the spool if there are ``more_than`` (still, once a flush
        in progress is done), encoded and appended in a worker thread that a cancellation
        waits for (``abandon_on_cancel=False``): once taken from the queue, the rows are on
        disk before this returns. A full spool drops them (counted); a failing one puts them
        back at the head of the queue (counted): nothing lost."""
        async with self._spool_lock:
            if len(self.pending) <= more_than:
                return
            batch, self.pending = self.pending, Batch()
            self.spooling = batch
            try:
                spooled = await trio.to_thread.run_sync(
                    _append, spool, batch, abandon_on_cancel=False
                )
            except BaseException as exc:  # failed, or cancelled before the thread started
                batch.merge(self.pending)  # keep order: these rows, then newer ones
                self.pending = batch
                if not isinstance(exc, SpoolError):
                    raise
                self._spool_failed("append", exc)
                return
            finally:
                self.spooling = Batch()
        if spooled:
            self.counters["rows_spooled"] += len(batch)
            log.warning("storage_spooled", rows=len(batch), spooled_batches=len(spool))
        else:
            self._drop(batch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending rows every interval until cancelled (``close`` does the last flush),
        probe the database and spool what overflows the queue meanwhile."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.probe)
            if self.spool is not None:
                nursery.start_soon(self._spool_when_overflowed)
            task_status.started()
            await self._flush_every_interval()

    async def probe(self) -> None:
        """Ask the database whether it answers, every ``probe_interval_s``, until cancelled."""
        while True:
            with trio.move_on_after(self.probe_timeout_s) as deadline:
                try:
                    await self.sink.ping()
                except StorageUnavailable as exc:
                    self._probed(str(exc)[:300])
                else:
                    self._probed(None)
            if deadline.cancelled_caught:
                self._probed(f"the database did not answer within {self.probe_timeout_s:g} s")
            await trio.sleep(self.probe_interval_s)

    def _probed(self, error: str | None) -> None:
        if error is not None and self.probe_error is None:
            log.warning("storage_not_responding", error=error)
        elif error is None and self.probe_error is not None:
            log.info("storage_responding")
        self.probe_error = error

    def problem(self) -> str | None:
        """Why storage is not keeping up now (for ``/readyz``), or None: the last flush
        attempt failed, or the database does not answer the probe."""
        if self.failures:
            return f"last flush failed: {self.last_error or 'unknown'}"
        if self.probe_error is not None:
            return f"not responding: {self.probe_error}"
        return None

    async def _flush_every_interval(self) -> None:
        while True:
            delay = self.flush_interval_s
            if self.failures:
                delay = min(self.retry_max_s, self.flush_interval_s * 2 ** min(self.failures, 10))
            await trio.sleep(delay)
            if self.before_flush is not None:
                await self.before_flush()
            await self.flush()

    async def flush(self) -> bool:
        """Write the spool's batches (oldest first), then the pending one. False if the
        database is unavailable or failed (everything stays queued, ``failed_flushes``)."""
        started = time.monotonic()
        try:
            return await self._flush()
        finally:
            self.last_flush_s = time.monotonic() - started
            self.flush_seconds += self.last_flush_s

    async def _flush(self) -> bool:
        async with self._spool_lock:  # no batch reaches the spool between these two steps
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        try:
            if self.needs_migrate:
                applied = await self.sink.migrate()
                self.needs_migrate = False
                if applied:
                    log.info("storage_migrated", statements=len(applied))
            if self.spool is not None:
                await self._flush_spool(self.spool)
            if len(self.pending):
                batch = self.pending
                self.pending = Batch()
                try:
                    await self._write(batch)
                except BaseException:
                    batch.merge(self.pending)  # keep order: the unwritten rows, then newer ones
                    self.pending = batch
                    raise
            self.counters["flushes"] += 1
        except StorageError as exc:  # whatever the database did, the daemon goes on
            self.failures += 1
            self.counters["failed_flushes"] += 1
            self.last_error = str(exc)[:300]
            log.warning(
                "storage_unavailable" if isinstance(exc, StorageUnavailable) else "storage_failed",
                error=self.last_error,
                pending_rows=len(self.pending),
            )
            return False
        if self.failures:
            log.info("storage_recovered", after_failures=self.failures)
        self.failures = 0
        self.last_error = None
        return True

    async def _flush_spool(self, spool: Spool) -> None:
        """Write the spool's batches, oldest first, its reads and fsyncs in a worker thread
        (a slow disk must not stall ingest). A spool that fails to read or acknowledge is
        counted and logged and left for the next flush: the pending rows are still written
        (a record written but not acknowledged is written again then: an idempotent upsert)."""
        try:
            while entries := await trio.to_thread.run_sync(spool.peek, 10):
                for position, payload in entries:
                    await self._write(decode_batch(payload))
                    await trio.to_thread.run_sync(spool.ack, position)
        except SpoolError as exc:
            self._spool_failed("read", exc)  # peek or ack

    def _spool_failed(self, operation: str, exc: SpoolError) -> None:
        self.counters["spool_errors"] += 1
        log.error("storage_spool_failed", operation=operation, error=str(exc)[:300])

    async def _write(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction; if the database refuses its rows, write it in
        parts (``_isolate``)."""
        try:
            await self.sink.write(batch)
        except RowsRefused as exc:
            log.warning("storage_rows_refused", rows=len(batch), error=str(exc)[:300])
            await self._isolate(batch)
            return
        self.counters["rows_written"] += len(batch)

    async def _isolate(self, batch: Batch) -> None:
        """Write each table's rows of ``batch`` in halves, and halves of the halves that the
        database refuses, down to single rows, which are set aside: with k refused rows among
        n, about 2k·log2(n) writes. Order within a table is kept. If the database becomes
        unavailable (or the flush is cancelled) on the way, ``batch`` is left holding only the
        rows not written or set aside yet, in order, and the error propagates."""
        parts: deque[tuple[str, list[Row]]] = deque(
            (name, rows) for name, rows in batch.rows.items() if rows
        )
        if len(parts) == 1:  # the one table's rows were refused whole already: halve them
            name, rows = parts.pop()
            parts += [(name, rows[: len(rows) // 2]), (name, rows[len(rows) // 2 :])]
        try:
            while parts:
                name, rows = parts[0]
                try:
                    await self.sink.write(Batch({name: rows}))
                except RowsRefused as exc:
                    parts.popleft()
                    if len(rows) == 1:
                        self._set_aside(name, rows[0], str(exc))
                    else:
                        half = len(rows) // 2
                        parts.appendleft((name, rows[half:]))
                        parts.appendleft((name, rows[:half]))
                    continue
                parts.popleft()
                self.counters["rows_written"] += len(rows)
        finally:
            batch.rows = {}
            for name, rows in parts:
                batch.rows.setdefault(name, []).extend(rows)

    def _set_aside(self, name: str, row: Row, error: str) -> None:
        """Count, log (table and key, not the row) and keep a refused row in the refused file."""
        table = TABLES_BY_NAME[name]
        values = dict(zip(table.columns, row, strict=False))
        key = {column: values.get(column) for column in table.key}
        self.counters["rows_refused"] += 1
        log.error("storage_row_refused", table=name, row_key=key, error=error[:300])
        if self.refused_path is None:
            return
        line = _refused_encoder.encode(
            {"at": round(time.time(), 3), "table": name, "error": error[:300], "row": values}
        )
        if self.refused_bytes + len(line) + 1 > REFUSED_MAX_BYTES:
            log.error("storage_refused_file_full", path=str(self.refused_path), table=name)
            return
        try:
            self.refused_path.parent.mkdir(parents=True, exist_ok=True)
            with self.refused_path.open("ab") as file:
                file.write(line + b"\n")
        except OSError as exc:
            log.error("storage_refused_file_failed", path=str(self.refused_path), error=str(exc))
            return
        self.refused_bytes += len(line) + 1

    def hurry(self) -> None:
        """End ``close``'s attempts now (a second SIGTERM): what is unwritten is spooled."""
        self._hurried = True
        if self._closing is not None:
            self._closing.cancel()

    async def close(self, deadline_s: float) -> None:
        """Last flush within ``deadline_s`` (or until ``hurry``); what cannot be written in
        time is spooled (waiting for the disk, whatever cancels the caller), or, without a
        spool or with a full one, dropped (counted)."""
        with trio.move_on_after(0 if self._hurried else deadline_s) as self._closing:
            while True:
                if await self.flush():
                    break
                await trio.sleep(min(1.0, deadline_s / 4))
        if not len(self.pending):
            return
        if self.spool is None:
            self._drop(self.pending)
            self.pending = Batch()
            return
        with trio.CancelScope(shield=True):
            await self._spool_pending(self.spool)

    def health(self) -> FlusherHealth:
        return FlusherHealth(
            **self.counters,
            pending_rows=len(self.pending) + len(self.spooling),
            spooled_batches=len(self.spool) if self.spool is not None else 0,
            spool_bytes=self.spool.size_bytes if self.spool is not None else 0,
            flush_seconds=round(self.flush_seconds, 6),
            last_flush_s=None if self.last_flush_s is None else round(self.last_flush_s, 6),
            statements=self.sink.statements,
            last_error=self.last_error,
            consecutive_failures=self.failures,
            refused_bytes=self.refused_bytes,
            probe_error=self.probe_error,
        )


def _file_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0
