"""The daemon's TCP port: plain HTTP requests and WebSocket upgrades on one listener.

Each connection gets its request head parsed by h11 (bounded size, bounded time) into a
``Request``. A WebSocket upgrade to a known path is handed to trio-websocket, replaying the bytes
already read; any other request is answered by a route and the connection closed (one request
per connection, ``connection: close``).

Routes take a ``Request`` and return (or, when async, return as a coroutine) a ``Response``,
whole in memory, or a ``StreamedResponse``: an async iterator of byte chunks sent with
``transfer-encoding: chunked``, so a large export never sits in memory. A streamed body that
fails before its first chunk is answered 500; one that fails midway has its connection closed
without the terminating zero-length chunk, which a client sees as a truncated chunked body
(never as a complete, short one). Both are logged and counted (``response_errors``).

A route's path is exact (``/healthz``) or ends with one ``{name}`` placeholder
(``/api/meetings/{id}``): it matches the prefix plus one non-empty path segment, which is
percent-decoded into ``Request.path_id``; a decoded segment holding ``/`` is answered 400.

Limits (so that no one address, nor many idle ones, can lock everyone out):

- ``max_connections`` open connections in all, ``max_connections_per_source`` per peer address
  (0 = off). A connection over the per-source limit gets 503 at once and is closed.
- At ``max_connections``, a new connection evicts the connection that has waited longest for
  its request head (an idle or slowloris client), closing it; only when every connection has
  sent its head (live WebSocket sessions, answers under way) is the new one refused with 503.
- Busy (at least ``BUSY_FRACTION`` of ``max_connections`` open), every connection still waiting
  for its head has ``busy_head_timeout_s`` from its start to send it, instead of
  ``request_timeout_s``.
- A loopback peer over either limit may still ask ``/healthz``, ``/readyz`` and ``/metrics``:
  up to ``OPERATOR_SLOTS`` such connections are admitted beyond the limits, with the busy head
  timeout, the longest waiting closed for a new one; anything else on them (another request,
  no request in time) is answered 503 and counted as the refusal it would have been. The local
  operator can always see why, and a loopback flood gains nothing from the slots.
- A request head larger than ``MAX_REQUEST_HEAD_BYTES`` is answered 431; a client WebSocket
  frame whose header declares more than ``max_ws_message_bytes`` is refused as soon as its
  header arrives (close 1009), not after that many bytes.

Every connection runs inside its own error boundary: an exception in a handler is logged and
counted and ends that connection only. (An exception escaping a trio-websocket handler would
otherwise tear down the whole server nursery — DESIGN §4.) The accept loop is
``trio.serve_listeners``, which backs off on EMFILE and friends. Every 4xx and 5xx answer of
the server has a JSON body ``{"error": "..."}``.

A WebSocket route reads its upgrade request (peer address, headers, query) with
``current_request()``: ``ws.remote`` of trio-websocket is only a ``repr`` here, since the
connection it sees is the replaying stream (``Wire``), not a ``trio.SocketStream``.
``current_wire()`` gives that stream: the fan-out writes a frame it made once for all
subscribers straight to each one's socket with ``Wire.send_now``.

Knows nothing about ingest, aggregation or storage: routes are passed in by ``collector.app``.
"""

from __future__ import annotations

import inspect
import ipaddress
import itertools
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote

import h11
import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from collector.logs import get_logger
from protocol.errors import BwmonError

log = get_logger("http")

MAX_REQUEST_HEAD_BYTES = 16_384
MAX_QUERY_FIELDS = 64
CLOSE_TOO_BIG = 1009
BUSY_FRACTION = 0.75
OPERATOR_SLOTS = 8
OPERATOR_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Refusals that wait for the client to close (so it reads the 503 before a reset); beyond this
# many at once a refusal closes at once: refusing must not hold more sockets than it frees.
_MAX_LINGERING_REFUSALS = 64
_connection_ids = itertools.count(1)
_json = msgspec.json.Encoder()


class BadRequest(BwmonError):
    """The request is well-formed HTTP but cannot be served as it is: answered 400."""


class HeadTooLarge(BwmonError):
    """The request head is larger than ``MAX_REQUEST_HEAD_BYTES``: answered 431."""


def _bad_head_message(exc: h11.RemoteProtocolError) -> str:
    """What was wrong with a head h11 refused, without the bytes it quotes (h11 puts the raw
    line into its message as a Python ``repr``: noise for the client, and it may be large)."""
    reason = str(exc).partition(":")[0].strip() or "unreadable request"
    return f"malformed HTTP request: {reason}"


class Headers(Mapping[str, str]):
    """Request headers, looked up case-insensitively; a header sent more than once reads as
    its values joined with ``", "`` (RFC 9110 §5.3). Values are decoded as Latin-1."""

    __slots__ = ("_values",)

    def __init__(self, pairs: Iterable[tuple[str | bytes, str | bytes]] = ()) -> None:
        values: dict[str, str] = {}
        for raw_name, raw_value in pairs:
            name = _text(raw_name).lower()
            value = _text(raw_value)
            values[name] = f"{values[name]}, {value}" if name in values else value
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._values)!r})"  # names only: values may hold tokens


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def parse_query(query: str) -> dict[str, str]:
    """``a=1&b=x%20y`` → ``{"a": "1", "b": "x y"}`` with ``urllib.parse.parse_qsl`` rules
    (``+`` is a space, a blank value is kept as ``""``, a key without ``=`` is blank too).

    A key given twice is refused (``BadRequest``) rather than resolved to its first or last
    value: a filter that silently drops one of two values is worse than a clear error. So are
    more than ``MAX_QUERY_FIELDS`` fields and percent-escapes that are not UTF-8.
    """
    try:
        pairs = parse_qsl(
            query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError as exc:  # UnicodeDecodeError is one
        raise BadRequest(f"unreadable query string: {exc}") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise BadRequest(f"query parameter {key!r} is given more than once")
        params[key] = value
    return params


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as routes see it.

    ``path`` is the target's path as sent (still percent-encoded); ``query`` its parsed query
    string (``parse_query``); ``peer`` the host part of the client's address (``""`` when the
    stream is not a socket); ``path_id`` the decoded ``{name}`` segment of a prefix route.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    peer: str = ""
    path_id: str | None = None


_current_request: ContextVar[Request] = ContextVar("bwmon_http_request")


def current_request() -> Request:
    """The request of the connection this task serves (for WebSocket routes: the upgrade
    request). Tasks a route starts inherit it. ``LookupError`` outside a connection."""
    return _current_request.get()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(cls, status: int, value: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return cls(status, _json.encode(value) + b"\n", headers=headers)

    @classmethod
    def error(cls, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return cls.json(status, {"error": message}, headers)


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """A body produced while it is sent, in chunks (empty chunks are skipped). If ``chunks``
    is an async generator it is closed however the response ends."""

    chunks: AsyncIterable[bytes]
    content_type: str
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()


RouteResult: TypeAlias = Response | StreamedResponse
HttpRoute: TypeAlias = Callable[[Request], RouteResult | Awaitable[RouteResult]]
WebSocketRoute: TypeAlias = Callable[[WebSocketConnection], Awaitable[None]]


@dataclass(slots=True)
class HttpCounters:
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    connections_refused_per_source: int = 0
    connections_evicted: int = 0
    connections_operator: int = 0
    head_timeouts: int = 0
    connection_errors: int = 0
    response_errors: int = 0
    requests_by_status: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "connections_refused_per_source": self.connections_refused_per_source,
            "connections_evicted": self.connections_evicted,
            "connections_operator": self.connections_operator,
            "head_timeouts": self.head_timeouts,
            "connection_errors": self.connection_errors,
            "response_errors": self.response_errors,
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
        }


@dataclass(frozen=True, slots=True)
class HttpSettings:
    max_connections: int = 1024
    max_connections_per_source: int = 128  # 0: no limit per peer address
    request_timeout_s: float = 10.0
    busy_head_timeout_s: float = 2.0
    max_ws_message_bytes: int = 1 << 20
    ws_message_queue: int = 16


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


_current_wire: ContextVar[Wire] = ContextVar("bwmon_websocket_wire")


def current_wire() -> Wire | None:
    """The byte stream under the WebSocket connection this task serves (see ``Wire``); None
    outside a WebSocket route of this server."""
    return _current_wire.get(None)


async def _read_head(stream: trio.abc.Stream) -> tuple[h11.Request | None, bytes, int]:
    """The request head (None if the client closed first), the bytes read, and how many of
    them are the head (the rest came after it: a WebSocket client's first frames).
    ``HeadTooLarge`` for a head over ``MAX_REQUEST_HEAD_BYTES``; h11's own bound is not exact
    (it looks only while the head is incomplete, so a read could complete a larger one)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HeadTooLarge from None
            raise
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(bytes(data))
            raw += data
            if not data:
                return None, bytes(raw), len(raw)
        elif isinstance(event, h11.Request):
            head_bytes = len(raw) - len(conn.trailing_data[0])
            if head_bytes > MAX_REQUEST_HEAD_BYTES:
                raise HeadTooLarge
            return event, bytes(raw), head_bytes
        else:
            return None, bytes(raw), len(raw)


_TOO_MANY = "too many connections"
_TOO_MANY_FROM_SOURCE = "too many connections from this address"


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _is_upgrade(headers: Headers) -> bool:
    return (
        headers.get("upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("connection", "").lower()
    )


def peer_host(stream: trio.abc.Stream) -> str:
    """The host part of the stream's remote address; ``""`` if it is not a connected socket."""
    if not isinstance(stream, trio.SocketStream):
        return ""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return ""
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _request(event: h11.Request, peer: str) -> Request:
    try:
        target = event.target.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the request target is not ASCII: percent-encode it") from None
    path, _, query = target.partition("?")
    return Request(
        method=event.method.decode("ascii", "replace"),
        path=path,
        query=parse_query(query),
        headers=Headers(event.headers),
        peer=peer,
    )


def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} holds a line break")


def _head(
    status: int,
    content_type: str,
    headers: Sequence[tuple[str, str]],
    length: int | None,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"content-type: {content_type}"]
    lines.append("transfer-encoding: chunked" if length is None else f"content-length: {length}")
    lines += ["cache-control: no-store", "connection: close"]
    for name, value in headers:
        _check_header(name, value)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _close_iterator(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await aclose()


class HttpServer:
    """Serve ``http_routes`` (GET/HEAD path → route) and ``ws_routes`` (path → session)."""

    def __init__(
        self,
        http_routes: Mapping[str, HttpRoute],
        ws_routes: Mapping[str, WebSocketRoute],
        settings: HttpSettings,
    ) -> None:
        self.http_routes: dict[str, HttpRoute] = {}
        self.prefix_routes: dict[str, HttpRoute] = {}  # "/api/meetings/" → route
        for path, route in http_routes.items():
            if "{" in path:
                prefix, _, name = path.partition("{")
                if not prefix.endswith("/") or not name.endswith("}") or "/" in name:
                    raise ValueError(f"route {path!r}: a placeholder must be the last segment")
                self.prefix_routes[prefix] = route
            else:
                self.http_routes[path] = route
        self.ws_routes = ws_routes
        self.settings = settings
        self.counters = HttpCounters()
        self.open_by_source: dict[str, int] = {}
        # Connections still waiting for their request head, oldest first: conn id → the scope
        # of that wait. The first is the one evicted at max_connections.
        self._waiting: dict[int, trio.CancelScope] = {}
        self._relaxed: dict[int, tuple[trio.CancelScope, float]] = {}  # with the full timeout
        self._operator_waiting: dict[int, trio.CancelScope] = {}
        self._operator_open = 0
        self._lingering_refusals = 0
        self.draining = False  # set by close_websockets: plain HTTP only from then on
        self._ws_scopes: set[trio.CancelScope] = set()

    def close_websockets(self) -> None:
        """Shutting down: end every WebSocket session (they close with 1001) and refuse new
        upgrades with 503, while plain requests (``/readyz`` says ``draining``) go on."""
        self.draining = True
        for scope in self._ws_scopes:
            scope.cancel()

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        """Error boundary of one connection."""
        counters = self.counters
        counters.connections_total += 1
        peer = peer_host(stream)
        refusal = self._admit(peer)
        operator = False
        if refusal is not None:
            operator = _is_loopback(peer) and self._admit_operator()
            if not operator:
                self._count_refusal(refusal)
                await self._refuse(stream, refusal)
                return
            self._operator_open += 1
        else:
            self.open_by_source[peer] = self.open_by_source.get(peer, 0) + 1
        counters.connections_open += 1
        conn_id = next(_connection_ids)
        try:
            with structlog.contextvars.bound_contextvars(conn=conn_id, peer=peer):
                await self._serve_connection(stream, peer, conn_id, refusal)
        except Exception as exc:
            counters.connection_errors += 1
            log.warning("connection_failed", conn=conn_id, error=repr(exc)[:500])
        finally:
            counters.connections_open -= 1
            if operator:
                self._operator_open -= 1
            else:
                left = self.open_by_source[peer] - 1
                if left:
                    self.open_by_source[peer] = left
                else:
                    del self.open_by_source[peer]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def _admit(self, peer: str) -> str | None:
        """None if a connection from ``peer`` may be served (evicting the connection that has
        waited longest for its head, if the server is full); else the refusal's message."""
        per_source = self.settings.max_connections_per_source
        if per_source and self.open_by_source.get(peer, 0) >= per_source:
            return _TOO_MANY_FROM_SOURCE
        open_ = self.counters.connections_open - self._operator_open
        if open_ >= self.settings.max_connections and not self._evict(self._waiting):
            return _TOO_MANY
        return None

    def _admit_operator(self) -> bool:
        """Whether a loopback connection over a limit gets an operator slot (health only)."""
        return self._operator_open < OPERATOR_SLOTS or self._evict(self._operator_waiting)

    def _evict(self, waiting: dict[int, trio.CancelScope]) -> bool:
        """Close the connection that has waited longest for its request head, if any."""
        if not waiting:
            return False
        conn_id = next(iter(waiting))
        scope = waiting.pop(conn_id)
        self._relaxed.pop(conn_id, None)
        scope.cancel()
        if waiting is self._waiting:  # an operator slot's loss is counted as its refusal
            self.counters.connections_evicted += 1
        return True

    @property
    def busy(self) -> bool:
        """At least ``BUSY_FRACTION`` of ``max_connections`` open: heads get less time."""
        return self.counters.connections_open >= BUSY_FRACTION * self.settings.max_connections

    def _head_scope(self, conn_id: int, operator: bool) -> trio.CancelScope:
        """The time a connection has for its request head, registered for eviction; when the
        server is busy, every waiting connection's time is cut to the busy head timeout."""
        settings = self.settings
        now = trio.current_time()
        busy_timeout = min(settings.busy_head_timeout_s, settings.request_timeout_s)
        if operator:
            scope = trio.CancelScope(deadline=now + busy_timeout)
            self._operator_waiting[conn_id] = scope
            return scope
        if self.busy:
            for relaxed, started in self._relaxed.values():
                relaxed.deadline = min(relaxed.deadline, started + busy_timeout)
            self._relaxed.clear()
            scope = trio.CancelScope(deadline=now + busy_timeout)
        else:
            scope = trio.CancelScope(deadline=now + settings.request_timeout_s)
            self._relaxed[conn_id] = (scope, now)
        self._waiting[conn_id] = scope
        return scope

    def _count_refusal(self, refusal: str) -> None:
        if refusal == _TOO_MANY_FROM_SOURCE:
            self.counters.connections_refused_per_source += 1
        else:
            self.counters.connections_refused += 1

    async def _refuse(self, stream: trio.abc.Stream, reason: str) -> None:
        """Answer 503 to a connection over a limit, and close it (``_linger``)."""
        body = _json.encode({"error": reason}) + b"\n"
        await self._linger(stream, _head(503, "application/json", (), len(body)) + body)
        await trio.aclose_forcefully(stream)

    async def _linger(self, stream: trio.abc.Stream, answer: bytes) -> None:
        """Send an answer given before the request was read, and close gracefully: shut our
        side, then drain the request until the client closes (else the kernel resets the
        connection before the client reads). With many such answers under way, do not wait
        for the client: a flood must not hold sockets."""
        linger = self._lingering_refusals < _MAX_LINGERING_REFUSALS
        self._lingering_refusals += linger
        try:
            with trio.move_on_after(1 if linger else 0.1):
                try:
                    await stream.send_all(answer)
                    if isinstance(stream, trio.abc.HalfCloseableStream):
                        await stream.send_eof()
                    while linger and await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            self._lingering_refusals -= linger

    async def _serve_connection(
        self, stream: trio.abc.Stream, peer: str, conn_id: int, refusal: str | None
    ) -> None:
        """Serve one connection; ``refusal`` set: an operator connection over that limit."""
        scope = self._head_scope(conn_id, refusal is not None)
        waiting = self._waiting if refusal is None else self._operator_waiting
        error: Response | None = None
        event: h11.Request | None = None
        raw, head_bytes = b"", 0
        try:
            with scope:
                try:
                    event, raw, head_bytes = await _read_head(stream)
                except h11.RemoteProtocolError as exc:
                    error = Response.error(400, _bad_head_message(exc))
                except HeadTooLarge:
                    error = Response.error(
                        431, f"request head larger than {MAX_REQUEST_HEAD_BYTES} bytes"
                    )
        finally:
            timed_out = waiting.pop(conn_id, None) is not None and scope.cancelled_caught
            self._relaxed.pop(conn_id, None)
        if refusal is not None and (error is not None or event is None):
            # An operator slot that asked for nothing (or nothing readable) in time: refused,
            # as it would have been without the slot.
            self._count_refusal(refusal)
            error = Response.error(503, refusal)
        elif timed_out:
            self.counters.head_timeouts += 1
        if error is not None:  # the rest of the request is unread: do not reset the client
            self._count(error.status)
            head = _head(error.status, error.content_type, error.headers, len(error.body))
            await self._linger(stream, head + error.body)
            return
        if event is None:
            return
        try:
            request = _request(event, peer)
        except BadRequest as exc:
            await self._respond(stream, Response.error(400, str(exc)))
            return
        _current_request.set(request)  # this task's own context: seen by its route only
        ws_route = self.ws_routes.get(request.path)
        upgrade = _is_upgrade(request.headers)
        if refusal is not None:
            if upgrade or request.path not in OPERATOR_PATHS:
                self._count_refusal(refusal)
                await self._respond(stream, Response.error(503, refusal))
                return
            self.counters.connections_operator += 1
        if upgrade:
            if ws_route is None:
                await self._respond(stream, Response.error(404, "no such path"))
                return
            if self.draining:
                await self._respond(stream, Response.error(503, "shutting down"))
                return
            await self._serve_websocket(stream, raw, head_bytes, ws_route)
            return
        head_only = request.method == "HEAD"
        try:
            route, request = self._route(request)
        except BadRequest as exc:
            await self._respond(stream, Response.error(400, str(exc)))
            return
        if route is None:
            response: RouteResult = (
                Response.error(426, "WebSocket upgrade required")
                if ws_route
                else Response.error(404, "no such path")
            )
        elif request.method not in ("GET", "HEAD"):
            response = Response.error(405, "method not allowed", [("allow", "GET, HEAD")])
        else:
            _current_request.set(request)
            response = await self._call(route, request)
        if isinstance(response, StreamedResponse):
            await self._stream(stream, response, head_only)
        else:
            await self._respond(stream, response, head_only)

    def _route(self, request: Request) -> tuple[HttpRoute | None, Request]:
        """The route for the request's path, and the request with its ``path_id`` set."""
        route = self.http_routes.get(request.path)
        if route is not None:
            return route, request
        for prefix, candidate in self.prefix_routes.items():
            segment = request.path.removeprefix(prefix)
            if segment == request.path or not segment or "/" in segment:
                continue
            try:
                path_id = unquote(segment, errors="strict")
            except UnicodeDecodeError:
                raise BadRequest("the path's id is not UTF-8") from None
            if "/" in path_id:
                raise BadRequest("an id in the path must not contain '/'")
            return candidate, replace(request, path_id=path_id)
        return None, request

    async def _call(self, route: HttpRoute, request: Request) -> RouteResult:
        try:
            result = route(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self.counters.response_errors += 1
            log.error("route_failed", path=request.path, error=repr(exc)[:500])
            return Response.error(500, "internal error")
        return result

    async def _serve_websocket(
        self, stream: trio.abc.Stream, raw: bytes, head_bytes: int, route: WebSocketRoute
    ) -> None:
        async with trio.open_nursery() as nursery:
            wire = Wire(stream, raw, head_bytes, self.settings.max_ws_message_bytes)
            _current_wire.set(wire)
            ws_request = await wrap_server_stream(
                nursery,
                wire,
                message_queue_size=self.settings.ws_message_queue,
                max_message_size=self.settings.max_ws_message_bytes,
            )
            try:
                ws = await ws_request.accept()
            except ConnectionClosed:  # the client left during the handshake: nothing to serve
                nursery.cancel_scope.cancel()
                return
            try:
                with trio.CancelScope() as scope:
                    self._ws_scopes.add(scope)
                    if self.draining:  # accepted while shutdown began
                        scope.cancel()
                    try:
                        await route(ws)
                    finally:
                        self._ws_scopes.discard(scope)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
            nursery.cancel_scope.cancel()

    def _count(self, status: int) -> None:
        counts = self.counters.requests_by_status
        counts[status] = counts.get(status, 0) + 1

    async def _respond(
        self, stream: trio.abc.Stream, response: Response, head_only: bool = False
    ) -> None:
        self._count(response.status)
        head = _head(response.status, response.content_type, response.headers, len(response.body))
        with trio.move_on_after(self.settings.request_timeout_s):
            await stream.send_all(head if head_only else head + response.body)

    async def _stream(
        self, stream: trio.abc.Stream, response: StreamedResponse, head_only: bool
    ) -> None:
        """Send a chunked body; each send is bounded by the request timeout (a client that
        stops reading is dropped). The first chunk is read before the head goes out, so a
        body that fails at once still gets a proper 500."""
        chunks = aiter(response.chunks)
        try:
            first: bytes | None = b""
            if not head_only:
                try:
                    first = await _next_chunk(chunks)
                except Exception as exc:
                    self.counters.response_errors += 1
                    log.error("stream_failed", sent_bytes=0, error=repr(exc)[:500])
                    await self._respond(stream, Response.error(500, "internal error"))
                    return
            self._count(response.status)
            head = _head(response.status, response.content_type, response.headers, None)
            timeout = self.settings.request_timeout_s
            with trio.fail_after(timeout):
                await stream.send_all(head + (_chunk(first) if first else b""))
            if head_only:
                return
            sent = 0
            while first is not None:
                sent += len(first)
                try:
                    first = await _next_chunk(chunks)
                except Exception as exc:
                    # No terminating chunk: the client sees a truncated body, not a short one.
                    self.counters.response_errors += 1
                    log.error("stream_failed", sent_bytes=sent, error=repr(exc)[:500])
                    return
                if first is not None:
                    with trio.fail_after(timeout):
                        await stream.send_all(_chunk(first))
            with trio.fail_after(timeout):
                await stream.send_all(b"0\r\n\r\n")
        finally:
            await _close_iterator(chunks)


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    """The next non-empty chunk, or None at the end."""
    while True:
        try:
            data = await anext(chunks)
        except StopAsyncIteration:
            return None
        if data:
            return data


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
