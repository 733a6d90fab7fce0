"""The Flask application that tests/clients/python/test_flask_gunicorn.py serves with gunicorn.

Configured from the environment: ``BWMON_TEST_UDP_PORT`` (the daemon's UDP port),
``BWMON_TEST_FILE`` (the file ``/file`` sends) and ``BWMON_TEST_SERVICE``. Next to the Flask
application, ``/legacy/...`` is a bare WSGI application that answers through the ``write()``
callable, counted by its own ``BwmonWSGIMiddleware`` on the same emitter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, Response, request, send_file

from bwmon_client import Emitter
from bwmon_client.flask import instrument
from bwmon_client.wsgi import ROUTE_KEY, BwmonWSGIMiddleware, StartResponse

emitter = Emitter(
    os.environ.get("BWMON_TEST_SERVICE", "shop"),
    url=f"udp://127.0.0.1:{os.environ['BWMON_TEST_UDP_PORT']}",
    interval_s=0.2,
)
app = instrument(Flask(__name__), emitter)


def chunk(index: int, size: int) -> bytes:
    return bytes([65 + index % 26]) * size


@app.get("/stream/<int:chunks>")
def stream(chunks: int) -> Response:
    size = request.args.get("size", 100, type=int)

    def body() -> Iterator[bytes]:
        for index in range(chunks):
            yield chunk(index, size + index)

    return Response(body(), mimetype="application/octet-stream")


@app.get("/file")
def file() -> Response:
    return send_file(os.environ["BWMON_TEST_FILE"], conditional=True, etag=True)


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Response:
    size = request.args.get("size", 10, type=int)
    return Response(chunk(item_id, size), mimetype="application/octet-stream")


@app.get("/boom")
def boom() -> Response:
    raise RuntimeError("the view failed")


@app.get("/slow-stream")
def slow_stream() -> Response:
    def body() -> Iterator[bytes]:
        yield b"first "
        time.sleep(0.3)
        yield b"last"

    return Response(body(), mimetype="text/plain")


@app.get("/forever")
def forever() -> Response:
    def body() -> Iterator[bytes]:
        while True:
            yield b"x" * 16384

    return Response(body(), mimetype="application/octet-stream")


@app.post("/upload")
def upload() -> Response:
    data = request.get_data()
    return Response(str(len(data)), mimetype="text/plain")


@app.get("/worker")
def worker() -> Response:
    time.sleep(request.args.get("sleep", 0.0, type=float))
    return Response(f"{os.getpid()} {emitter.boot}", mimetype="text/plain")


def legacy(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/legacy/raise":
        environ[ROUTE_KEY] = "/legacy/raise"
        raise RuntimeError("out of the application before start_response")
    environ[ROUTE_KEY] = "/legacy/write"
    size = int(environ.get("QUERY_STRING") or 100)
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    write(chunk(1, size))
    write(chunk(2, size))
    return [chunk(3, size)]


counted_legacy = BwmonWSGIMiddleware(legacy, emitter)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO", "").startswith("/legacy/"):
        return counted_legacy(environ, start_response)
    return app(environ, start_response)
