"""The daemon's TCP port: plain HTTP requests and WebSocket upgrades on one listener.

Each connection gets its request head parsed by h11 (bounded size, bounded time). A WebSocket
upgrade to a known path is handed to trio-websocket, replaying the bytes already read; any
other request is answered by a route function and the connection closed.

Every connection runs inside its own error boundary: an exception in a handler is logged and
counted and ends that connection only. (An exception escaping a trio-websocket handler would
otherwise tear down the whole server nursery — DESIGN §4.) The accept loop is
``trio.serve_listeners``, which backs off on EMFILE and friends.

Knows nothing about ingest or aggregation: routes are passed in by ``collector.app``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
import msgspec
import trio
from trio_websocket import WebSocketConnection, wrap_server_stream

from collector.logs import get_logger

log = get_logger("http")

MAX_REQUEST_HEAD_BYTES = 16_384
_connection_ids = itertools.count(1)
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        return cls(status, _json.encode(value) + b"\n")


HttpRoute = Callable[[h11.Request], Response]
WebSocketRoute = Callable[[WebSocketConnection], Awaitable[None]]


@dataclass(slots=True)
class HttpCounters:
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    connection_errors: int = 0
    requests_by_status: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "connection_errors": self.connection_errors,
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
        }


@dataclass(frozen=True, slots=True)
class HttpSettings:
    max_connections: int = 1024
    request_timeout_s: float = 10.0
    max_ws_message_bytes: int = 1 << 20
    ws_message_queue: int = 16


class _Replay(trio.abc.Stream):
    """A stream that first returns bytes already read from it (the request head)."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            head, self._head = self._head, b""
            await trio.lowlevel.checkpoint()
            return head
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_head(stream: trio.abc.Stream) -> tuple[h11.Request | None, bytes]:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    raw = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(bytes(data))
            raw += data
            if not data:
                return None, bytes(raw)
        elif isinstance(event, h11.Request):
            return event, bytes(raw)
        else:
            return None, bytes(raw)


def _is_upgrade(request: h11.Request) -> bool:
    headers = {name.lower(): value.lower() for name, value in request.headers}
    return headers.get(b"upgrade") == b"websocket" and b"upgrade" in headers.get(b"connection", b"")


def _path(request: h11.Request) -> str:
    return request.target.split(b"?", 1)[0].decode("ascii", "replace")


class HttpServer:
    """Serve ``http_routes`` (GET path → function) and ``ws_routes`` (path → session)."""

    def __init__(
        self,
        http_routes: Mapping[str, HttpRoute],
        ws_routes: Mapping[str, WebSocketRoute],
        settings: HttpSettings,
    ) -> None:
        self.http_routes = http_routes
        self.ws_routes = ws_routes
        self.settings = settings
        self.counters = HttpCounters()

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
        if counters.connections_open >= self.settings.max_connections:
            counters.connections_refused += 1
            await self._refuse(stream)
            return
        counters.connections_open += 1
        conn_id = next(_connection_ids)
        try:
            await self._serve_connection(stream, conn_id)
        except Exception as exc:
            counters.connection_errors += 1
            log.warning("connection_failed", conn=conn_id, error=repr(exc)[:500])
        finally:
            counters.connections_open -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Answer 503 and close gracefully: shut our side, then drain the request until the
        client closes (else the kernel resets the connection before the client reads)."""
        with trio.move_on_after(1):
            try:
                await stream.send_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                while await stream.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream, conn_id: int) -> None:
        with trio.move_on_after(self.settings.request_timeout_s) as head_scope:
            try:
                request, raw = await _read_head(stream)
            except h11.RemoteProtocolError as exc:
                await self._respond(stream, Response.json(400, {"error": str(exc)}))
                return
        if head_scope.cancelled_caught or request is None:
            return
        path = _path(request)
        ws_route = self.ws_routes.get(path)
        if _is_upgrade(request):
            if ws_route is None:
                await self._respond(stream, Response.json(404, {"error": "no such path"}))
                return
            await self._serve_websocket(stream, raw, ws_route)
            return
        route = self.http_routes.get(path)
        if route is None:
            response = Response.json(
                426 if ws_route else 404,
                {"error": "WebSocket upgrade required" if ws_route else "no such path"},
            )
        elif request.method not in (b"GET", b"HEAD"):
            response = Response.json(405, {"error": "method not allowed"})
        else:
            response = route(request)
        await self._respond(stream, response, head_only=request.method == b"HEAD")

    async def _serve_websocket(
        self, stream: trio.abc.Stream, raw: bytes, route: WebSocketRoute
    ) -> None:
        async with trio.open_nursery() as nursery:
            ws_request = await wrap_server_stream(
                nursery,
                _Replay(stream, raw),
                message_queue_size=self.settings.ws_message_queue,
                max_message_size=self.settings.max_ws_message_bytes,
            )
            ws = await ws_request.accept()
            try:
                await route(ws)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
            nursery.cancel_scope.cancel()

    async def _respond(
        self, stream: trio.abc.Stream, response: Response, head_only: bool = False
    ) -> None:
        counts = self.counters.requests_by_status
        counts[response.status] = counts.get(response.status, 0) + 1
        reason = HTTPStatus(response.status).phrase
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"content-type: {response.content_type}\r\n"
            f"content-length: {len(response.body)}\r\n"
            "cache-control: no-store\r\nconnection: close\r\n\r\n"
        ).encode("ascii")
        with trio.move_on_after(self.settings.request_timeout_s):
            await stream.send_all(head if head_only else head + response.body)
