"""bwmon's exception tree (protocol/errors.py): one root, the branches the docstring draws,
foreign errors translated once by ``map_exceptions``, and the CLI's one exit for all of them."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
import trio
import typer

from cli.bench.e2e import E2eUnavailable
from cli.bench.harness import ClientFailed
from cli.bench.statsd import StatsdUnavailable
from cli.daemon_process import DaemonFailed
from cli.emit import EmitError
from cli.main import EXIT_CONFIG, errors_exit
from cli.tail import TailError, TopicRefused
from collector.app import ListenError
from collector.auth import UnsafeBind
from collector.config import ConfigError
from collector.fanout.channel import ChannelError, ChannelUnavailable, EpochChanged
from collector.http.server import BadRequest, HeadTooLarge
from collector.runtime.bridge import BridgeCancelled, BridgeClosed, RuntimeFault
from collector.storage import checkpoint
from collector.storage.checkpoint import CheckpointError
from collector.storage.sinks import (
    DatabaseMissing,
    RowsRefused,
    SqliteSink,
    StorageError,
    StorageUnavailable,
)
from collector.storage.spool import Spool, SpoolError
from protocol import BwmonError, ProtocolError
from protocol.errors import ExceptionMapping, map_exceptions
from protocol.tokens import TokenError

# Each class and its parent in the tree of protocol/errors.py's docstring.
TREE: dict[type[Exception], type[Exception]] = {
    ProtocolError: BwmonError,
    TokenError: BwmonError,
    ConfigError: BwmonError,
    UnsafeBind: ConfigError,
    ListenError: BwmonError,
    StorageError: BwmonError,
    StorageUnavailable: StorageError,
    RowsRefused: StorageError,
    DatabaseMissing: StorageError,
    CheckpointError: StorageError,
    SpoolError: StorageError,
    ChannelError: BwmonError,
    ChannelUnavailable: ChannelError,
    EpochChanged: ChannelError,
    RuntimeFault: BwmonError,
    BridgeClosed: RuntimeFault,
    BridgeCancelled: RuntimeFault,
    BadRequest: BwmonError,
    HeadTooLarge: BwmonError,
    DaemonFailed: BwmonError,
    TailError: BwmonError,
    TopicRefused: TailError,
    EmitError: BwmonError,
    StatsdUnavailable: BwmonError,
    ClientFailed: BwmonError,
    E2eUnavailable: BwmonError,
}


@pytest.mark.parametrize(("error", "parent"), TREE.items(), ids=[e.__name__ for e in TREE])
def test_every_error_hangs_where_the_tree_says(
    error: type[Exception], parent: type[Exception]
) -> None:
    assert error.__bases__ == (parent,)


def test_the_tree_drawn_names_every_error() -> None:
    import protocol.errors

    drawn = protocol.errors.__doc__ or ""
    assert [e.__name__ for e in TREE if e.__name__ not in drawn] == []


def test_map_exceptions_translates_the_first_match_with_its_cause() -> None:
    mapping: ExceptionMapping = {OSError: SpoolError, Exception: StorageError}
    cause = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(SpoolError) as caught, map_exceptions(mapping, "cannot open the spool"):
        raise cause
    assert str(caught.value) == "cannot open the spool: [Errno 13] Permission denied"
    assert caught.value.__cause__ is cause
    with pytest.raises(ValueError, match="a bug"), map_exceptions({OSError: SpoolError}, "x"):
        raise ValueError("a bug")  # not in the mapping: passes as is
    unreachable: ExceptionMapping = {OSError: ChannelUnavailable}
    with (
        pytest.raises(ChannelUnavailable, match=r"^redis: TimeoutError$"),
        map_exceptions(unreachable, "redis"),
    ):
        raise TimeoutError  # no message: its type's name


def test_each_edge_translates_the_os_errors_of_its_disk(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot open the spool in") as spool_error:
        Spool(blocker / "spool")
    assert isinstance(spool_error.value.__cause__, OSError)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint") as written:
        checkpoint.save(blocker / "state", {"pending": b""})
    assert isinstance(written.value.__cause__, OSError)
    (tmp_path / checkpoint.NAME).write_bytes(b"\xc1")  # never valid MessagePack
    with pytest.raises(CheckpointError, match="is damaged"):
        checkpoint.load(tmp_path)


async def test_the_sqlite_sink_translates_its_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="sqlite") as unavailable:
        await SqliteSink(blocker / "bwmon.db").migrate()  # its directory cannot be made
    assert isinstance(unavailable.value.__cause__, OSError)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not sqlite\n" * 100)
    with pytest.raises(StorageError, match="file is not a database") as broken:
        await SqliteSink(damaged).migrate()
    assert isinstance(broken.value.__cause__, sqlite3.DatabaseError)
    assert not isinstance(broken.value, StorageUnavailable | RowsRefused)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("storage.backend: bad"), EXIT_CONFIG),
        (UnsafeBind("beyond loopback"), EXIT_CONFIG),
        (TopicRefused("not allowed"), EXIT_CONFIG),
        (ListenError("cannot listen on UDP"), 1),
        (SpoolError("cannot open the spool"), 1),
        (StorageUnavailable("mysql: refused"), 1),
        (TailError("no daemon"), 1),
    ],
)
def test_the_cli_ends_on_any_of_our_errors_with_one_line_and_its_status(
    error: BwmonError, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as exited, errors_exit("bwmon test"):
        raise error
    assert exited.value.exit_code == status
    assert capsys.readouterr().err == f"bwmon test: {error}\n"


def test_the_cli_takes_our_error_out_of_a_nursery_group(capsys: pytest.CaptureFixture[str]) -> None:
    async def fail() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ListenError("cannot listen on TCP 127.0.0.1:1: in use")

    with pytest.raises(typer.Exit) as exited, errors_exit():
        trio.run(fail)
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == "bwmon: cannot listen on TCP 127.0.0.1:1: in use\n"
    with pytest.raises(ExceptionGroup), errors_exit():  # not ours: a bug keeps its traceback
        raise ExceptionGroup("bug", [KeyError("x")])
