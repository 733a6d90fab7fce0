"""One HTTP POST over trio, written and read by h11: a fresh connection per request (alerts are
few), TLS for ``https://`` with the system's trust store, basic authentication from the URL's
``user:password@``, the whole exchange bounded by a timeout and the answer's body read up to
``MAX_REPLY_BYTES``.

Errors (exception tree of ``protocol.errors``)::

    BwmonError
     └── DeliveryFailed   no answer: refused, reset, timed out, TLS or HTTP protocol error

An answer of any status is an ``Answer``; what a status means is the caller's decision
(``delivery.retryable``). Never logs: the caller names the sink, never the URL (a Slack
webhook's path is its credential).
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Final
from urllib.parse import unquote, urlsplit

import h11
import trio

from protocol.errors import BwmonError

MAX_REPLY_BYTES: Final = 64 * 1024
_READ_BYTES: Final = 16 * 1024


class DeliveryFailed(BwmonError):
    """The request got no answer: the message says why (never the URL)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after_s: float | None
    body: bytes


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name == b"retry-after":
            try:
                return max(0.0, float(value.decode("ascii")))
            except ValueError:
                return None  # an HTTP date: the backoff decides
    return None


async def post(url: str, body: bytes, headers: list[tuple[str, str]], timeout_s: float) -> Answer:
    """POST ``body`` to ``url`` with ``headers`` (Host, Content-Length and Connection are
    added); ``DeliveryFailed`` when no answer came within ``timeout_s``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rsplit("@", 1)[-1]
    if parts.username is not None:  # https://user:password@host/: basic authentication
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = base64.b64encode(credentials.encode()).decode("ascii")
        headers = [("authorization", f"Basic {basic}"), *headers]
    try:
        with trio.fail_after(timeout_s):
            return await _exchange(host, port, tls, authority, target, body, headers)
    except trio.TooSlowError:
        raise DeliveryFailed(f"no answer within {timeout_s:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:300]) from None


async def _exchange(
    host: str,
    port: int,
    tls: bool,
    authority: str,
    target: str,
    body: bytes,
    headers: list[tuple[str, str]],
) -> Answer:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    async with stream:
        if tls:
            stream = trio.SSLStream(stream, _tls(), server_hostname=host)
        conn = h11.Connection(our_role=h11.CLIENT)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", authority),
                ("content-length", str(len(body))),
                ("connection", "close"),
                *headers,
            ],
        )
        out = b"".join(
            conn.send(event) or b"" for event in (request, h11.Data(data=body), h11.EndOfMessage())
        )
        await stream.send_all(out)
        status: int | None = None
        retry_after: float | None = None
        reply = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                # b"": the peer closed; h11 decides whether that ends the answer.
                conn.receive_data(bytes(await stream.receive_some(_READ_BYTES)))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                retry_after = _retry_after(list(event.headers))
            elif isinstance(event, h11.Data):
                room = MAX_REPLY_BYTES - len(reply)
                reply += bytes(event.data[:room])
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if status is None:
            raise DeliveryFailed("the connection closed before an answer")
        return Answer(status, retry_after, bytes(reply))
