"""bwmon's exception tree: one root, and ``map_exceptions`` to translate foreign errors into it.

Every error that bwmon raises on purpose is a ``BwmonError``; errors of the libraries and the
operating system (``OSError``, asyncmy's and sqlite3's, redis-py's, msgspec's) are translated
into one of ours once, at the edge where they arise (a sink, the channel, the spool, the
checkpoint), with ``map_exceptions``. A caller catches what it can survive by its branch of
the tree; the CLI turns any ``BwmonError`` that ends a command into one line and an exit
status (``cli/main.py``). Where each class lives (it keeps its module, this module only roots
the tree)::

    BwmonError
     ├── ProtocolError            protocol.codec: a rejected message or frame (``reason``)
     ├── TokenError               protocol.tokens: a token that cannot be used (``reason``)
     ├── ConfigError              collector.config: the configuration cannot be used (exit 2)
     │    └── UnsafeBind          collector.auth: beyond loopback without authentication
     ├── ListenError              collector.app: a port cannot be bound at start
     ├── StorageError             collector.storage.errors (each re-exported where it is raised)
     │    ├── StorageUnavailable  the database cannot be reached or did not answer in time
     │    ├── RowsRefused         the database refused the rows themselves
     │    ├── DatabaseMissing     a reader found no SQLite file
     │    ├── CheckpointError     the checkpoint cannot be written or read
     │    └── SpoolError          the spool's disk cannot be used
     ├── ChannelError             collector.fanout.channel
     │    ├── ChannelUnavailable  the channel (Redis) cannot be reached now
     │    └── EpochChanged        the channel lost its state: publish everything again
     ├── RuntimeFault             collector.runtime.bridge: the asyncio side is gone
     │    ├── BridgeClosed
     │    └── BridgeCancelled
     ├── BadRequest               collector.http.server: answered 400
     ├── HeadTooLarge             collector.http.server: answered 431
     ├── DeliveryFailed           collector.notifications.client: a webhook request unanswered
     └── the CLI's own            cli: DaemonFailed, TailError (⊃ TopicRefused), TopError,
                                  EmitError, and the benchmarks' StatsdUnavailable,
                                  ClientFailed, E2eUnavailable, NpmUnavailable, PageFailed,
                                  TerserUnavailable, DashboardFailed, ChromiumMissing,
                                  ChromiumStalled

A failure the daemon can survive is counted and survived where it is caught (a storage or
spool error in the flusher, a channel error in the publisher and the channel's reader), never
a traceback that ends the daemon.

Standard library only: ``protocol`` imports nothing of ``collector``, and this module is the
root that both share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

__all__ = ["BwmonError", "ExceptionMapping", "map_exceptions"]


class BwmonError(Exception):
    """The root of bwmon's errors; see the tree in the module docstring."""


# A foreign exception type (or a tuple of them) → what it becomes, made from one message.
ExceptionMapping = Mapping[
    type[BaseException] | tuple[type[BaseException], ...], Callable[[str], BwmonError]
]


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMapping, what: str) -> Iterator[None]:
    """Raise the exception ``mapping`` gives for a foreign one raised in the block, with the
    message ``"<what>: <the foreign message>"`` (its type's name if it has none) and the
    foreign exception as its cause; the first matching entry wins, and anything unmatched
    passes as is.

    As httpcore's ``map_exceptions``: one per edge, instead of an ``except`` at every call."""
    try:
        yield
    except Exception as exc:
        for foreign, ours in mapping.items():
            if isinstance(exc, foreign):
                raise ours(f"{what}: {str(exc) or type(exc).__name__}") from exc
        raise
