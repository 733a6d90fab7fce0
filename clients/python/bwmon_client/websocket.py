"""The ``ws://`` transport: a WebSocket session to the daemon's ``/ingest`` (PROTOCOL.md §7),
with the standard library only.

One session at a time: the first send connects (the upgrade, then the ``hello`` and its
``welcome``); each flush is one or more binary MessagePack messages; a reader thread answers the
daemon's pings and reads its acks and errors (a client must keep reading, §7.6). Any failure
drops the session: the next flush opens a new one (counters are cumulative, §7.7). ``close``
waits a moment for the ack of the last message, then closes the session.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import threading
import time
import urllib.parse
from typing import Any, Final

import msgspec

from protocol.codec import encode_msgpack
from protocol.emitter import pack
from protocol.frames import Hello, HttpSample

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT_S: Final = 10.0  # connecting, the welcome, one write
ACK_WAIT_S: Final = 1.5  # at close: the daemon acks every second (§7.5)
MAX_HEADER_BYTES: Final = 16384
MAX_REPLY_BYTES: Final = 1 << 20
MESSAGE_BUDGET: Final = 64 * 1024
MAX_FRAMES: Final = 500  # per message, or fewer if the welcome says so

_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class SessionError(Exception):
    """The session failed: it is dropped, and the next send opens another."""


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (RFC 6455 §5.2: client frames are masked)."""
    size = len(payload)
    header = bytearray((0x80 | opcode,))
    if size < 126:
        header.append(0x80 | size)
    elif size < 1 << 16:
        header.append(0x80 | 126)
        header += size.to_bytes(2, "big")
    else:
        header.append(0x80 | 127)
        header += size.to_bytes(8, "big")
    mask = os.urandom(4)
    header += mask
    if not size:
        return bytes(header)
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return bytes(header) + (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")


class _Session:
    def __init__(self, host: str, port: int, path: str, hello: Hello) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
        self.buffer = b""
        self.write_lock = threading.Lock()
        self.sent = 0  # messages after the hello (§7.2)
        self.acked = 0
        self.rejected = 0
        self.alive = True
        self.acked_event = threading.Condition()
        try:
            self._upgrade(host, port, path)
            self._write(_BINARY, encode_msgpack(hello))
            welcome = self._read_message()
            if welcome.get("t") != "welcome":
                raise SessionError(f"no welcome: {welcome!r}")
            self.max_frames = max(min(int(welcome.get("max_frames", MAX_FRAMES)), MAX_FRAMES), 1)
            self.max_bytes = min(
                int(welcome.get("max_message_bytes", MESSAGE_BUDGET)), MESSAGE_BUDGET
            )
        except BaseException:
            self.sock.close()
            raise
        self.reader = threading.Thread(target=self._read_all, name="bwmon-ws-reader", daemon=True)
        self.reader.start()

    def _upgrade(self, host: str, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise SessionError("upgrade answer too long")
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1:2] != ["101"]:
            raise SessionError(f"upgrade refused: {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if headers.get("sec-websocket-accept") != accept:
            raise SessionError("bad sec-websocket-accept")

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise SessionError("connection closed")
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._take(2), "big")
        elif size == 127:
            size = int.from_bytes(self._take(8), "big")
        if size > MAX_REPLY_BYTES:
            raise SessionError("reply too large")
        mask = self._take(4) if second & 0x80 else b""
        payload = self._take(size)
        if mask:
            key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")
        return bool(first & 0x80), first & 0x0F, payload

    def _read_message(self) -> dict[str, Any]:
        """The next data message, decoded; pings are answered on the way."""
        parts: list[bytes] = []
        while True:
            final, opcode, payload = self._read_frame()
            if opcode == _PING:
                self._write(_PONG, payload)
            elif opcode == _CLOSE:
                raise SessionError("closed by the daemon")
            elif opcode in (_TEXT, _BINARY, 0):
                parts.append(payload)
                if final:
                    data = b"".join(parts)
                    decoded: Any = (
                        msgspec.json.decode(data)
                        if data[:1] == b"{"
                        else msgspec.msgpack.decode(data)
                    )
                    return decoded if isinstance(decoded, dict) else {}

    def _read_all(self) -> None:
        try:
            while self.alive:
                try:
                    reply = self._read_message()
                except TimeoutError:
                    continue
                if reply.get("t") == "ack":
                    with self.acked_event:
                        self.acked = int(reply.get("msg", 0))
                        self.rejected = int(reply.get("rejected", 0))
                        self.acked_event.notify_all()
        except Exception:
            pass
        self.alive = False
        with self.acked_event:
            self.acked_event.notify_all()

    def _write(self, opcode: int, payload: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(_masked_frame(opcode, payload))

    def send(self, samples: list[HttpSample]) -> None:
        if not self.alive:
            raise SessionError("session ended")
        for start in range(0, len(samples), self.max_frames):
            batch = samples[start : start + self.max_frames]
            for message, _count in pack((encode_msgpack(s) for s in batch), self.max_bytes):
                self._write(_BINARY, message)
                self.sent += 1

    def close(self) -> None:
        deadline = time.monotonic() + ACK_WAIT_S
        with self.acked_event:
            while self.alive and self.acked < self.sent and time.monotonic() < deadline:
                self.acked_event.wait(deadline - time.monotonic())
        self.alive = False
        with contextlib.suppress(OSError):
            self._write(_CLOSE, (1000).to_bytes(2, "big"))
        self.sock.close()


class WebSocketTransport:
    """Frames over a WebSocket session to ``url`` (``ws://host:port/ingest``)."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"ws URL needs a host: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/ingest"
        self.token = token
        self.session: _Session | None = None
        self.sessions = 0

    def send(self, samples: list[HttpSample], hello: Hello) -> None:
        if self.session is not None and not self.session.alive:
            self.close()
        if self.session is None:
            if self.token is not None and hello.token is None:
                hello = msgspec.structs.replace(hello, token=self.token)
            self.session = _Session(self.host, self.port, self.path, hello)
            self.sessions += 1
        try:
            self.session.send(samples)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            with contextlib.suppress(OSError):
                session.close()
