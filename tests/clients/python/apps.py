"""The FastAPI application the client tests serve: one route per kind of response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

STREAM_CHUNKS = 300
ETAG = '"v1"'
PAGE = b"<p>the page</p>" * 50


def chunk(i: int) -> bytes:
    """The ``i``-th chunk of a streamed body: sizes from 0 to 2,999 bytes."""
    return bytes([i % 251]) * ((i * 7919) % 3000)


def make_app(file_path: Path, http_middleware: bool = False) -> FastAPI:
    """The routes; ``http_middleware``: with a Starlette ``BaseHTTPMiddleware`` inside, as many
    applications have (it runs the routes in a task of its own and streams their bodies)."""
    app = FastAPI()
    if http_middleware:

        @app.middleware("http")
        async def tag(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await call_next(request)
            response.headers["x-tagged"] = "1"
            return response

    @app.get("/stream/{count}")
    async def stream(count: int) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(count):
                yield chunk(i)
                if i % 50 == 0:
                    await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/endless")
    async def endless() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100_000):
                yield b"x" * 1000
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks())

    @app.api_route("/file", methods=["GET", "HEAD"])
    async def file() -> FileResponse:
        return FileResponse(file_path)

    @app.get("/page")
    async def page(request: Request) -> Response:
        if request.headers.get("if-none-match") == ETAG:
            return Response(status_code=304, headers={"etag": ETAG})
        return Response(PAGE, headers={"etag": ETAG}, media_type="text/html")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id, "double": 2 * item_id}

    @app.get("/sized/{size}")
    async def sized(size: int) -> Response:
        return Response(b"s" * size, media_type="application/octet-stream")

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app
