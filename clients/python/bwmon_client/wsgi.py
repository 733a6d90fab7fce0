"""WSGI middleware: requests, status classes, body bytes in both directions and latency to the
last byte, per route and method, recorded into a ``bwmon_client.Emitter``.

``BwmonWSGIMiddleware(app, emitter)`` wraps any WSGI application (clients/README.md says what
is counted, the same for every client):

- **Bytes in**: what the application reads of ``wsgi.input`` (``read``, ``readline``,
  ``readlines``, ``readinto``, iteration), never ``Content-Length``; a request with neither a
  ``Content-Length`` (other than 0) nor a ``Transfer-Encoding`` has no body: its input is left
  as it is and counts 0.
- **Bytes out**: every chunk of the returned iterable that the server took (a chunk counts once
  the server asks for the next one, or the iterable ends), and every call of the legacy
  ``write()`` callable that returned. A response of the server's ``wsgi.file_wrapper`` over a
  real file goes back to the server as it is, so the server's ``sendfile`` path still works: it
  is sized from the file (its size less its current position, ``fstat`` and ``lseek``; at most
  the response's ``Content-Length``), never read. A wrapper class (gunicorn, wsgiref) is told
  by ``isinstance``; a wrapper function (uWSGI, which knows its file by identity) is wrapped for
  the application's call to note what it returns, and given back to the environ before the
  server sees the response. HEAD, 1xx, 204 and 304 count 0 bytes out.
- **Latency**: from the call to the iterable's ``close()``, which the server calls after the
  last byte (PEP 3333), not when the application returns.
- **Status**: the class of the status given to ``start_response``. An exception out of the
  application (or out of its iterable) counts as 500 and goes on untouched; a response the
  server stopped taking (the client went away: ``close()`` before the iterable ended, or a
  ``write()`` that raised) counts with no status class (PROTOCOL.md §4.4). A
  ``BaseException`` that is not an ``Exception`` (a worker's timeout abort) counts with no
  status class too: no response was sent.
- **Route**: ``environ["bwmon.route"]``, which an adapter (``bwmon_client.django``) or the
  application sets to the route template the framework resolved, or what the ``route``
  function given returns (``bwmon_client.flask``'s reads the rule Flask matched); read when the
  application calls ``start_response`` (the framework has resolved the route, and its request
  objects are still alive) and, if there was none then, when the request is recorded;
  ``<unmatched>`` when absent. Never matched here.

All per-request state lives in the request's own objects, never on the middleware. Nothing on
the request path does I/O (``record`` only updates the emitter's counters; its background
flusher sends) or raises out of the middleware: only the application's and the server's own
exceptions pass through, unchanged.

This module is compiled with mypyc where the package is built with a C compiler
(clients/python/setup.py), and compiled code checks annotated types when it runs: what comes
from the application or the server (a status, headers, chunks, what an input returns) is typed
``Any`` here, so that the compiled module takes whatever the pure one takes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bwmon_client import Emitter

ROUTE_KEY = "bwmon.route"
"""The environ key an adapter sets to the resolved route template."""

_NO_BODY_STATUSES = frozenset((204, 304))

Write = Callable[[bytes], object]
StartResponse = Callable[..., Write]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Record(Protocol):
    def __call__(
        self,
        route: str | None,
        method: str,
        status: int | None,
        bytes_in: int,
        bytes_out: int,
        latency_s: float,
    ) -> None: ...


def route_of(environ: dict[str, Any]) -> str | None:
    """The route template an adapter or the application put in the environ, or None."""
    route = environ.get(ROUTE_KEY)
    return route if isinstance(route, str) else None


class BwmonWSGIMiddleware:
    """Count every request of ``app`` into ``emitter`` (default: the process's,
    ``bwmon_client.emitter(service)``). ``route``: a function of the environ that returns the
    route template the framework resolved (None: no route matched), called when the
    application calls ``start_response`` and, if it returned None, again when the request is
    recorded; by default ``environ["bwmon.route"]``."""

    __slots__ = ("_record", "app", "emitter", "route")

    def __init__(
        self,
        app: WSGIApp,
        emitter: Emitter | None = None,
        service: str | None = None,
        route: Callable[[dict[str, Any]], str | None] = route_of,
    ) -> None:
        if emitter is None:
            from bwmon_client import emitter as process_emitter

            emitter = process_emitter(service)
        self.app = app
        self.emitter = emitter
        self.route = route
        self._record: _Record = emitter.record

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        exchange = _Exchange(environ, start_response, self._record, self.route)
        stream = environ.get("wsgi.input")
        if stream is not None:
            # A request with neither a Content-Length (other than 0) nor a Transfer-Encoding
            # has no body (RFC 9112 §6.3): its input gives nothing, so nothing to count.
            length = environ.get("CONTENT_LENGTH")
            if (length and length != "0") or "HTTP_TRANSFER_ENCODING" in environ:
                environ["wsgi.input"] = exchange.input = _CountedInput(stream)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and not isinstance(file_wrapper, type):
            # A function (uWSGI's): the server knows its file by identity, so note what it
            # returns; a class (gunicorn's, wsgiref's) is told by isinstance.
            environ["wsgi.file_wrapper"] = exchange.noting(file_wrapper)
        try:
            body = self.app(environ, exchange.start_response)
        except Exception:
            # A write() that raised is a client gone, whatever the application made of it.
            exchange.finish(None if exchange.write_failed else 500, exchange.written)
            raise
        except BaseException:
            exchange.finish(None, exchange.written)
            raise
        try:
            return exchange.respond(body, file_wrapper)
        except Exception:  # a body object that fails an attribute lookup: served, not counted
            return body


class _CountedInput:
    """``wsgi.input`` that counts the bytes the application reads of it."""

    __slots__ = ("_stream", "count")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> Any:
        data = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> Any:
        line = self._stream.readline(*args)
        self.count += len(line)
        return line

    def readlines(self, *args: Any) -> Any:
        lines = self._stream.readlines(*args)
        self.count += sum(map(len, lines))
        return lines

    def readinto(self, buffer: Any) -> Any:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:  # PEP 3333 asks only for read: a reader that has readinto gets one
            data = self._stream.read(len(buffer))
            n: Any = len(data)
            memoryview(buffer).cast("B")[: len(data)] = data
        else:
            n = readinto(buffer)
        if n:
            self.count += n
        return n

    def __iter__(self) -> Iterator[Any]:
        for line in self._stream:
            self.count += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Exchange:
    """One request: the ``start_response`` and ``write`` the application gets, and the
    iterable the server gets back. Records the request exactly once."""

    __slots__ = (
        "_body",
        "_environ",
        "_error",
        "_exhausted",
        "_file",
        "_headers",
        "_record",
        "_recorded",
        "_route",
        "_route_name",
        "_sent",
        "_server_file_wrapper",
        "_server_start_response",
        "_server_write",
        "_start",
        "_status",
        "input",
        "write_failed",
        "written",
    )

    def __init__(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        record: _Record,
        route: Callable[[dict[str, Any]], str | None],
    ) -> None:
        self._start = perf_counter()
        self._environ = environ
        self._server_start_response = start_response
        self._record = record
        self._route = route
        self._route_name: str | None = None
        # What the application gave start_response, kept as given: nothing here checks its
        # types (the server does).
        self._status: Any = None
        self._headers: Any = []
        self._server_write: Write | None = None
        self._body: Iterable[bytes] = ()
        self._server_file_wrapper: Callable[..., Any] | None = None
        self._file: object = None
        self.input: _CountedInput | None = None
        self.written = 0  # through write()
        self._sent = 0  # of the iterable
        self._exhausted = self._error = self.write_failed = self._recorded = False

    # -- what the application calls ----------------------------------------------------------

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Write:
        # The server's first: when it refuses (a bad status, headers already sent with
        # exc_info), the application sees its exception and nothing here changes.
        write = self._server_start_response(status, headers, exc_info)
        self._status = status
        self._headers = headers
        self._server_write = write
        # Named now, while the framework's request objects are alive (Flask's goes from the
        # environ once its context is popped, before the body is sent); again when recorded
        # if it was not yet.
        try:
            self._route_name = self._route(self._environ)
        except Exception:  # a route function that fails: named when recorded, or not at all
            self._route_name = None
        return self.write

    def write(self, data: Any) -> None:
        try:
            self._server_write(data)  # type: ignore[misc]  # set by start_response
        except BaseException:
            self.write_failed = True
            raise
        self.written += len(data)

    # -- what the server gets ----------------------------------------------------------------

    def noting(self, file_wrapper: Callable[..., Any]) -> Callable[..., Any]:
        """The server's ``file_wrapper`` function, noting the object it returns."""
        self._server_file_wrapper = file_wrapper

        def noted(*args: Any, **kwargs: Any) -> Any:
            wrapped = file_wrapper(*args, **kwargs)
            self._file = wrapped
            return wrapped

        return noted

    def respond(self, body: Iterable[bytes], file_wrapper: Any) -> Iterable[bytes]:
        """What goes back to the server for the application's ``body``: this exchange, or the
        server's own file object (its sendfile path kept) with ``close`` hooked.
        ``file_wrapper``: the server's ``wsgi.file_wrapper`` as it came (None: it has none)."""
        if file_wrapper is not None:
            server_function = self._server_file_wrapper
            if server_function is not None:
                self._environ["wsgi.file_wrapper"] = server_function  # the server's again
                if type(body) is not list and body is self._file:
                    return self._respond_file(body)
            elif type(body) is not list and isinstance(body, file_wrapper):
                return self._respond_file(body)
        self._body = body
        return self

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._body:
                yield chunk
                # The server asked for the next chunk: it took this one.
                self._sent += len(chunk)
        except GeneratorExit:
            raise
        except BaseException:
            self._error = True
            raise
        self._exhausted = True

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self.write_failed:
                status: int | None = None
            elif self._error:
                status = 500
            elif self._exhausted:
                status = self._status_code()
            else:
                status = None  # the server stopped taking the response
            self.finish(status, self._sent + self.written)

    def _respond_file(self, body: Any) -> Iterable[bytes]:
        size = _remaining_file_bytes(body)
        if size is None:  # not a file the server can send by itself: it iterates, so do we
            self._body = body
            return self
        close = getattr(body, "close", None)
        exchange = self

        def close_file() -> None:
            try:
                if close is not None:
                    close()
            finally:
                exchange.finish(exchange._status_code(), exchange._file_bytes(size))

        try:
            body.close = close_file
        except (AttributeError, TypeError):  # no instance attributes: latency to the return
            self.finish(self._status_code(), self._file_bytes(size))
        result: Iterable[bytes] = body
        return result

    # -- recording ---------------------------------------------------------------------------

    def _status_code(self) -> int | None:
        status = self._status
        if status is None:
            return None
        try:
            return int(status[:3])
        except (TypeError, ValueError):
            return None

    def _file_bytes(self, size: int) -> int:
        """What the server sends of a file with ``size`` bytes left: at most the response's
        ``Content-Length``."""
        for name, value in self._headers:
            if name.lower() == "content-length":
                try:
                    return min(size, int(value))
                except ValueError:
                    break
        return size

    def finish(self, status: int | None, bytes_out: int) -> None:
        if self._recorded:
            return
        self._recorded = True
        try:
            environ = self._environ
            method = environ.get("REQUEST_METHOD") or "GET"
            if method == "HEAD" or (
                status is not None and (status in _NO_BODY_STATUSES or status < 200)
            ):
                bytes_out = 0
            route = self._route_name
            if route is None:
                try:
                    route = self._route(environ)
                except Exception:  # a route function that fails: the request still counts
                    route = None
            counted_input = self.input
            self._record(
                route,
                method,
                status,
                counted_input.count if counted_input is not None else 0,
                bytes_out,
                perf_counter() - self._start,
            )
        except Exception:  # counting must never fail a request
            return


def _remaining_file_bytes(wrapper: Any) -> int | None:
    """The bytes left to send of the real file under a server's file wrapper, or of the file a
    server's file wrapper function returned (its size less its position), or None when it has
    no file descriptor."""
    filelike = getattr(wrapper, "filelike", wrapper)  # uWSGI's is the file itself
    try:
        fd = filelike.fileno()
        position = os.lseek(fd, 0, os.SEEK_CUR)
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, ValueError, TypeError, io.UnsupportedOperation):
        return None
    return max(0, size - position)
