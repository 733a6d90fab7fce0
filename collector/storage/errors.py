"""The storage branch of bwmon's exception tree (``protocol/errors.py`` draws all of it)::

    StorageError              base: storage cannot do what was asked
     ├── StorageUnavailable   the database cannot be reached or did not answer in time:
     │                        retry later, the rows are kept
     ├── RowsRefused          the database refused the rows themselves (a value too long or out
     │                        of range, a constraint): the same rows would fail the same way
     ├── DatabaseMissing      a reader found no SQLite file where the configuration points
     ├── CheckpointError      the checkpoint cannot be written or read back
     └── SpoolError           the spool's directory or files cannot be used

Each edge translates its foreign errors here once, with ``map_exceptions``: the sinks
(``sinks.py``: sqlite3, asyncmy, ``OSError``), the spool (``spool.py``: ``OSError``) and the
checkpoint (``checkpoint.py``: ``OSError``, msgspec). The flusher counts and survives every
``StorageError`` while the daemon runs.

Standard library only (and the tree's root), so that the spool, which never imports trio or a
database driver, can raise its branch of it.
"""

from __future__ import annotations

from protocol.errors import BwmonError


class StorageError(BwmonError):
    """Base of the storage errors."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or did not answer in time; the batch is kept."""


class RowsRefused(StorageError):
    """The database refused the rows written (their values, not its state): retrying the same
    rows fails the same way. The write was rolled back whole."""


class DatabaseMissing(StorageError):
    """A read-only sink found no database file; the message names the absolute path."""


class CheckpointError(StorageError):
    """The checkpoint cannot be written or read back."""


class SpoolError(StorageError):
    """The spool cannot be used: permissions, an I/O error, another process holds it, damage
    found after open, a newer format (``spool.py``)."""
