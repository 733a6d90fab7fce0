"""The notifier's HTTP client against a real receiver on loopback."""

from __future__ import annotations

import base64
import socket

import pytest
import trio

from collector.notifications.client import DeliveryFailed, post
from tests.helpers import free_port
from tests.notifications.receiver import Receiver


async def test_a_post_arrives_with_its_headers_and_the_answer_comes_back() -> None:
    receiver = Receiver(status=429, extra={"Retry-After": "7"})
    try:
        url = f"http://127.0.0.1:{receiver.port}/path?q=1"
        answer = await post(url, b'{"a": 1}', [("x-test", "yes")], 5)
    finally:
        receiver.close()
    assert (answer.status, answer.retry_after_s, answer.body) == (429, 7.0, b"ok")
    [request] = receiver.received()
    assert (request.path, request.body) == ("/path?q=1", b'{"a": 1}')
    assert request.headers["x-test"] == "yes"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_no_listener_is_a_delivery_failure() -> None:
    with pytest.raises(DeliveryFailed):
        await post(f"http://127.0.0.1:{free_port()}/", b"{}", [], 5)


async def test_a_receiver_that_never_answers_is_a_delivery_failure_after_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        port = silent.getsockname()[1]
        with trio.fail_after(10), pytest.raises(DeliveryFailed, match=r"no answer within 0\.3 s"):
            await post(f"http://127.0.0.1:{port}/", b"{}", [], 0.3)


async def test_credentials_in_the_url_become_basic_authentication() -> None:
    receiver = Receiver()
    try:
        await post(f"http://bw%40mon:p%3Ass@127.0.0.1:{receiver.port}/am", b"[]", [], 5)
    finally:
        receiver.close()
    [request] = receiver.received()
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"bw@mon:p:ss").decode()
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
