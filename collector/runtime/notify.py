"""systemd's notify protocol: tell the service manager the daemon is ready, what it is doing,
that its event loop is alive, and that it is stopping.

``Notifier.from_environ()`` reads ``NOTIFY_SOCKET`` (a path, or an abstract socket when it starts
with ``@``), ``WATCHDOG_USEC`` and ``WATCHDOG_PID``; without ``NOTIFY_SOCKET`` every method does
nothing, so the daemon runs the same outside systemd. Messages (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1``) are datagrams on a non-blocking AF_UNIX socket, standard library
only. ``serve_watchdog`` pings from the trio event loop itself, so a stalled loop stops the pings
and systemd restarts the daemon.

This module must never raise into the daemon and never block the event loop: a failed send is
counted in ``Notifier.errors`` and logged once, and a full socket buffer drops the message.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import trio

from collector.logs import get_logger

__all__ = ["Notifier", "serve_watchdog", "watchdog_interval_s"]

log = get_logger("notify")

# systemd reads one datagram per message; STATUS= is shown by `systemctl status` on one line.
MAX_STATUS_CHARS = 512


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd asks for, in seconds, or None when there is none for this
    process (``WATCHDOG_USEC`` absent, not a positive integer, or ``WATCHDOG_PID`` naming
    another process)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notify messages to systemd; a no-op when ``address`` is None."""

    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("notify_socket_invalid", notify_socket=raw[:200])
        return cls(address, watchdog_interval_s(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; True if it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("notify_failed", error=str(exc), message=lines[0][:40])
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """A reload starts (``READY=1`` again when it is done, whatever its outcome)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", _status_line(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:MAX_STATUS_CHARS]


async def serve_watchdog(
    notifier: Notifier, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Send ``WATCHDOG=1`` every half watchdog interval until cancelled; return at once when
    systemd asked for no watchdog."""
    task_status.started()
    interval = notifier.watchdog_s
    if interval is None:
        return
    log.info("watchdog_started", interval_s=interval)
    while True:
        notifier.watchdog()
        await trio.sleep(interval / 2)
