"""Pure ASGI middleware: every HTTP request's body bytes both ways, status and latency.

What is counted (clients/README.md has the rules for every client):

- bytes in: the ``body`` of every ``http.request`` message the application received;
- bytes out: the ``body`` of every ``http.response.body`` message sent, the file's size for
  ``http.response.pathsend`` (``os.stat``, the file is never read) and the ``count`` of
  ``http.response.zerocopy``; 0 for HEAD and 304 responses;
- latency: from the call to the end of the last ``http.response.body`` (``more_body`` false),
  or to the application's return when it sent no last body;
- route: the template the framework stored in the scope while the application ran
  (``scope["route"].path_format`` or ``.path``, as Starlette and FastAPI set it), read after it
  returned, never matched again; ``<unmatched>`` without one;
- status: the response's; 500 when the application raised before its response ended (the
  exception goes on untouched); none when the client went away first (``http.disconnect``
  received, or ``send`` raised).

All per-request state lives in the call. The accounting never raises into the application:
what fails in it is caught, and the emitter's ``record`` does no I/O. WebSocket and lifespan
scopes go to the application untouched.

This module is compiled with mypyc where the package is built with a C compiler
(clients/python/setup.py), as ``wsgi.py`` is, and compiled code checks annotated types when it
runs: scopes and messages are mappings of ``Any``, so that the compiled module takes whatever
the pure one takes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bwmon_client.process_emitter import Emitter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NO_BODY_STATUS = frozenset((204, 304))


def route_of(scope: Scope) -> str | None:
    """The route template the framework resolved for this request, or None."""
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else None


def _pathsend_size(message: Message) -> int:
    return os.stat(message["path"]).st_size


def _zerocopy_size(message: Message) -> int:
    count = message.get("count")
    if count is not None:
        return int(count)
    return max(os.fstat(message["file"]).st_size - int(message.get("offset") or 0), 0)


class BwmonMiddleware:
    """Wrap an ASGI application; count its HTTP requests into ``emitter`` (default: the
    process's, ``bwmon_client.emitter(service)``)."""

    def __init__(
        self,
        app: ASGIApp,
        emitter: Emitter | None = None,
        service: str | None = None,
        route: Callable[[Scope], str | None] = route_of,
    ) -> None:
        if emitter is None:
            from bwmon_client import emitter as process_emitter

            emitter = process_emitter(service)
        self.app = app
        self.emitter = emitter
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        bytes_in = 0
        bytes_out = 0
        status: int | None = None
        counts_body = True  # False for HEAD, 204, 304: what the app sends is not sent
        ending = False  # the last body (or file) is on its way
        ended: float | None = None
        gone = False  # the client went away before the response ended

        async def receive_counted() -> Message:
            nonlocal bytes_in, gone
            message = await receive()
            try:
                kind = message["type"]
                if kind == "http.request":
                    bytes_in += len(message.get("body", b""))
                elif kind == "http.disconnect" and not ending:
                    gone = True
            except Exception:
                pass
            return message

        async def send_counted(message: Message) -> None:
            nonlocal bytes_out, status, counts_body, ending, ended, gone
            size = 0
            last = False
            try:
                kind = message["type"]
                if kind == "http.response.body":
                    size = len(message.get("body", b""))
                    last = not message.get("more_body", False)
                elif kind == "http.response.start":
                    status = int(message["status"])
                    counts_body = status not in _NO_BODY_STATUS and scope["method"] != "HEAD"
                elif kind == "http.response.pathsend":
                    last = True
                    if counts_body:
                        size = _pathsend_size(message)
                elif kind == "http.response.zerocopy":
                    last = not message.get("more_body", False)
                    if counts_body:
                        size = _zerocopy_size(message)
            except Exception:
                pass
            if last:
                ending = True
            try:
                await send(message)
            except BaseException:
                gone = True
                raise
            if counts_body:
                bytes_out += size
            if last and ended is None:
                ended = time.perf_counter()

        try:
            await self.app(scope, receive_counted, send_counted)
        except BaseException as exc:
            if ended is None and not gone:
                # raised before its response ended: an error, unless the server cancelled it
                status = 500 if isinstance(exc, Exception) else None
            self._record(scope, status, gone, bytes_in, bytes_out, start, ended)
            raise
        self._record(scope, status, gone, bytes_in, bytes_out, start, ended)

    def _record(
        self,
        scope: Scope,
        status: int | None,
        gone: bool,
        bytes_in: int,
        bytes_out: int,
        start: float,
        ended: float | None,
    ) -> None:
        try:
            route = self.route(scope)
        except Exception:  # a route function that fails: the request counts on no route
            route = None
        try:
            latency = (ended if ended is not None else time.perf_counter()) - start
            if gone:
                status = None
            self.emitter.record(route, scope["method"], status, bytes_in, bytes_out, latency)
        except Exception:
            pass
