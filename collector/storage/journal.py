"""The journal: the streams opened since the last checkpoint, on disk as they open.

Why: the checkpoint (``checkpoint.py``) brings back every stream it holds, so the first sample
after a restart is a delta from the counters the stream had reached. A stream that opened after
the last checkpoint is not in it: after a ``kill -9`` its next sample (``q`` above 0, of a stream
the daemon does not know) is a baseline (PROTOCOL.md §8.5) and everything it had sent is lost.
What the daemon must know to count that stream exactly is small and fixed the moment it opens:
its identity and the counters it reached with what of them it counted (an ``rtc`` stream's state
after its first sample; an HTTP instance from 0, or at its baseline). The engine records that
(``Engine.openings``); the daemon appends the records here right after the batch that opened the
streams, before anything else runs, so a process killed at any instant has either journaled a
stream or never applied its first sample (as if that datagram had been lost on the way).

Files: ``journal-<n>`` in the state directory, length-prefixed MessagePack records, appended
with one ``write`` per batch that opened streams (no ``fsync``: the page cache outlives the
process; the checkpoint is the one fsynced). Each checkpoint starts a new file before it takes
its snapshot (``rotate``) and names it in the checkpoint (``journal_from``); once the checkpoint
is on disk, the older files are deleted (``prune``). At start, the records of the files from
``journal_from`` on are replayed over the restored checkpoint (``Engine.restore_openings``).
A torn last record (a kill mid-write) is ignored.

Called from the ingest path: ``append`` is one ``write`` of a few hundred bytes per new stream,
and nothing here ever waits on anything else. Errors are counted and logged, never raised to
ingest.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from collector.logs import get_logger

log = get_logger("storage")

PREFIX = "journal-"
_LENGTH = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()


def _files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        entries = list(directory.iterdir())
    except OSError:  # none yet; or unusable, which the first append reports
        return []
    for path in entries:
        number = path.name.removeprefix(PREFIX)
        if path.name.startswith(PREFIX) and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


class Journal:
    """Appends opening records to ``<directory>/journal-<seq>``; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        files = _files(directory)
        self.seq = files[-1][0] + 1 if files else 0  # the file appends go to
        self._fd: int | None = None
        self.records = 0  # appended by this process
        self.errors = 0

    def read(self, from_seq: int = 0) -> Iterator[list[Any]]:
        """The records of the files numbered ``from_seq`` and later, oldest first."""
        for number, path in _files(self.directory):
            if number < from_seq:
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.errors += 1
                log.error("journal_unreadable", path=str(path), error=str(exc))
                continue
            at = 0
            while at + _LENGTH.size <= len(data):
                (size,) = _LENGTH.unpack_from(data, at)
                end = at + _LENGTH.size + size
                if end > len(data):
                    break  # torn by a kill mid-write: this record was never whole
                try:
                    record = msgspec.msgpack.decode(data[at + _LENGTH.size : end])
                except msgspec.DecodeError:
                    self.errors += 1
                    log.error("journal_damaged", path=str(path), offset=at)
                    break
                at = end
                if isinstance(record, list) and record:
                    yield record

    def append(self, records: list[list[Any]]) -> None:
        """Append ``records`` with one ``write``."""
        data = bytearray()
        for record in records:
            payload = _encoder.encode(record)
            data += _LENGTH.pack(len(payload))
            data += payload
        try:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(
                    self.directory / f"{PREFIX}{self.seq}",
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            self.errors += 1
            log.error("journal_failed", error=str(exc), records=len(records))
            return
        self.records += len(records)

    def rotate(self) -> int:
        """Start a new file (a checkpoint is about to take its snapshot); its number."""
        self.close()
        self.seq += 1
        return self.seq

    def prune(self, below: int) -> None:
        """Delete the files numbered below ``below`` (a checkpoint holds what they held)."""
        for number, path in _files(self.directory):
            if number < below:
                try:
                    path.unlink()
                except OSError as exc:
                    log.warning("journal_not_pruned", path=str(path), error=str(exc))

    def close(self) -> None:
        """Close the current file; the next ``append`` opens it again."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
