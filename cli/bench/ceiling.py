"""The bare receiver of ``bwmon bench all``: the machine's ceiling for UDP ingest in Python.

A drain loop and the protocol's ``decode_message``, nothing else: no event loop, no queue, no
aggregation. It binds its socket the way the daemon does (``open_udp_socket``, the daemon's
default receive buffer), waits in ``select`` for the socket or a command on stdin, reads every
datagram waiting (non-blocking ``recv`` until the socket is empty) and decodes each, counting
frames. Whatever rate it keeps without loss is what any Python receiver on this core can
reach; ``ratio_to_ceiling`` is the daemon's lossless rate over it.

Run as ``python -m cli.bench.ceiling``: it answers ``port`` (its port and receive buffer) and
``count`` (its counts) with one JSON line each; ``quit`` or the end of stdin ends it, and so
does its ``--deadline``. It never sends anything.
"""

from __future__ import annotations

import argparse
import select
import sys
import time

import msgspec

from cli.bench.harness import answer, daemon_udp_limits
from collector.config import IngestConfig
from collector.ingest.udp import open_udp_socket, receive_buffer_size
from protocol import decode_message


class Counts(msgspec.Struct):
    frames: int = 0
    datagrams: int = 0
    bad_frames: int = 0


def serve(host: str, receive_buffer_bytes: int, deadline_s: float) -> None:
    limits = daemon_udp_limits()
    sock = open_udp_socket(host, 0, receive_buffer_bytes)
    sock.setblocking(False)
    address = {"port": sock.getsockname()[1], "receive_buffer_bytes": receive_buffer_size(sock)}
    counts = Counts()
    recv, bufsize = sock.recv, limits.max_message_bytes
    stdin = sys.stdin.fileno()
    ends = time.monotonic() + deadline_s
    try:
        while (left := ends - time.monotonic()) > 0:
            readable, _, _ = select.select([sock, stdin], [], [], min(left, 1.0))
            if sock in readable:
                while True:
                    try:
                        data = recv(bufsize)
                    except BlockingIOError:
                        break
                    counts.datagrams += 1
                    decoded = decode_message(data, limits)
                    counts.frames += len(decoded.frames)
                    counts.bad_frames += len(decoded.errors)
            if stdin in readable:
                line = sys.stdin.readline().strip()
                if line == "count":
                    answer(counts)
                elif line == "port":
                    answer(address)
                elif not line or line == "quit":
                    return
                else:
                    answer({"error": f"unknown command {line!r}"})
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bwmon bench all: the bare UDP receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--receive-buffer", type=int, default=IngestConfig().udp_receive_buffer_bytes
    )
    parser.add_argument("--deadline", type=float, default=900, help="exit after this many s")
    args = parser.parse_args(argv)
    serve(args.host, args.receive_buffer, args.deadline)


if __name__ == "__main__":
    main()
