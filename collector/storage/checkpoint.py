"""The checkpoint: the engine's open state and the unwritten rows, on disk, replaced atomically.

Written after every flush attempt (and at shutdown) as one MessagePack file: temp file, fsync,
``os.replace``, fsync of the directory — a crash at any moment leaves the old checkpoint or the
new one, never a torn file. Loaded at start, so a restart (even ``kill -9``) loses no counted
byte: every stream's last cumulative counters come back, and the first sample after the restart
is a delta from them, not a new baseline. Rows already written may be written again from the
restored accumulators; they are complete-aggregate upserts, so nothing is counted twice.

Never called from the ingest path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from collector.storage.sinks import StorageError

NAME = "checkpoint.msgpack"


class CheckpointError(StorageError):
    """The checkpoint cannot be written or read back."""


def save(directory: Path, state: dict[str, Any]) -> int:
    """Replace the checkpoint with ``state``; returns its size in bytes."""
    data = msgspec.msgpack.encode(state)
    path = directory / NAME
    temp = directory / (NAME + ".tmp")
    try:
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
    except OSError as exc:
        raise CheckpointError(f"cannot write the checkpoint in {directory}: {exc}") from exc
    return len(data)


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint, or None when there is none."""
    path = directory / NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    try:
        state: dict[str, Any] = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"{path} is damaged: {exc}") from exc
    return state
