"""``BwmonWSGIMiddleware`` driven in-process the way a WSGI server drives an application (call,
iterate, ``close``), counting into a real ``Emitter`` read back with ``totals()``: what is
counted in each corner of PEP 3333 (the file wrapper kept for sendfile, ``write()``, lazy
``start_response``, a client gone, exceptions), and that nothing of the middleware's own ever
raises into the server."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bwmon_client import Emitter
from bwmon_client.wsgi import ROUTE_KEY, BwmonWSGIMiddleware, StartResponse

App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ServerFileWrapper:
    """A server's ``wsgi.file_wrapper`` (gunicorn's and wsgiref's shape)."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.blksize):
            yield data


class SlottedFileWrapper:
    """A file wrapper whose instances take no attribute but its own."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.blksize):
            yield data

    def close(self) -> None:
        self.filelike.close()


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    # Never sends within a test (a long interval to a port nothing listens on).
    made = Emitter("unit", url="udp://127.0.0.1:9", interval_s=3600)
    yield made
    made.close()


def environ(method: str = "GET", body: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.file_wrapper": ServerFileWrapper,
        **extra,
    }


class Server:
    """Drives one request as a server does; keeps what it got."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.received = b""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status = status
        return self.write

    def write(self, data: bytes) -> None:
        self.received += data

    def serve(self, app: App, env: dict[str, Any], take: int | None = None) -> Iterable[bytes]:
        """Call, iterate (at most ``take`` chunks), close; the iterable the server got."""
        result = app(env, self.start_response)
        try:
            for index, chunk in enumerate(result):
                if take is not None and index >= take:
                    break
                self.received += chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return result


def totals(emitter: Emitter, route: str = "<unmatched>", method: str = "GET") -> dict[str, Any]:
    return emitter.totals().get((route, method), {"requests": 0})


def test_body_chunks_and_input_reads_are_counted(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        stream = env["wsgi.input"]
        first = stream.readline()
        rest = [*stream.readlines(2), stream.read(3)]
        buffer = bytearray(4)
        stream.readinto(buffer)
        tail = list(stream)
        env[ROUTE_KEY] = "/orders/{id}"
        start_response("201 Created", [])
        return iter([first, *rest, bytes(buffer), *tail])

    body = b"line one\nline two\nabcdefgh\nlast line\n"
    server = Server()
    server.serve(BwmonWSGIMiddleware(app, emitter), environ("POST", body))
    counted = totals(emitter, "/orders/{id}", "POST")
    assert server.received == body
    assert counted["requests"] == 1
    assert counted["status"] == [0, 1, 0, 0, 0]
    assert counted["bytes_in"] == counted["bytes_out"] == len(body)


def test_a_request_is_recorded_at_close_not_when_the_app_returns(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"a", b"bc"]

    result = BwmonWSGIMiddleware(app, emitter)(environ(), Server().start_response)
    assert b"".join(result) == b"abc"
    assert totals(emitter)["requests"] == 0
    result.close()  # type: ignore[attr-defined]
    assert totals(emitter)["bytes_out"] == 3


def test_legacy_write_and_lazy_start_response_are_counted(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        write = start_response("200 OK", [])  # inside the generator: on the first next()
        write(b"12345")
        yield b"678"

    server = Server()
    server.serve(BwmonWSGIMiddleware(app, emitter), environ())
    assert server.received == b"12345678"
    assert totals(emitter)["bytes_out"] == 8
    assert totals(emitter)["status"] == [0, 1, 0, 0, 0]


def sized_file(tmp_path: Path, size: int, position: int) -> io.BufferedReader:
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(size))
    file = path.open("rb")
    file.seek(position)
    return file


def test_a_file_response_goes_back_to_the_server_as_its_own_wrapper(
    emitter: Emitter, tmp_path: Path
) -> None:
    wrappers: list[Any] = []

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrappers.append(env["wsgi.file_wrapper"](sized_file(tmp_path, 10_000, 1_000)))
        return wrappers[-1]  # type: ignore[no-any-return]

    server = Server()
    result = BwmonWSGIMiddleware(app, emitter)(environ(), server.start_response)
    # The server's own object: it recognises it (isinstance) and sends the file itself.
    assert result is wrappers[0]
    assert isinstance(result, ServerFileWrapper)
    assert totals(emitter)["requests"] == 0
    result.close()
    assert result.filelike.closed
    assert totals(emitter)["bytes_out"] == 9_000  # what is left of the file, never read


def test_a_file_response_is_sized_at_most_by_its_content_length(
    emitter: Emitter, tmp_path: Path
) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "4000")])
        return env["wsgi.file_wrapper"](sized_file(tmp_path, 10_000, 0))  # type: ignore[no-any-return]

    result = BwmonWSGIMiddleware(app, emitter)(environ(), Server().start_response)
    result.close()  # type: ignore[attr-defined]
    assert totals(emitter)["bytes_out"] == 4_000


@pytest.mark.parametrize(("method", "status"), [("HEAD", "200 OK"), ("GET", "304 Not Modified")])
def test_head_and_304_count_no_bytes_out(
    emitter: Emitter, tmp_path: Path, method: str, status: str
) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [])
        if env["PATH_INFO"] == "/file":
            return env["wsgi.file_wrapper"](sized_file(tmp_path, 500, 0))  # type: ignore[no-any-return]
        return [b"a body the server drops"]

    middleware = BwmonWSGIMiddleware(app, emitter)
    Server().serve(middleware, environ(method))
    Server().serve(middleware, environ(method, PATH_INFO="/file"))
    counted = totals(emitter, method=method)
    assert counted["requests"] == 2
    assert counted["bytes_out"] == 0


def test_a_file_wrapper_without_instance_attributes_is_recorded_at_the_return(
    emitter: Emitter, tmp_path: Path
) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return SlottedFileWrapper(sized_file(tmp_path, 300, 0))

    env = environ()
    env["wsgi.file_wrapper"] = SlottedFileWrapper
    result = BwmonWSGIMiddleware(app, emitter)(env, Server().start_response)
    assert isinstance(result, SlottedFileWrapper)
    assert totals(emitter)["bytes_out"] == 300
    result.close()


def test_a_file_wrapper_over_no_real_file_is_iterated_and_counted(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return env["wsgi.file_wrapper"](io.BytesIO(b"x" * 20_000), 4096)  # type: ignore[no-any-return]

    server = Server()
    server.serve(BwmonWSGIMiddleware(app, emitter), environ())
    assert len(server.received) == 20_000
    assert totals(emitter)["bytes_out"] == 20_000


def test_an_exception_before_start_response_counts_500_and_goes_on_untouched(
    emitter: Emitter,
) -> None:
    error = LookupError("from the application")

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        env["wsgi.input"].read(5)
        raise error

    with pytest.raises(LookupError) as raised:
        BwmonWSGIMiddleware(app, emitter)(environ("POST", b"0123456789"), Server().start_response)
    assert raised.value is error
    counted = totals(emitter, method="POST")
    assert (counted["requests"], counted["status"], counted["bytes_in"]) == (
        1,
        [0, 0, 0, 0, 1],
        5,
    )


def test_an_exception_in_the_body_after_a_2xx_start_counts_500(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise ValueError("mid-body")

    with pytest.raises(ValueError, match="mid-body"):
        Server().serve(BwmonWSGIMiddleware(app, emitter), environ())
    counted = totals(emitter)
    assert counted["status"] == [0, 0, 0, 0, 1]
    assert counted["bytes_out"] == 7


def test_a_worker_abort_counts_with_no_status_class(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        BwmonWSGIMiddleware(app, emitter)(environ(), Server().start_response)
    assert totals(emitter)["requests"] == 1
    assert totals(emitter)["status"] == [0, 0, 0, 0, 0]


def test_a_client_gone_mid_stream_counts_the_chunks_taken_and_no_status(
    emitter: Emitter,
) -> None:
    closed: list[bool] = []

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            while True:
                yield b"0123456789"
        finally:
            closed.append(True)

    Server().serve(BwmonWSGIMiddleware(app, emitter), environ(), take=3)
    assert closed == [True]  # the application's generator was closed
    counted = totals(emitter)
    assert (counted["requests"], counted["status"], counted["bytes_out"]) == (
        1,
        [0, 0, 0, 0, 0],
        30,
    )


def test_a_write_that_fails_is_a_client_gone(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        write(b"first")
        write(b"second")
        return []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        def write(data: bytes) -> None:
            if data == b"second":
                raise BrokenPipeError

        return write

    with pytest.raises(BrokenPipeError):
        BwmonWSGIMiddleware(app, emitter)(environ(), start_response)
    counted = totals(emitter)
    assert (counted["status"], counted["bytes_out"]) == ([0, 0, 0, 0, 0], 5)


def test_interleaved_requests_keep_their_own_counts(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        env[ROUTE_KEY] = env["PATH_INFO"]
        size = len(env["wsgi.input"].read())
        start_response("200 OK", [])
        for _ in range(size):
            yield b"z" * size

    middleware = BwmonWSGIMiddleware(app, emitter)
    servers = [Server() for _ in range(3)]
    results = [
        middleware(environ("POST", b"q" * n, PATH_INFO=f"/r{n}"), server.start_response)
        for n, server in zip((2, 3, 5), servers, strict=True)
    ]
    iterators = [iter(result) for result in results]
    for _ in range(6):
        for iterator in iterators:
            next(iterator, None)
    for n, result in zip((2, 3, 5), results, strict=True):
        result.close()  # type: ignore[attr-defined]
        counted = totals(emitter, f"/r{n}", "POST")
        assert (counted["bytes_in"], counted["bytes_out"]) == (n, n * n)


class BrokenEmitter:
    def record(self, *args: Any) -> None:
        raise RuntimeError("broken")


def test_an_emitter_that_raises_never_fails_the_request() -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"fine"]

    server = Server()
    server.serve(BwmonWSGIMiddleware(app, BrokenEmitter()), environ())  # type: ignore[arg-type]
    assert server.received == b"fine"


@given(
    chunks=st.lists(st.binary(max_size=40), max_size=12),
    take=st.none() | st.integers(0, 12),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
)
def test_bytes_out_are_the_chunks_the_server_took(
    chunks: list[bytes], take: int | None, method: str
) -> None:
    emitter = Emitter("unit", url="udp://127.0.0.1:9", interval_s=3600)
    try:

        def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield from chunks

        server = Server()
        server.serve(BwmonWSGIMiddleware(app, emitter), environ(method), take)
        counted = totals(emitter, method=method)
        finished = take is None or take >= len(chunks)
        assert counted["requests"] == 1
        assert counted["status"] == ([0, 1, 0, 0, 0] if finished else [0] * 5)
        assert counted["bytes_out"] == (0 if method == "HEAD" else len(server.received))
    finally:
        emitter.close()


def test_a_route_function_names_the_route_after_the_response(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"body"
        env["framework.rule"] = "/books/<id>"  # set while the body is sent, read at close

    middleware = BwmonWSGIMiddleware(app, emitter, route=lambda env: env.get("framework.rule"))
    Server().serve(middleware, environ())
    assert totals(emitter, "/books/<id>")["bytes_out"] == 4


def test_a_route_function_that_raises_counts_the_request_unmatched(emitter: Emitter) -> None:
    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("404 Not Found", [])
        return [b"nothing here"]

    middleware = BwmonWSGIMiddleware(app, emitter, route=lambda env: env["framework.rule"])
    Server().serve(middleware, environ())
    assert totals(emitter)["status"] == [0, 0, 0, 1, 0]


def test_a_file_wrapper_function_keeps_the_servers_file_by_identity(
    emitter: Emitter, tmp_path: Path
) -> None:
    """uWSGI's way: ``wsgi.file_wrapper`` is a function, and the server sends the file itself
    when the application returns the very object that function returned."""
    given: list[Any] = []

    def server_file_wrapper(filelike: Any, blksize: int = 8192) -> Any:
        given.append(filelike)
        return filelike

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return env["wsgi.file_wrapper"](sized_file(tmp_path, 5_000, 100))  # type: ignore[no-any-return]

    env = environ()
    env["wsgi.file_wrapper"] = server_file_wrapper
    result = BwmonWSGIMiddleware(app, emitter)(env, Server().start_response)
    assert result is given[0]  # the server's own object: it sends it with sendfile
    assert env["wsgi.file_wrapper"] is server_file_wrapper
    assert totals(emitter)["requests"] == 0
    file: Any = given[0]
    file.close()  # as the server does after sending it
    assert file.closed
    assert totals(emitter)["bytes_out"] == 4_900


class PlainInput:
    """A ``wsgi.input`` with only what PEP 3333 asks for (uWSGI's has no ``readinto``)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._data.readline(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._data.readlines(hint)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._data)


def test_readinto_works_over_an_input_without_it(emitter: Emitter) -> None:
    """Werkzeug reads through ``readinto`` when the stream has one, and every wrapped input
    has one."""

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        buffer = bytearray(6)
        got = env["wsgi.input"].readinto(buffer)
        start_response("200 OK", [])
        return [bytes(buffer[:got])]

    server = Server()
    server.serve(
        BwmonWSGIMiddleware(app, emitter),
        environ("PUT") | {"wsgi.input": PlainInput(b"abcdefghij"), "CONTENT_LENGTH": "10"},
    )
    assert server.received == b"abcdef"
    assert totals(emitter, method="PUT")["bytes_in"] == 6


def test_a_request_without_a_body_keeps_its_input_and_counts_0_in(emitter: Emitter) -> None:
    """No Content-Length (or 0) and no Transfer-Encoding: no body (RFC 9112 §6.3), nothing to
    wrap; a chunked body without a length is counted as read."""
    inputs: list[object] = []

    def app(env: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        inputs.append(env["wsgi.input"])
        read = env["wsgi.input"].read()
        start_response("200 OK", [])
        return [read]

    middleware = BwmonWSGIMiddleware(app, emitter)
    for extra in ({}, {"CONTENT_LENGTH": "0"}):
        given = io.BytesIO(b"")
        Server().serve(middleware, environ("DELETE") | extra | {"wsgi.input": given})
        assert inputs[-1] is given
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    server = Server()
    server.serve(middleware, environ("PATCH", b"0123456789abc") | {"CONTENT_LENGTH": ""} | chunked)
    assert server.received == b"0123456789abc"
    assert totals(emitter, method="DELETE")["requests"] == 2
    assert totals(emitter, method="DELETE")["bytes_in"] == 0
    assert totals(emitter, method="PATCH")["bytes_in"] == 13
