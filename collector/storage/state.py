"""The daemon's state across restarts, in its state directory: what the last run left, restored
before anything is built on it (``restore``); the checkpoints that keep what this run counts
(``Checkpointer``); the id under which the daemon's parts go to Redis (``daemon_id``).

The file formats are ``checkpoint.py`` (the engine's open state and the unwritten rows) and
``journal.py`` (the streams opened since the last checkpoint); ``checkpoint.py`` also says why
the order of a checkpoint makes a ``kill -9`` at any instant lose no counted byte
(docs/RELIABILITY.md).

Never called from the ingest path: ``restore`` runs before the daemon is built, ``save`` in the
flusher's task or at start and shutdown; ``hold`` is one merge per engine output.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from collector.aggregate.alerts import AlertRule
from collector.aggregate.engine import Engine, Output
from collector.aggregate.settings import AggregateSettings
from collector.config import StorageConfig
from collector.logs import get_logger
from collector.runtime.steps import finish_between_tasks
from collector.storage import checkpoint
from collector.storage.flusher import Flusher, batch_of, decode_batch, encode_batch
from collector.storage.journal import Journal
from collector.storage.schema import Batch

log = get_logger("storage")

DAEMON_ID_FILE = "daemon-id"


@dataclass(frozen=True, slots=True)
class Restored:
    """What the last run left in the state directory, read before the daemon is built on it."""

    engine: Engine
    pending: Batch  # the rows it had not written
    errors: int  # a checkpoint or a journal that could not be read (``Checkpointer.errors``)
    notify: Any = None  # the alert notifications not delivered (``Checkpointer.notifications``)


def restore(
    state_dir: Path,
    journal: Journal | None,
    settings: AggregateSettings,
    rules: Iterable[AlertRule],
) -> Restored:
    """The engine of the last checkpoint in ``state_dir``, with the streams ``journal``
    recorded as opened after it, and the checkpoint's unwritten rows. A fresh engine (of
    ``settings`` and ``rules``) and no rows without storage (``journal`` None) or without a
    checkpoint.

    The unwritten rows come first: they are kept even when the engine's open state is not (a
    checkpoint of another version, say), which costs only the open minute. What cannot be read
    is logged and counted, never fatal."""
    rules = list(rules)
    engine = Engine(settings, rules)
    pending = Batch()
    if journal is None:
        return Restored(engine, pending, errors=0)
    engine.openings = []  # journaled as they open (``FrameConsumer.on_openings``)
    errors = 0
    journal_from = 0
    notify = None
    try:
        state = checkpoint.load(state_dir)
        if state is not None:
            pending.merge(decode_batch(state["pending"]))
            engine.restore(state["engine"], time.time())
            journal_from = state.get("journal_from", 0)
            notify = state["notify"]
    except (checkpoint.CheckpointError, ValueError, KeyError, TypeError) as exc:
        errors += 1
        log.error("checkpoint_not_restored", error=str(exc)[:300], pending_rows=len(pending))
        engine = Engine(settings, rules)
        engine.openings = []
        state = None
    try:
        opened = engine.restore_openings(journal.read(journal_from), time.time())
    except (ValueError, KeyError, TypeError) as exc:
        errors += 1
        log.error("journal_not_restored", error=str(exc)[:300])
        opened = 0
    if state is not None or opened:
        log.info(
            "checkpoint_restored",
            streams=len(engine.streams),
            routes=len(engine.routes),
            pending_rows=len(pending),
            journaled=opened,
        )
    return Restored(engine, pending, errors, notify)


class Checkpointer:
    """Checkpoints of ``engine`` and of the rows not written yet, in ``state_dir``.

    The rows the engine produces are held here (``hold``) until a checkpoint holds them too;
    ``save`` then hands them to ``flusher``. ``take`` counts what the engine produced and
    hands it on (``FrameConsumer.take``, which brings the rows back to ``hold``)."""

    def __init__(
        self,
        state_dir: Path,
        engine: Engine,
        journal: Journal,
        flusher: Flusher,
        take: Callable[[Output], None],
        errors: int = 0,
        notifications: Callable[[], Any] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.engine = engine
        self.journal = journal
        self.flusher = flusher
        self.take = take
        # The rows the engine produced since the last checkpoint: storage gets them once one
        # holds them.
        self.held = Batch()
        self.size_bytes = 0  # the last checkpoint's
        self.errors = errors  # checkpoints that could not be read (``Restored.errors``) or written
        # The alert notifications not delivered yet (``collector.notifications``), kept with
        # the engine state whose alerts they announce.
        self.notifications = notifications

    @property
    def failures(self) -> int:
        """``checkpoint_errors`` of ``/healthz``: the journal is part of the checkpoint, so its
        failed writes count too."""
        return self.errors + self.journal.errors

    def hold(self, output: Output) -> None:
        """Keep the rows of ``output`` until the next checkpoint holds them."""
        self.held.merge(batch_of(output))

    async def save(self) -> None:
        """Save the engine's open state and the unwritten rows: at start (after the restore),
        before each flush attempt and at shutdown; then hand storage the rows it holds.

        Never two at once: the flusher's task calls it, or the daemon while that task is not
        running. The order is what makes a ``kill -9`` at any instant lose no counted byte
        (collector/storage/checkpoint.py, docs/RELIABILITY.md)."""
        journal_from = self.journal.rotate()  # streams opened from here on: the new file
        gc.disable()  # millions of small objects: a collection mid-way would double the time
        try:  # in steps, letting ingest drain between them
            engine_state = await finish_between_tasks(self.engine.snapshot_steps())
        finally:
            gc.enable()
        # Rows the engine closed since its last tick (a stream's first sample of a new minute
        # closes the last one's row) are in neither the snapshot nor the held rows yet: take
        # them now, with no await before the rows are read.
        self.take(self.engine.drain())
        covered, self.held = self.held, Batch()
        try:
            unwritten = Batch()
            unwritten.merge(self.flusher.queued())  # in the spool's thread too
            unwritten.merge(covered)
            state = {
                "engine": engine_state,
                "pending": encode_batch(unwritten),
                "journal_from": journal_from,
                "notify": self.notifications() if self.notifications is not None else None,
            }
            self.size_bytes = await trio.to_thread.run_sync(checkpoint.save, self.state_dir, state)
        except checkpoint.CheckpointError as exc:
            self.errors += 1
            log.error("checkpoint_failed", error=str(exc))
        else:
            self.journal.prune(journal_from)
        finally:
            # On disk with the state taken after they closed (or, the checkpoint failing, no
            # better to be had): storage may write them now.
            self.flusher.offer_batch(covered)


def daemon_id(storage: StorageConfig) -> str | None:
    """The id under which this daemon's parts go to Redis, kept in ``<state_dir>/daemon-id``:
    after a restart the daemon takes over what its earlier run published (its first publish
    replaces it) instead of adding to it until that run is presumed dead. None (a new id each
    run) with ``backend = "none"``, which keeps nothing on disk, or when the file cannot be
    kept."""
    if storage.backend == "none":
        return None
    path = Path(storage.state_dir) / DAEMON_ID_FILE
    try:
        known = path.read_text(encoding="ascii").strip()
        if known:
            return known
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("daemon_id_unreadable", path=str(path), error=str(exc))
        return None
    new = secrets.token_hex(8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(new + "\n", encoding="ascii")
        os.replace(temp, path)
    except OSError as exc:
        log.warning("daemon_id_not_kept", path=str(path), error=str(exc))
        return None
    return new
