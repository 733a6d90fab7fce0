"""The checkpoint: the engine's open state and the unwritten rows, on disk, replaced atomically.

One MessagePack file: temp file, fsync, ``os.replace``, fsync of the directory — a crash at any
moment leaves the old checkpoint or the new one, never a torn file. Loaded at start, so a
restart (even ``kill -9``) loses no counted byte: every stream's last cumulative counters come
back, and the first sample after the restart is a delta from them, not a new baseline.

What makes that hold at any instant of a kill (``Checkpointer.save``, ``state.py``):

- When: right after the restore at start (before the first frame), before every flush attempt
  and at shutdown.
- Streams opened since the last checkpoint are not in it; the journal (``journal.py``) holds
  them from the moment they open, and the checkpoint names the journal file its snapshot
  started with (``journal_from``): at start, the journal's records from there on are replayed
  over the restored state.
- Rows reach storage only once a checkpoint holds them (its ``pending``) together with a state
  taken after they closed. A row written to the database is then never newer than the state a
  restart comes back to, so the next sample's delta cannot count its bytes a second time; rows
  already written may be written again from the restored state: they are complete-aggregate
  upserts, and a restored open minute replaces its row with what the restored state held, the
  rest coming back in the next sample's delta.

What no checkpoint can bring back: the samples of a stream that ended (sent its last sample)
between the last checkpoint and a kill, as no later sample carries them (a flush interval at
most while the database answers), and what a kill finds in the socket's receive buffer (lost
as a datagram on the way would be: PROTOCOL.md §8.5). If a checkpoint cannot be written
(counted, logged), its rows are written all the same, and a kill before the next good one may
count part of a minute twice or lose it.

The file's format has a version (``VERSION``, the key ``version``); ``load`` migrates an older
one to the current shape and refuses a newer one (``CheckpointError``):

- 1 (no ``version`` key): ``engine``, ``pending``, ``journal_from``.
- 2: adds ``notify``, the alert notifications not delivered yet, per sink
  (``collector.notifications.notifier``); a version 1 checkpoint migrates with none pending.

Never called from the ingest path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from collector.storage.errors import CheckpointError as CheckpointError
from protocol.errors import ExceptionMapping, map_exceptions

NAME = "checkpoint.msgpack"
VERSION = 2

# The checkpoint's foreign errors as ours: the disk's, and a file msgpack cannot read.
_ERRORS: ExceptionMapping = {(OSError, msgspec.DecodeError): CheckpointError}


def save(directory: Path, state: dict[str, Any]) -> int:
    """Replace the checkpoint with ``state`` (the current ``VERSION``'s keys); returns its size
    in bytes."""
    data = msgspec.msgpack.encode({"version": VERSION, **state})
    path = directory / NAME
    temp = directory / (NAME + ".tmp")
    with map_exceptions(_ERRORS, f"cannot write the checkpoint in {directory}"):
        directory.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(data)


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint in the current version's shape, or None when there is none."""
    path = directory / NAME
    with map_exceptions(_ERRORS, f"cannot read {path}"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
    with map_exceptions(_ERRORS, f"{path} is damaged"):
        state: dict[str, Any] = msgspec.msgpack.decode(data)
    return migrate(state, path)


def migrate(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` of any version this build reads, in the current version's shape."""
    version = state.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} is of format version {version!r}; this bwmon reads up to {VERSION}"
        )
    if version < 2:
        state["notify"] = None  # no notification was pending before sinks existed
    state["version"] = VERSION
    return state
