"""The byte stream under a WebSocket connection of the TCP port, and whole server frames.

``Wire`` sits between the accepted socket and trio-websocket. It first replays the upgrade
request the HTTP server has already read (and holds back the WebSocket bytes that came with it
until the handshake's answer is out); it refuses a client frame that declares a payload over
the limit as soon as its header arrives; and it lets a broadcaster write a frame it made once
for every subscriber (``websocket_frame``) straight to the socket without waiting
(``Wire.send_now``), never interleaved with trio-websocket's own writes.

Both ``collector.http`` (which makes a ``Wire`` for each upgrade and passes it to the route)
and ``collector.fanout`` (which writes through it) import this module; it imports neither,
and knows nothing of HTTP routes or of what the frames carry.
"""

from __future__ import annotations

import os

import trio

from protocol.close_codes import CLOSE_TOO_BIG


class Wire(trio.abc.Stream):
    """A WebSocket connection's byte stream: it first returns the request head already read
    from it, and lets a broadcaster write a whole frame without waiting (``send_now``).

    Every write goes through here, trio-websocket's and ``send_now``'s, so frames never
    interleave: ``send_now`` writes only when no other write is under way, and when the socket
    takes part of its frame, the rest goes out before any other byte (``flush``, or the next
    ``send_all``).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        head: bytes,
        head_bytes: int | None = None,
        max_frame_bytes: int | None = None,
    ) -> None:
        """``head``: the bytes already read, of which the first ``head_bytes`` (default: all)
        are the HTTP request and the rest the first WebSocket bytes: held back until the
        handshake's answer is out (wsproto drops bytes that come with the request).
        ``max_frame_bytes``: the payload a client frame may declare at most (see ``_guard``);
        None: any."""
        self._stream = stream
        split = len(head) if head_bytes is None else head_bytes
        self._head = head[:split]
        self._early = head[split:]
        self._answered = trio.Event()  # the handshake's answer (our first write) is out
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._lock = trio.Lock()
        self._rest: memoryview | None = None
        self._max_frame = max_frame_bytes
        self._frame_header = bytearray()  # a client frame header not complete yet, held back
        self._payload_left = 0  # bytes of the current frame's payload still to come
        self.too_large = False  # a frame was refused for its declared size

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            head, self._head = self._head, b""
            await trio.lowlevel.checkpoint()
            return head
        while not self.too_large:
            if self._early:
                await self._answered.wait()
                data: bytes | bytearray = self._early
                self._early = b""
            else:
                data = await self._stream.receive_some(max_bytes)
                if not data:
                    return data
            if self._max_frame is None:
                return data
            passed = self._guard(data)
            if passed:  # empty when all of it was the start of a frame header: read on
                return passed
        return b""

    def _guard(self, data: bytes | bytearray) -> bytes | bytearray:
        """``data`` as it may go on to trio-websocket: up to the header of a frame that declares
        a payload over the limit, which is replaced by a close frame 1009 *from the client*.
        trio-websocket answers that close frame with the same close (the client reads 1009 and
        the reason), ends the connection, and its reader sees ``ConnectionClosed`` with code
        1009 as for a message it found too large itself: at once, not after reading that many
        bytes (trio-websocket only counts payload bytes as they arrive). A frame header split
        across reads is held back until it is whole, so nothing of a refused frame passes."""
        if self.too_large:
            return b""
        if self._frame_header:
            data = bytes(self._frame_header) + data
            self._frame_header.clear()
        limit = self._max_frame
        assert limit is not None
        position, size = 0, len(data)
        while position < size:
            if self._payload_left:
                step = min(self._payload_left, size - position)
                self._payload_left -= step
                position += step
                continue
            if size - position < 2:
                break
            second = data[position + 1]
            length_code = second & 0x7F
            extended = 2 if length_code == 126 else 8 if length_code == 127 else 0
            header_size = 2 + extended + (4 if second & 0x80 else 0)
            if size - position < header_size:
                break
            declared = (
                int.from_bytes(data[position + 2 : position + 2 + extended])
                if extended
                else length_code
            )
            if declared > limit:
                self.too_large = True
                return data[:position] + _too_big_close(limit)
            self._payload_left = declared
            position += header_size
        else:
            return data
        self._frame_header += data[position:]
        return data[:position]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            await self._flush()
            await self._stream.send_all(data)
        self._answered.set()

    def send_now(self, data: bytes) -> bool:
        """Write ``data`` without waiting. True: written, or written in part with the rest
        going first (``pending``: someone must ``flush``). False: nothing written — another
        write is under way, the socket is full, closed or broken; send it the waiting way."""
        if self._socket is None or self._rest is not None or self._lock.locked():
            return False
        fd = self._socket.fileno()  # -1 once closed: a stale number may be another socket's
        if fd < 0:
            return False
        try:
            written = os.write(fd, data)  # the socket is non-blocking, as all trio sockets
        except OSError:
            return False
        if written < len(data):
            self._rest = memoryview(data)[written:]
        return True

    @property
    def pending(self) -> bool:
        """Part of a frame ``send_now`` wrote is still to go."""
        return self._rest is not None

    async def flush(self) -> None:
        """Send what ``send_now`` left, if anything."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if self._rest is not None:
            await self._stream.send_all(self._rest)
            self._rest = None

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _too_big_close(limit: int) -> bytes:
    """A masked close frame 1009 as a client would send it (RFC 6455 §5.5.1), all zero mask."""
    payload = CLOSE_TOO_BIG.to_bytes(2, "big") + f"message larger than {limit} bytes".encode()
    return bytes((0x88, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def websocket_frame(payload: bytes, text: bool) -> bytes:
    """One whole unmasked WebSocket message as a server sends it (RFC 6455 §5.2): what
    trio-websocket would write for it, made once for every subscriber."""
    opcode = 0x81 if text else 0x82  # FIN + text or binary
    size = len(payload)
    if size < 126:
        header = bytes((opcode, size))
    elif size < 1 << 16:
        header = bytes((opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((opcode, 127)) + size.to_bytes(8, "big")
    return header + payload
