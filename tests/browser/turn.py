"""A real coturn (Debian's ``turnserver``) of the test's own on loopback, for calls relayed
through TURN over UDP and over TCP.

One listening port serves both transports (coturn opens a UDP and a TCP listener on it); a
static long-term credential (``lt-cred-mech``); no TLS, no CLI, nothing read from /etc. Relaying
to 127.0.0.1 needs ``--allow-loopback-peers`` (the relay addresses of a loopback-only server are
loopback addresses). The server is ready once it answers a STUN binding request over UDP and
accepts a TCP connection; its log stays in the given directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import free_port

USER = "bwmon"
PASSWORD = "relay-secret"
REALM = "bwmon.test"

# A STUN binding request (RFC 5389): type 0x0001, no attributes, the magic cookie, an id.
_BINDING = bytes.fromhex("0001 0000 2112a442") + os.urandom(12)


class TurnMissing(RuntimeError):
    """No ``turnserver`` to start."""


@dataclass(frozen=True)
class TurnServer:
    port: int
    log_path: Path

    @property
    def server(self) -> str:
        """The TURN server as the daemon names it: the URL without its query."""
        return f"turn:127.0.0.1:{self.port}"

    def url(self, transport: str) -> str:
        """The ICE server URL, as a page passes it and getStats reports it back (``url``)."""
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def ice_server(self, transport: str) -> dict[str, Any]:
        """One ``RTCIceServer`` entry of an ``RTCConfiguration``."""
        return {"urls": self.url(transport), "username": USER, "credential": PASSWORD}


def turnserver_path() -> str:
    path = os.environ.get("BWMON_TURNSERVER") or shutil.which("turnserver")
    if path is None and os.path.exists("/usr/sbin/turnserver"):
        path = "/usr/sbin/turnserver"  # Debian's, outside a non-root PATH
    if path is None:
        raise TurnMissing(
            "no coturn found: install Debian's package (apt-get install coturn) "
            "or set BWMON_TURNSERVER to the turnserver's path"
        )
    return path


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.2)
        try:
            udp.sendto(_BINDING, ("127.0.0.1", port))
            reply = udp.recv(512)
        except OSError:
            return False
    if reply[:2] != b"\x01\x01" or reply[8:20] != _BINDING[8:20]:
        return False
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@contextmanager
def running_turn(directory: Path, ready_timeout_s: float = 10.0) -> Iterator[TurnServer]:
    """coturn on a free loopback port (UDP and TCP), stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "turnserver.log"
    command = [
        turnserver_path(),
        "--no-stdout-log",
        "-n",  # no configuration file
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        "--lt-cred-mech",
        f"--user={USER}:{PASSWORD}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--fingerprint",
        f"--log-file={log_path}",
        "--simple-log",
        f"--pidfile={directory / 'turnserver.pid'}",
        f"--userdb={directory / 'turndb'}",
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise TurnMissing(f"turnserver did not answer on port {port}: see {log_path}")
            time.sleep(0.05)
        yield TurnServer(port, log_path)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
