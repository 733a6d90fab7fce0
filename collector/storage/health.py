"""What storage reports in ``/healthz`` (``storage``) and ``/metrics``: the flusher's counters
(``Flusher.health``) and the checkpoint's, under the configured backend."""

from __future__ import annotations

import msgspec


class FlusherHealth(msgspec.Struct, kw_only=True, gc=False):
    rows_written: int
    flushes: int
    failed_flushes: int
    rows_spooled: int
    rows_dropped: int
    rows_refused: int  # set aside in the refused file
    spool_errors: int
    pending_rows: int
    spooled_batches: int
    spool_bytes: int
    flush_seconds: float  # every attempt, failed ones included
    last_flush_s: float | None
    statements: int
    last_error: str | None
    consecutive_failures: int  # failed attempts since the last success
    refused_bytes: int
    probe_error: str | None  # None while the database answers the probe


class StorageHealth(msgspec.Struct, kw_only=True, gc=False):
    """``storage`` with a backend: its name, the flusher's counters (``FlusherHealth``, the
    same keys, inline) and the checkpoint's (the journal's failed writes count as checkpoint
    errors)."""

    backend: str
    rows_written: int
    flushes: int
    failed_flushes: int
    rows_spooled: int
    rows_dropped: int
    rows_refused: int
    spool_errors: int
    pending_rows: int
    spooled_batches: int
    spool_bytes: int
    flush_seconds: float
    last_flush_s: float | None
    statements: int
    last_error: str | None
    consecutive_failures: int
    refused_bytes: int
    probe_error: str | None
    checkpoint_bytes: int
    checkpoint_errors: int

    @classmethod
    def of(
        cls, backend: str, flusher: FlusherHealth, checkpoint_bytes: int, checkpoint_errors: int
    ) -> StorageHealth:
        return cls(
            backend=backend,
            **msgspec.structs.asdict(flusher),
            checkpoint_bytes=checkpoint_bytes,
            checkpoint_errors=checkpoint_errors,
        )


class NoStorageHealth(msgspec.Struct, kw_only=True, gc=False):
    """``storage`` with ``backend = "none"``."""

    backend: str = "none"
