"""The daemon's TCP port: plain HTTP requests and WebSocket upgrades on one listener.

h11 reads and writes HTTP here: each connection's ``h11.Connection`` parses the request head
(bounded size, bounded time) into a ``Request`` and writes the answer (status line, headers,
body, chunks), validating what it writes; no byte of HTTP is put together by hand. An answer
given before a request could be read (a refusal at accept, an unreadable or too large head)
is written by an h11 connection of its own. A WebSocket upgrade to a known path is handed to
trio-websocket, replaying the bytes already read; its handshake (the 101) is wsproto's, which
is h11 too. Any other request is answered by a route.

One request per connection (``connection: close``), unless the client asks for more with
``connection: keep-alive`` (browsers and HTTP libraries do): then h11 takes the next request
on the same connection, up to ``max_requests_per_connection`` (the last answer says
``connection: close``). Between two requests the connection waits as a new one does for its
head, at most ``keep_alive_s``: it is the first evicted at ``max_connections`` and gets the busy
head timeout when the server is busy; closing it then is not counted as a head timeout. A
request with a body (but to a ``PostRoute``, which reads it), an HTTP/1.0 client and a draining
server end the connection after the answer.

GET and HEAD routes take a ``Request`` and return (or, when async, return as a coroutine) a
``Response``, whole in memory, or a ``StreamedResponse``: an async iterator of byte chunks that
h11 sends with ``transfer-encoding: chunked``, so a large export never sits in memory. Answers
say ``cache-control: no-store`` unless the route says how to cache them (the static files). A
streamed body that fails before its first chunk is answered 500; one that fails midway has its
connection closed without the terminating zero-length chunk, which a client sees as a truncated
chunked body (never as a complete, short one). Both are logged and counted (``response_errors``).

A ``PostRoute`` takes ``POST`` with a body (``POST /ingest``): the server reads the body whole,
within the request timeout (408 past it) and up to the route's ``max_body_bytes`` (past it, the
route's own answer, given without reading further: a ``content-length`` over the limit is
refused before a byte of the body, and a client that sent ``expect: 100-continue`` never gets
its 100), and hands it to the route in ``Request.body``. Such a route is open to pages of any
origin: its answers carry ``access-control-allow-origin: *`` and ``OPTIONS`` (the browser's
preflight) is answered 204 with what a cross-origin ``POST`` may carry. Once its body is read,
a POST may keep its connection alive like any request.

Paths under ``/api/`` are open to the pages of the origins in ``HttpSettings.cors_origins``
only (``collector.http.cors``): their answers carry the CORS headers for the request's
``Origin``, and an ``OPTIONS`` with an ``Origin`` is answered as the preflight.

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

A WebSocket route is called with the connection, its upgrade request (peer address, headers,
query: ``ws.remote`` of trio-websocket is only a ``repr`` here, since the connection it sees is
the replaying stream, not a ``trio.SocketStream``) and that stream, a ``collector.wire.Wire``:
the fan-out writes a frame it made once for all subscribers straight to each one's socket with
``Wire.send_now``.

Knows nothing about ingest, aggregation or storage: routes are passed in by ``collector.app``.
"""

from __future__ import annotations

import inspect
import ipaddress
import itertools
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
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote

import h11
import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from collector.http import cors
from collector.logs import get_logger
from collector.wire import Wire
from protocol.errors import BwmonError

log = get_logger("http")

MAX_REQUEST_HEAD_BYTES = 16_384
MAX_QUERY_FIELDS = 64
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
    stream is not a socket); ``path_id`` the decoded ``{name}`` segment of a prefix route;
    ``body`` the whole body of a request to a ``PostRoute`` (empty for any other).
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    peer: str = ""
    path_id: str | None = None
    body: bytes = b""


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
WebSocketRoute: TypeAlias = Callable[[WebSocketConnection, Request, Wire], Awaitable[None]]

# Any origin may post to a ``PostRoute`` and read its answer (requests carry no cookies, so
# ``*`` is allowed); ``retry-after`` is not a header a page may read unless it is exposed.
CORS_HEADERS: tuple[tuple[str, str], ...] = (
    ("access-control-allow-origin", "*"),
    ("access-control-expose-headers", "retry-after"),
)
# The preflight's answer: what a cross-origin POST may carry. Browsers cache it for at most
# ``max-age`` (Chromium caps it at two hours).
PREFLIGHT_HEADERS: tuple[tuple[str, str], ...] = (
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "POST, OPTIONS"),
    ("access-control-allow-headers", "content-type, authorization"),
    ("access-control-max-age", "7200"),
)


@dataclass(frozen=True, slots=True)
class PostRoute:
    """A path that takes ``POST`` requests with a body, from any origin (CORS).

    ``handle`` gets the request with its whole ``body``, read within the request timeout, of
    at most ``max_body_bytes`` (a ``content-length`` over it is refused before a byte of the
    body is read, a chunked body as soon as it passes it): ``too_large`` answers then, and the
    connection ends. Every answer carries ``CORS_HEADERS``; ``OPTIONS`` (a browser's
    preflight) is answered 204 with ``PREFLIGHT_HEADERS``."""

    handle: Callable[[Request], Response | Awaitable[Response]]
    max_body_bytes: int
    too_large: Callable[[Request], Response]


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
    # A client that asks for keep-alive waits at most this long for its next request between
    # two, and gets at most this many answers on one connection.
    keep_alive_s: float = 5.0
    max_requests_per_connection: int = 100
    # Origins whose pages may call /api (``collector.http.cors``); empty: none.
    cors_origins: tuple[str, ...] = ()


async def _read_head(
    stream: trio.abc.Stream, conn: h11.Connection
) -> tuple[h11.Request | None, bytes, int]:
    """The request head read by ``conn`` (None if the client closed first), the bytes read,
    and how many of them are the head (the rest came after it: a WebSocket client's first
    frames). ``HeadTooLarge`` for a head over ``MAX_REQUEST_HEAD_BYTES``; h11's own bound is
    not exact (it looks only while the head is incomplete, so a read could complete a larger
    one)."""
    raw = bytearray(conn.trailing_data[0])  # a kept-alive client may send its next request early
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


def _asks_keep_alive(headers: Headers) -> bool:
    """Whether the client asked to keep the connection open (``connection: keep-alive``, as
    browsers and HTTP client libraries send). Others get one answer and a closed connection:
    a script that reads the answer until the connection closes must not wait for it."""
    tokens = headers.get("connection", "").lower().split(",")
    return "keep-alive" in (token.strip() for token in tokens)


def _request_ended(conn: h11.Connection) -> bool:
    """Whether the request read by ``conn`` came without a body (its end is already in):
    a body is never read, so a request with one ends its connection."""
    try:
        return isinstance(conn.next_event(), h11.EndOfMessage)
    except h11.RemoteProtocolError:
        return False


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


def _head(
    status: int,
    content_type: str,
    headers: Sequence[tuple[str, str]],
    length: int | None,
    close: bool = True,
) -> h11.Response:
    """A response head for h11 to write (and validate: a header holding a line break is
    refused with ``h11.LocalProtocolError``). ``length`` None: a body of unknown length, which
    h11 frames as chunks (or, to an HTTP/1.0 client, ends by closing the connection).
    ``close``: the connection ends after this answer (``connection: close``); else h11 says
    whether it may go on (not with an HTTP/1.0 client, nor one that said ``close``)."""
    # 204 and 304 have no body: no content-length (which would describe the body a 200
    # would have had) and no content-type. A route that says how to cache keeps its say.
    fields = []
    if status not in (204, 304):
        fields.append(("content-type", content_type))
        if length is not None:
            fields.append(("content-length", str(length)))
    if not any(name.lower() == "cache-control" for name, _ in headers):
        fields.append(("cache-control", "no-store"))
    if close:
        fields.append(("connection", "close"))
    fields += headers
    return h11.Response(
        status_code=status,
        reason=HTTPStatus(status).phrase.encode("ascii"),
        headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields],
    )


def _whole(
    conn: h11.Connection, response: Response, keep_alive: bool = False, head_only: bool = False
) -> bytes:
    """``response`` as h11 writes it on ``conn`` (its body left out for a HEAD request: h11
    knows the request's method and refuses body bytes then)."""
    status, content_type, headers = response.status, response.content_type, response.headers
    head = _head(status, content_type, headers, len(response.body), not keep_alive)
    data = conn.send(head) or b""
    if not head_only and response.body:
        data += conn.send(h11.Data(data=response.body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


def _early(response: Response) -> bytes:
    """``response`` as the answer to a request that was not read (refused at once, unreadable,
    too large, or never sent): written by an h11 connection of its own, which has seen no
    request and so makes no assumption about it."""
    return _whole(h11.Connection(h11.SERVER), response)


async def _read_body(
    stream: trio.abc.Stream, conn: h11.Connection, headers: Headers, limit: int
) -> bytes | None:
    """The body of the request ``conn`` has read the head of (``headers``), or None if it is
    longer than ``limit`` bytes (then it is not read further). A client that waits for
    ``100 Continue`` (``expect: 100-continue``, as curl sends for large bodies) gets it only
    for a body that may be within the limit. ``h11.RemoteProtocolError`` for a body cut
    short or badly framed."""
    # h11 checked the header: digits, and the same value if sent more than once.
    length = headers.get("content-length", "").partition(",")[0].strip()
    if length and int(length) > limit:
        return None
    if conn.they_are_waiting_for_100_continue:
        go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        await stream.send_all(conn.send(go_on) or b"")
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:  # the connection closed under the body: h11 raised before this
            raise h11.RemoteProtocolError("the request body ended early")


async def _close_iterator(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await aclose()


class HttpServer:
    """Serve ``http_routes`` (GET/HEAD path → route), ``ws_routes`` (path → session) and
    ``post_routes`` (POST path → route; a path may be both a WebSocket and a POST route)."""

    def __init__(
        self,
        http_routes: Mapping[str, HttpRoute],
        ws_routes: Mapping[str, WebSocketRoute],
        settings: HttpSettings,
        post_routes: Mapping[str, PostRoute] | None = None,
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
        self.post_routes: Mapping[str, PostRoute] = post_routes or {}
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

    def _head_scope(self, conn_id: int, operator: bool, timeout: float) -> trio.CancelScope:
        """The time a connection has for its request head (``timeout``), registered for
        eviction; when the server is busy, every waiting connection's time is cut to the busy
        head timeout."""
        settings = self.settings
        now = trio.current_time()
        busy_timeout = min(settings.busy_head_timeout_s, timeout)
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
            scope = trio.CancelScope(deadline=now + timeout)
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
        await self._linger(stream, _early(Response.error(503, reason)))
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
        """Serve one connection: one request, or (keep-alive) several one after the other;
        ``refusal`` set: an operator connection over that limit, one request only."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        settings = self.settings
        for served in range(max(1, settings.max_requests_per_connection)):
            # Between two requests a connection waits as a new one does (evicted first at
            # max_connections, the busy timeout when busy), for at most keep_alive_s.
            head_timeout_s = settings.request_timeout_s
            if served:
                head_timeout_s = min(head_timeout_s, settings.keep_alive_s)
            last = served + 1 == settings.max_requests_per_connection
            again = await self._serve_request(
                stream, conn, peer, conn_id, refusal, head_timeout_s, first=not served, last=last
            )
            if not again:
                return
            conn.start_next_cycle()

    async def _serve_request(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        peer: str,
        conn_id: int,
        refusal: str | None,
        head_timeout_s: float,
        *,
        first: bool,
        last: bool,
    ) -> bool:
        """Read one request on ``conn`` and answer it; True if the connection stays open for
        the next one (keep-alive, the whole answer sent)."""
        scope = self._head_scope(conn_id, refusal is not None, head_timeout_s)
        waiting = self._waiting if refusal is None else self._operator_waiting
        error: Response | None = None
        event: h11.Request | None = None
        raw, head_bytes = b"", 0
        try:
            with scope:
                try:
                    event, raw, head_bytes = await _read_head(stream, conn)
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
        elif timed_out and (first or conn.trailing_data[0]):
            # (A kept-alive connection with no next request is done, not late.)
            self.counters.head_timeouts += 1
        if error is not None:  # the rest of the request is unread: do not reset the client
            self._count(error.status)
            await self._linger(stream, _early(error))
            return False
        if event is None:
            return False
        try:
            request = _request(event, peer)
        except BadRequest as exc:
            await self._respond(stream, conn, Response.error(400, str(exc)))
            return False
        ws_route = self.ws_routes.get(request.path)
        upgrade = _is_upgrade(request.headers)
        if refusal is not None:
            if upgrade or request.path not in OPERATOR_PATHS:
                self._count_refusal(refusal)
                await self._respond(stream, conn, Response.error(503, refusal))
                return False
            self.counters.connections_operator += 1
        if upgrade:
            if ws_route is None:
                await self._respond(stream, conn, Response.error(404, "no such path"))
                return False
            if self.draining:
                await self._respond(stream, conn, Response.error(503, "shutting down"))
                return False
            await self._serve_websocket(stream, raw, head_bytes, ws_route, request)
            return False
        may_keep_alive = (
            refusal is None and not last and not self.draining and _asks_keep_alive(request.headers)
        )
        post_route = self.post_routes.get(request.path)
        if post_route is not None and request.method in ("POST", "OPTIONS"):
            return await self._serve_post(stream, conn, post_route, request, may_keep_alive)
        keep_alive = may_keep_alive and _request_ended(conn)
        head_only = request.method == "HEAD"
        origins = self.settings.cors_origins if cors.in_scope(request.path) else ()
        origin = request.headers.get("origin")
        cors_headers = cors.response_headers(origins, origin)
        try:
            route, request = self._route(request)
        except BadRequest as exc:
            error = Response.error(400, str(exc), cors_headers)
            sent = await self._respond(stream, conn, error, keep_alive)
            return sent and conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if origins and origin is not None and request.method == "OPTIONS":
            allowed = cors.preflight_headers(origins, origin)
            if allowed is None:
                answer = Response.error(403, "origin not allowed", cors_headers)
            else:
                answer = Response(204, b"", headers=allowed)
            sent = await self._respond(stream, conn, answer, keep_alive)
            return sent and conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if route is None:
            if ws_route is not None and request.method in ("GET", "HEAD"):
                response: RouteResult = Response.error(426, "WebSocket upgrade required")
            elif post_route is not None:
                allow = "GET, POST, OPTIONS" if ws_route is not None else "POST, OPTIONS"
                response = Response.error(405, "method not allowed", [("allow", allow)])
            elif ws_route is not None:
                response = Response.error(426, "WebSocket upgrade required")
            else:
                response = Response.error(404, "no such path")
        elif request.method not in ("GET", "HEAD"):
            response = Response.error(405, "method not allowed", [("allow", "GET, HEAD")])
        else:
            response = await self._call(route, request)
        if cors_headers:
            response = replace(response, headers=[*response.headers, *cors_headers])
        if isinstance(response, StreamedResponse):
            sent = await self._stream(stream, conn, response, head_only, keep_alive)
        else:
            sent = await self._respond(stream, conn, response, keep_alive, head_only)
        return sent and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _serve_post(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        route: PostRoute,
        request: Request,
        may_keep_alive: bool,
    ) -> bool:
        """Answer a request to a ``PostRoute``: the preflight, or the POST with its body read
        whole. True if the connection stays open for the next request."""
        if request.method == "OPTIONS":
            keep_alive = may_keep_alive and _request_ended(conn)
            preflight = Response(204, b"", headers=PREFLIGHT_HEADERS)
            sent = await self._respond(stream, conn, preflight, keep_alive)
            return sent and keep_alive and conn.their_state is h11.DONE
        body: bytes | None = None
        error: Response | None = None
        with trio.move_on_after(self.settings.request_timeout_s):
            try:
                body = await _read_body(stream, conn, request.headers, route.max_body_bytes)
            except h11.RemoteProtocolError as exc:
                error = Response.error(400, f"unreadable request body: {exc}"[:200])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False  # the client left: no one to answer
            if body is None and error is None:
                error = route.too_large(request)
        if body is None and error is None:
            error = Response.error(408, "the request body did not arrive in time")
        if error is not None:
            # The rest of the body is unread: answer, then let the client close (``_linger``)
            # so that it reads the answer rather than a reset.
            error = replace(error, headers=[*error.headers, *CORS_HEADERS])
            self._count(error.status)
            await self._linger(stream, _whole(conn, error))
            return False
        assert body is not None
        answer = await self._call(route.handle, replace(request, body=body))
        assert isinstance(answer, Response)
        answer = replace(answer, headers=[*answer.headers, *CORS_HEADERS])
        keep_alive = may_keep_alive and conn.their_state is h11.DONE
        sent = await self._respond(stream, conn, answer, keep_alive)
        return sent and keep_alive

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
        self,
        stream: trio.abc.Stream,
        raw: bytes,
        head_bytes: int,
        route: WebSocketRoute,
        request: Request,
    ) -> None:
        """Hand the connection to trio-websocket: its handshake reads the upgrade request again
        from the ``Wire`` (which replays the bytes h11 read) and writes the 101 answer with
        wsproto, whose handshake is h11's too."""
        async with trio.open_nursery() as nursery:
            wire = Wire(stream, raw, head_bytes, self.settings.max_ws_message_bytes)
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
                        await route(ws, request, wire)
                    finally:
                        self._ws_scopes.discard(scope)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
            # A close the client sent (or the wire's 1009 in its name) is answered by
            # trio-websocket's reader, which sets the close reason before it writes the answer:
            # aclose() then returns at once. The reader ends once it has closed the stream;
            # give it a second to finish rather than cutting the answer off.
            nursery.cancel_scope.deadline = trio.current_time() + 1

    def _count(self, status: int) -> None:
        counts = self.counters.requests_by_status
        counts[status] = counts.get(status, 0) + 1

    async def _respond(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        response: Response,
        keep_alive: bool = False,
        head_only: bool = False,
    ) -> bool:
        """Send a whole answer; False if the client did not take it within the request
        timeout."""
        self._count(response.status)
        data = _whole(conn, response, keep_alive, head_only)
        with trio.move_on_after(self.settings.request_timeout_s):
            await stream.send_all(data)
            return True
        return False

    async def _stream(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        response: StreamedResponse,
        head_only: bool,
        keep_alive: bool,
    ) -> bool:
        """Send a body of unknown length, which h11 writes in chunks; each send is bounded by
        the request timeout (a client that stops reading is dropped). The first chunk is read
        before the head goes out, so a body that fails at once still gets a proper 500."""
        chunks = aiter(response.chunks)
        try:
            first: bytes | None = b""
            if not head_only:
                try:
                    first = await _next_chunk(chunks)
                except Exception as exc:
                    self.counters.response_errors += 1
                    log.error("stream_failed", sent_bytes=0, error=repr(exc)[:500])
                    error = Response.error(500, "internal error")
                    return await self._respond(stream, conn, error, keep_alive)
            self._count(response.status)
            head = _head(
                response.status, response.content_type, response.headers, None, not keep_alive
            )
            data = conn.send(head) or b""
            if first:
                data += conn.send(h11.Data(data=first)) or b""
            if head_only:
                data += conn.send(h11.EndOfMessage()) or b""
            timeout = self.settings.request_timeout_s
            with trio.fail_after(timeout):
                await stream.send_all(data)
            if head_only:
                return True
            sent = 0
            while first is not None:
                sent += len(first)
                try:
                    first = await _next_chunk(chunks)
                except Exception as exc:
                    # No terminating chunk: the client sees a truncated body, not a short one.
                    self.counters.response_errors += 1
                    log.error("stream_failed", sent_bytes=sent, error=repr(exc)[:500])
                    return False
                if first is not None:
                    data = conn.send(h11.Data(data=first)) or b""
                    with trio.fail_after(timeout):
                        await stream.send_all(data)
            data = conn.send(h11.EndOfMessage()) or b""
            with trio.fail_after(timeout):
                await stream.send_all(data)
            return True
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
