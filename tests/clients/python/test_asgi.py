"""The ASGI middleware in-process, message by message: what it counts of each kind of message,
exceptions, clients that go away, concurrent requests, and the scopes it leaves alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwmon_client import UNMATCHED_ROUTE, Emitter
from bwmon_client.asgi import BwmonMiddleware, Message, Receive, Scope, Send


class Route:
    def __init__(self, path: str, path_format: str | None = None) -> None:
        self.path = path
        if path_format is not None:
            self.path_format = path_format


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    made = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600)
    yield made
    made.close(0)


def http_scope(method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/x", "headers": [], **extra}


async def call(
    app: Any, scope: dict[str, Any], incoming: Sequence[Message] | None = None
) -> list[Message]:
    """Run ``app`` as a server would: ``incoming`` are the messages ``receive`` gives (then
    it waits), the sent ones are returned."""
    queue = list(incoming if incoming is not None else [{"type": "http.request"}])
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def responder(
    status: int = 200, chunks: list[bytes] | None = None, route: str | None = "/r/{id}"
) -> Any:
    """An app that reads the whole request body, sets the route, then sends ``chunks``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if route is not None:
            scope["route"] = Route(route.replace("{id}", "{id:int}"), route)
        await send({"type": "http.response.start", "status": status, "headers": []})
        body = chunks if chunks is not None else [b""]
        for i, chunk in enumerate(body):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i + 1 < len(body)}
            )

    return app


def only(emitter: Emitter) -> tuple[tuple[str, str], dict[str, Any]]:
    ((key, row),) = emitter.totals().items()
    return key, row


def request_messages(sizes: list[int]) -> list[Message]:
    return [
        {"type": "http.request", "body": b"i" * n, "more_body": i + 1 < len(sizes)}
        for i, n in enumerate(sizes)
    ] or [{"type": "http.request"}]


@given(
    st.lists(st.integers(0, 5000), max_size=20),
    st.lists(st.integers(0, 5000), min_size=1, max_size=40),
)
@settings(max_examples=50, deadline=None)
def test_body_bytes_are_counted_from_the_chunks(incoming: list[int], outgoing: list[int]) -> None:
    emitter = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600)
    try:
        app = BwmonMiddleware(responder(200, [b"o" * n for n in outgoing]), emitter)
        asyncio.run(call(app, http_scope("POST"), request_messages(incoming)))
        key, row = only(emitter)
        assert key == ("/r/{id}", "POST")
        assert (row["requests"], row["bytes_in"], row["bytes_out"]) == (
            1,
            sum(incoming),
            sum(outgoing),
        )
        assert row["status"] == [0, 1, 0, 0, 0]
    finally:
        emitter.close(0)


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 30)), min_size=1, max_size=30))
@settings(max_examples=30, deadline=None)
def test_concurrent_requests_keep_their_own_counts(requests: list[tuple[int, int]]) -> None:
    emitter = Emitter("svc", url="udp://127.0.0.1:9", interval_s=3600)

    def interleaving(size: int, chunks: int) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            scope["route"] = Route(f"/size/{size % 3}")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(chunks):
                await asyncio.sleep(0)  # let the other requests run in between
                body = b"z" * size
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        return BwmonMiddleware(app, emitter)

    async def all_requests() -> None:
        await asyncio.gather(*(call(interleaving(s, c), http_scope()) for s, c in requests))

    try:
        asyncio.run(all_requests())
        expected: dict[tuple[str, str], int] = {}
        for size, chunks in requests:
            key = (f"/size/{size % 3}", "GET")
            expected[key] = expected.get(key, 0) + size * chunks
        assert {k: row["bytes_out"] for k, row in emitter.totals().items()} == expected
    finally:
        emitter.close(0)


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_head_304_and_204_count_no_bytes_out(emitter: Emitter, method: str, status: int) -> None:
    app = BwmonMiddleware(responder(status, [b"ignored by the server"]), emitter)
    asyncio.run(call(app, http_scope(method)))
    key, row = only(emitter)
    assert key == ("/r/{id}", method)
    assert row["bytes_out"] == 0
    assert row["status"][status // 100 - 1] == 1


def test_pathsend_is_sized_from_the_file(emitter: Emitter, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"f" * 12345)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    scope = http_scope(extensions={"http.response.pathsend": {}})
    sent = asyncio.run(call(BwmonMiddleware(app, emitter), scope))
    assert sent[-1] == {"type": "http.response.pathsend", "path": str(path)}  # untouched
    assert only(emitter) == (
        (UNMATCHED_ROUTE, "GET"),
        {**only(emitter)[1], "bytes_out": 12345, "requests": 1},
    )
    asyncio.run(call(BwmonMiddleware(app, emitter), http_scope("HEAD")))
    assert emitter.totals()[UNMATCHED_ROUTE, "HEAD"]["bytes_out"] == 0


def test_zerocopy_is_sized_from_its_count_or_the_file(emitter: Emitter, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"f" * 1000)
    with path.open("rb") as file:

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            fd = file.fileno()
            await send(
                {"type": "http.response.zerocopy", "file": fd, "count": 10, "more_body": True}
            )
            await send({"type": "http.response.zerocopy", "file": fd, "offset": 100})

        asyncio.run(call(BwmonMiddleware(app, emitter), http_scope()))
    assert only(emitter)[1]["bytes_out"] == 10 + 900


def test_an_exception_before_the_response_is_a_500_raised_untouched(emitter: Emitter) -> None:
    error = LookupError("no")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = Route("/fails")
        raise error

    with pytest.raises(LookupError) as raised:
        asyncio.run(call(BwmonMiddleware(app, emitter), http_scope()))
    assert raised.value is error
    key, row = only(emitter)
    assert key == ("/fails", "GET")
    assert row["status"] == [0, 0, 0, 0, 1]


def test_an_exception_mid_body_is_a_500_and_one_after_the_end_keeps_the_status(
    emitter: Emitter,
) -> None:
    def app_failing(after_end: bool) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scope["route"] = Route(f"/after-end-{after_end}")
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"abc", "more_body": not after_end})
            raise ValueError("late")

        return BwmonMiddleware(app, emitter)

    for after_end in (False, True):
        with pytest.raises(ValueError, match="late"):
            asyncio.run(call(app_failing(after_end), http_scope()))
    totals = emitter.totals()
    assert totals["/after-end-False", "GET"]["status"] == [0, 0, 0, 0, 1]
    assert totals["/after-end-True", "GET"]["status"] == [0, 1, 0, 0, 0]
    assert totals["/after-end-True", "GET"]["bytes_out"] == 3


def test_a_client_that_went_away_counts_with_no_status(emitter: Emitter) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope["route"] = Route("/gone")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"

    incoming = [{"type": "http.request"}, {"type": "http.disconnect"}]
    asyncio.run(call(BwmonMiddleware(app, emitter), http_scope(), incoming))
    row = emitter.totals()["/gone", "GET"]
    assert (row["requests"], row["status"], row["bytes_out"]) == (1, [0] * 5, 5)


def test_a_send_that_raises_counts_with_no_status_and_raises(emitter: Emitter) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"never", "more_body": True})

    async def run() -> None:
        async def receive() -> Message:
            return {"type": "http.request"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")

        await BwmonMiddleware(app, emitter)(http_scope(), receive, send)

    with pytest.raises(OSError, match="reset"):
        asyncio.run(run())
    row = only(emitter)[1]
    assert (row["requests"], row["status"], row["bytes_out"]) == (1, [0] * 5, 0)


def test_a_disconnect_after_the_response_ended_keeps_the_status(emitter: Emitter) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        assert (await receive())["type"] == "http.disconnect"  # as uvicorn answers then

    incoming = [{"type": "http.request"}, {"type": "http.disconnect"}]
    asyncio.run(call(BwmonMiddleware(app, emitter), http_scope(), incoming))
    assert only(emitter)[1]["status"] == [0, 1, 0, 0, 0]


def test_a_cancelled_request_counts_with_no_status(emitter: Emitter) -> None:
    async def run() -> None:
        started = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(call(BwmonMiddleware(app, emitter), http_scope()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert only(emitter)[1]["status"] == [0] * 5


def test_the_accounting_never_raises_into_the_app(emitter: Emitter) -> None:
    def broken_route(scope: Scope) -> str | None:
        raise KeyError("route")

    app = BwmonMiddleware(responder(200, [b"ok"]), emitter, route=broken_route)
    sent = asyncio.run(call(app, http_scope()))
    assert sent[-1]["body"] == b"ok"
    # the request still counts, on no route
    assert only(emitter)[0] == ("<unmatched>", "GET")
    assert only(emitter)[1]["requests"] == 1
    # messages the middleware cannot read go through as they are
    odd: list[Message] = [{"type": "http.response.start", "status": "two hundred"}, {"nope": 1}]

    async def odd_app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in odd:
            await send(message)

    assert asyncio.run(call(BwmonMiddleware(odd_app, emitter), http_scope())) == odd


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_websocket_and_lifespan_scopes_pass_through_untouched(emitter: Emitter, kind: str) -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([scope, receive, send])

    async def receive() -> Message:
        return {"type": f"{kind}.connect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": kind}
    asyncio.run(BwmonMiddleware(app, emitter)(scope, receive, send))
    assert seen == [scope, receive, send]
    assert seen[1] is receive
    assert seen[2] is send
    assert emitter.totals() == {}
