"""The test project's views."""

from __future__ import annotations

import os
from collections.abc import Iterator

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)


def _size(request: HttpRequest, default: int = 10) -> int:
    return int(request.GET.get("size", default))


def item(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse(bytes([65 + pk % 26]) * _size(request), content_type="text/plain")


def order(request: HttpRequest, ref: str) -> HttpResponse:
    response = HttpResponse(f"order {ref}".encode() * 10, content_type="text/plain")
    response["ETag"] = f'"order-{ref}"'  # ConditionalGetMiddleware answers 304 on a match
    return response


def archive(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year.encode(), content_type="text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    chunks = int(request.GET.get("chunks", 10))

    def body() -> Iterator[bytes]:
        for index in range(chunks):
            yield b"%d," % index * 50

    return StreamingHttpResponse(body(), content_type="text/plain")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(open(os.environ["BWMON_TEST_FILE"], "rb"))


def upload(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(len(request.body)).encode(), content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")
