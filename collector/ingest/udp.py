"""UDP ingest: datagrams → decoded frame batches on a bounded channel.

The loop waits until the socket is readable, then drains it without blocking until it is empty
or ``drain_per_pass`` datagrams were read (DESIGN §4: ``await sock.recv()`` per datagram drops
most of a flood; draining reaches the speed of a blocking loop). One pass hands one list of
frames to the consumer with ``send_nowait``: a full queue is counted, never waited on, so the
kernel's receive buffer keeps draining.

Never awaits anything but the socket: no database, no Redis, no subscriber.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import trio

from collector.ingest.counters import TransportCounters
from collector.logs import get_logger
from protocol import Frame, Limits, decode_message

log = get_logger("ingest.udp")

# recv errors that concern one datagram or the peer, not the socket: skip and go on.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EINTR, errno.ENOMEM, errno.ENOBUFS})
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_udp_socket(host: str, port: int, receive_buffer_bytes: int) -> socket.socket:
    """Bind a non-blocking UDP socket with a large receive buffer; log the size the kernel gave.

    The kernel clamps SO_RCVBUF to ``net.core.rmem_max``; the deploy notes say how to raise it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    effective = receive_buffer_size(sock)
    if effective < receive_buffer_bytes:
        log.warning(
            "udp_receive_buffer_clamped",
            requested=receive_buffer_bytes,
            effective=effective,
            hint="raise net.core.rmem_max (see deploy/README.md)",
        )
    return sock


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE passes net.core.rmem_max where the process may (CAP_NET_ADMIN).
    if sys.platform == "linux":
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            pass
        else:
            return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def receive_buffer_size(sock: socket.socket) -> int:
    """The usable receive buffer in bytes (Linux reports twice that: it counts bookkeeping)."""
    reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return reported // 2 if sys.platform == "linux" else reported


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (receive buffer full), from /proc/net/udp*.

    None where the platform does not tell.
    """
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == str(inode):
                        return int(fields[-1])
        except OSError:
            continue
    return None


async def serve_udp(
    sock: socket.socket,
    out: trio.MemorySendChannel[list[Frame]],
    counters: TransportCounters,
    limits: Limits,
    drain_per_pass: int = 512,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read datagrams from ``sock`` until cancelled."""
    # One byte more than allowed: a longer datagram is truncated to this and then rejected as
    # too large instead of being decoded from a prefix.
    bufsize = limits.max_message_bytes + 1
    recv = sock.recv
    send_nowait = out.send_nowait
    task_status.started()
    while True:
        await trio.lowlevel.wait_readable(sock)
        batch: list[Frame] = []
        for _ in range(drain_per_pass):
            try:
                data = recv(bufsize)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ERRNOS:
                    raise
                continue
            decoded = decode_message(data, limits)
            counters.count(decoded, len(data))
            if decoded.frames:
                batch += decoded.frames
        if batch:
            try:
                send_nowait(batch)
            except trio.WouldBlock:
                counters.queue_full_frames += len(batch)
                counters.frames_accepted -= len(batch)
