"""A durable, append-only, checksummed spool of opaque byte records on local disk.

When the database is down, rows that cannot be written wait here, in append order, and survive
a daemon restart or a crash (``kill -9`` in the middle of a write included). The flusher
``peek``s the oldest records, writes them to the database, then ``ack``s them. Delivery is
at-least-once: a crash between the database commit and ``ack`` replays those records, which the
sinks' idempotent upserts absorb.

Files in the spool directory:

- ``spool.log``: records back to back. A record is an 11-byte header — magic ``b"BW"``, version
  byte ``1``, 4-byte big-endian payload length, 4-byte big-endian CRC32 of the payload — then
  the payload (at most 64 MiB).
- ``spool.pos``: the durable read position (compaction generation and byte offset) with its own
  CRC32, replaced atomically on every ``ack`` (temp file, fsync, ``os.replace``).
- ``spool.corrupt``: written only when recovery found damage in the middle of the log (below).

Recovery on open reads the unacknowledged part of the log (so opening costs one read of it) and
stops at the first bad record: a short header, wrong magic, a length over 64 MiB or past the end
of the file, or a CRC mismatch.

- No valid record after it: a torn tail (a write cut short by a crash, or garbage after the last
  record). The log is truncated there and ``truncated_bytes`` counts the bytes removed.
- A valid record after it: damage in the middle. Reading stops there, and the records after it
  are never served, because where damage ends cannot be known for sure. The bytes are not thrown
  away: they are copied to ``spool.corrupt`` (replacing an older copy, so there is at most one)
  for an operator, and ``corrupt_bytes`` counts them. Then the log is truncated at the bad record.
  Leaving the damage inside ``spool.log`` would put every later append behind a record the
  reader cannot get past.
- A record with the right magic but another version byte (a newer bwmon wrote it) is never
  truncated: opening fails with ``SpoolError`` instead.
- An unreadable ``spool.pos`` means reading from offset 0 (``position_resets`` counts it): a
  replay, which at-least-once delivery already allows, rather than a lost record.

The cost of ``fsync=True``: one ``fsync`` of the log per ``append``, about 0.1 to 10 ms on an SSD
and tens of ms on spinning or network disks, paid while holding the lock. It buys survival of a
power cut. With ``fsync=False`` written data is in the page cache, so it survives ``kill -9``
but not a power cut. The flag governs every fsync here (log, position file, directory).

Everything is bounded: the log by ``max_bytes`` (a full spool refuses the append and counts it
in ``dropped_records``/``dropped_bytes``; it never raises), a record by 64 MiB, a ``peek`` by
``limit`` records and ``max_payload_bytes``. Space is reclaimed only when everything is
acknowledged (the log is then truncated to 0 bytes), so a spool that is never fully drained
eventually refuses appends.

Errors::

    SpoolError    a StorageError (collector/storage/errors.py): the directory or files cannot be
                  used (permissions, I/O error, another process holds the spool, damage found
                  after open, a newer format); every ``OSError`` becomes one, at each public
                  method (``map_exceptions``)
    ValueError    a caller bug: payload over 64 MiB, unknown position id, closed spool

Standard library only and synchronous: callers run ``append``, ``peek`` and ``ack`` in a worker
thread (the flusher does); each call holds one lock and does a bounded amount of I/O. ``len``
and ``size_bytes`` do not wait for that lock, so a health report never waits on a slow disk.
It never touches the database, never imports trio, never raises for a full spool, and never
returns a record whose CRC does not match.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import zlib
from pathlib import Path
from types import TracebackType

from collector.storage.errors import SpoolError as SpoolError
from protocol.errors import ExceptionMapping, map_exceptions

MAGIC = b"BW"
VERSION = 1
HEADER = struct.Struct(">2sBII")  # magic, version, payload length, CRC32 of the payload
HEADER_SIZE = HEADER.size
MAX_RECORD_BYTES = 64 * 2**20
DEFAULT_MAX_BYTES = 256 * 2**20
PEEK_MAX_PAYLOAD_BYTES = 64 * 2**20

LOG_NAME = "spool.log"
POS_NAME = "spool.pos"
CORRUPT_NAME = "spool.corrupt"

_POS_BODY = struct.Struct(">4sQQ")  # magic, generation, offset
_POS_CRC = struct.Struct(">I")
_POS_MAGIC = b"BWP1"
# A position id is generation << _OFFSET_BITS | offset: an id handed out before a compaction
# can never be mistaken for a record written after it.
_OFFSET_BITS = 48
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_COPY_CHUNK = 2**20
_RECORD_START = MAGIC + bytes([VERSION])
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# The disk's errors as ours, at each public method.
_ERRORS: ExceptionMapping = {OSError: SpoolError}


def encode_record(payload: bytes) -> bytes:
    """One record exactly as stored in ``spool.log``: header, then payload."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"spool record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    return HEADER.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool in one directory; one ``Spool`` per directory at a time (an flock enforces it)."""

    def __init__(
        self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES, fsync: bool = True
    ) -> None:
        if not 0 < max_bytes <= _OFFSET_MASK:
            raise ValueError(f"max_bytes must be between 1 and {_OFFSET_MASK}, not {max_bytes}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.truncated_bytes = 0
        self.corrupt_bytes = 0
        self.position_resets = 0
        self.dropped_records = 0
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._read_pos = 0
        self._end = 0
        self._count = 0
        self._broken: str | None = None
        self._fd: int | None = None
        with map_exceptions(_ERRORS, f"cannot open the spool in {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                directory / LOG_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"the spool in {directory} is in use by another process") from exc
        self._fd = fd
        try:
            with map_exceptions(_ERRORS, f"cannot recover the spool in {directory}"):
                self._recover(fd)
        except BaseException:
            self._close_fd()
            raise

    # -- public API -----------------------------------------------------------------------

    def append(self, payload: bytes) -> bool:
        """Add one record at the end; False (counted) when the spool is full."""
        record = encode_record(payload)
        with self._lock, map_exceptions(_ERRORS, f"cannot append to the spool in {self.directory}"):
            fd = self._require_open()
            if self._end + len(record) > self.max_bytes:
                self._drop(len(payload))
                return False
            try:
                _write_all(fd, record)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._roll_back_append(fd, exc)
                if exc.errno in _DISK_FULL:
                    self._drop(len(payload))
                    return False
                raise
            self._end += len(record)
            self._count += 1
            return True

    def peek(
        self, limit: int = 100, *, max_payload_bytes: int = PEEK_MAX_PAYLOAD_BYTES
    ) -> list[tuple[int, bytes]]:
        """The oldest unacknowledged records, in append order, each with its position id.

        At most ``limit`` records, and no more payload than ``max_payload_bytes`` except that
        the first record is always returned whole.
        """
        if limit < 0:
            raise ValueError(f"peek limit must not be negative, not {limit}")
        with self._lock, map_exceptions(_ERRORS, f"cannot read the spool in {self.directory}"):
            fd = self._require_open()
            records: list[tuple[int, bytes]] = []
            total = 0
            pos = self._read_pos
            while len(records) < limit and pos < self._end:
                length, crc = self._read_header(fd, pos)
                if records and total + length > max_payload_bytes:
                    break
                payload = _pread_exact(fd, length, pos + HEADER_SIZE)
                if len(payload) != length or zlib.crc32(payload) != crc:
                    raise SpoolError(
                        f"{self.directory / LOG_NAME} was damaged at byte {pos} after open"
                    )
                records.append((self._position_id(pos), payload))
                total += length
                pos += HEADER_SIZE + length
            return records

    def ack(self, upto: int) -> None:
        """The records up to and including position id ``upto`` are in the database."""
        with (
            self._lock,
            map_exceptions(_ERRORS, f"cannot acknowledge in the spool in {self.directory}"),
        ):
            fd = self._require_open()
            if upto < 0:
                raise ValueError(f"unknown spool position id {upto}")
            generation, offset = upto >> _OFFSET_BITS, upto & _OFFSET_MASK
            if generation < self._generation or (
                generation == self._generation and offset < self._read_pos
            ):
                return  # acknowledged already (before a compaction, or by an earlier ack)
            if generation > self._generation or offset >= self._end:
                raise ValueError(f"unknown spool position id {upto}")
            pos, acked = self._read_pos, 0
            while pos < offset:
                pos += HEADER_SIZE + self._read_header(fd, pos)[0]
                acked += 1
            if pos != offset:
                raise ValueError(f"spool position id {upto} is not the start of a record")
            pos += HEADER_SIZE + self._read_header(fd, pos)[0]
            acked += 1
            if pos == self._end:
                self._compact(fd)
            else:
                self._store_position(self._generation, pos)
                self._read_pos = pos
                self._count -= acked

    def __len__(self) -> int:
        """Unacknowledged records, as of the last call that finished (read without the lock:
        a health report must not wait for an ``append`` stuck in fsync)."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes of the log file, acknowledged records included until the next compaction (as
        of the last call that finished, like ``len``)."""
        return self._end

    def close(self) -> None:
        """Release the directory; closing twice is fine."""
        with self._lock:
            self._close_fd()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self, fd: int) -> None:
        if self.fsync:
            _fsync_directory(self.directory)  # the log may have just been created
        size = os.fstat(fd).st_size
        generation, offset = self._load_position()
        if offset > size:
            # Compaction truncated the log and the process died before the new position was
            # written: nothing is left to read.
            generation, offset = generation + 1, 0
            self._store_position(generation, offset)
        self._generation, self._read_pos = generation, offset
        end, count = offset, 0
        while end < size:
            length = self._valid_record_length(fd, end, size, at_scan=True)
            if length is None:
                break
            end += HEADER_SIZE + length
            count += 1
        if end < size:
            if self._valid_record_after(fd, end + 1, size):
                self._quarantine(fd, end, size)
                self.corrupt_bytes += size - end
            else:
                self.truncated_bytes += size - end
            os.ftruncate(fd, end)
            if self.fsync:
                os.fsync(fd)
        self._end, self._count = end, count
        if count == 0 and end > 0:
            self._compact(fd)

    def _load_position(self) -> tuple[int, int]:
        try:
            data = (self.directory / POS_NAME).read_bytes()
        except FileNotFoundError:
            return 0, 0
        if len(data) == _POS_BODY.size + _POS_CRC.size:
            body, (crc,) = data[: _POS_BODY.size], _POS_CRC.unpack(data[_POS_BODY.size :])
            magic, generation, offset = _POS_BODY.unpack(body)
            if magic == _POS_MAGIC and crc == zlib.crc32(body) and offset <= _OFFSET_MASK:
                return int(generation), int(offset)
        self.position_resets += 1
        return 0, 0

    def _valid_record_length(self, fd: int, pos: int, size: int, at_scan: bool) -> int | None:
        """The payload length of an intact record at ``pos``, or None."""
        header = _pread_exact(fd, HEADER_SIZE, pos)
        if len(header) < HEADER_SIZE:
            return None
        magic, version, length, crc = HEADER.unpack(header)
        if magic != MAGIC:
            return None
        if version != VERSION:
            if at_scan:
                raise SpoolError(
                    f"{self.directory / LOG_NAME} holds a record of format version {version}"
                    f" at byte {pos}; this bwmon reads version {VERSION} and will not touch it"
                )
            return None
        if length > MAX_RECORD_BYTES or pos + HEADER_SIZE + length > size:
            return None
        payload = _pread_exact(fd, length, pos + HEADER_SIZE)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return None
        return int(length)

    def _valid_record_after(self, fd: int, start: int, size: int) -> bool:
        carry = b""
        pos = start
        while pos < size:
            chunk = os.pread(fd, min(_COPY_CHUNK, size - pos), pos)
            if not chunk:
                break
            window, base = carry + chunk, pos - len(carry)
            i = window.find(_RECORD_START)
            while i != -1:
                if self._valid_record_length(fd, base + i, size, at_scan=False) is not None:
                    return True
                i = window.find(_RECORD_START, i + 1)
            carry = window[-(len(_RECORD_START) - 1) :]
            pos += len(chunk)
        return False

    def _quarantine(self, fd: int, start: int, size: int) -> None:
        tmp = self.directory / (CORRUPT_NAME + ".tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pos = start
            while pos < size:
                chunk = os.pread(fd, min(_COPY_CHUNK, size - pos), pos)
                if not chunk:
                    break
                _write_all(out, chunk)
                pos += len(chunk)
            if self.fsync:
                os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, self.directory / CORRUPT_NAME)
        if self.fsync:
            _fsync_directory(self.directory)

    # -- helpers ----------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError("the spool is closed")
        if self._broken is not None:
            raise SpoolError(self._broken)
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the flock too

    def _drop(self, payload_bytes: int) -> None:
        self.dropped_records += 1
        self.dropped_bytes += payload_bytes

    def _roll_back_append(self, fd: int, cause: OSError) -> None:
        try:
            os.ftruncate(fd, self._end)
        except OSError:
            # A partial record may remain at the end; appending after it would make every later
            # record unreachable. Reopening recovers (it is a torn tail).
            self._broken = f"the spool in {self.directory} needs reopening after: {cause}"
            raise SpoolError(self._broken) from cause

    def _position_id(self, offset: int) -> int:
        return self._generation << _OFFSET_BITS | offset

    def _read_header(self, fd: int, pos: int) -> tuple[int, int]:
        """Payload length and CRC of the record at ``pos``, which recovery has already checked."""
        header = _pread_exact(fd, HEADER_SIZE, pos)
        if len(header) < HEADER_SIZE:
            raise SpoolError(f"{self.directory / LOG_NAME} is shorter than expected at {pos}")
        magic, version, length, crc = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION or pos + HEADER_SIZE + length > self._end:
            raise SpoolError(f"{self.directory / LOG_NAME} was damaged at byte {pos} after open")
        return int(length), int(crc)

    def _compact(self, fd: int) -> None:
        """Everything is acknowledged: empty the log and start a new generation of ids."""
        os.ftruncate(fd, 0)
        if self.fsync:
            os.fsync(fd)
        self._generation += 1
        self._read_pos = self._end = self._count = 0
        try:
            self._store_position(self._generation, 0)
        except OSError as exc:
            # The old position now points past the end of an empty log, which reopening
            # handles; appending first could let that stale position skip new records.
            self._broken = f"the spool in {self.directory} needs reopening after: {exc}"
            raise SpoolError(self._broken) from exc

    def _store_position(self, generation: int, offset: int) -> None:
        body = _POS_BODY.pack(_POS_MAGIC, generation, offset)
        data = body + _POS_CRC.pack(zlib.crc32(body))
        tmp = self.directory / (POS_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / POS_NAME)
        if self.fsync:
            _fsync_directory(self.directory)
