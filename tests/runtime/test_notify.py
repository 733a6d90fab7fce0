"""The systemd notify client against real unix datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from collector.runtime.notify import Notifier, serve_watchdog, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def drain(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return messages


def test_messages_arrive_on_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on\nudp 127.0.0.1:9")
    assert notifier.status("busy")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    assert [sock.recv(4096).decode() for _ in range(4)] == [
        "READY=1\nSTATUS=listening on udp 127.0.0.1:9",
        "STATUS=busy",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert (notifier.sent, notifier.errors) == (4, 0)


def test_messages_arrive_on_an_abstract_socket() -> None:
    name = f"bwmon-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert notifier.stopping("bye")
        notifier.close()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_without_notify_socket_every_method_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    notifier.close()
    assert (notifier.sent, notifier.errors) == (0, 0)


def test_a_relative_notify_socket_is_ignored() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_send_errors_are_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert (notifier.sent, notifier.errors) == (0, 2)
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.4),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval_from_the_environment(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_s(environ) == expected


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 2.0


async def test_serve_watchdog_pings_every_half_interval(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_s == 0.1
    with trio.move_on_after(0.33):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_watchdog, notifier)
    notifier.close()
    pings = drain(sock)
    # One at start, then every 0.05 s: about 7 in 0.33 s; a loaded machine sends fewer.
    assert 3 <= len(pings) <= 8
    assert set(pings) == {"WATCHDOG=1"}


async def test_serve_watchdog_returns_at_once_without_a_watchdog(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_watchdog, notifier)
    notifier.close()
    assert drain(sock) == []
