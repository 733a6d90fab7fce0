"""``bwmon_client.flask.instrument`` in-process: the route is the rule Flask matched, read from
the request class's ``url_rule`` (never matched again), ``<unmatched>`` for a 404 or a 405; an
application's own request class is kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Request, request
from werkzeug.test import EnvironBuilder

from bwmon_client import Emitter
from bwmon_client.flask import instrument
from tests.clients.python.test_wsgi import Server, totals


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    made = Emitter("unit", url="udp://127.0.0.1:9", interval_s=3600)
    yield made
    made.close()


def environ(method: str = "GET", body: bytes = b"", *, PATH_INFO: str) -> dict[str, Any]:
    built: dict[str, Any] = EnvironBuilder(path=PATH_INFO, method=method, data=body).get_environ()
    return built


class ShopRequest(Request):
    shop = "ours"


def make_app() -> Flask:
    app = Flask("shop")
    app.request_class = ShopRequest

    @app.route("/orders/<int:order_id>", methods=["GET", "POST"])
    def order(order_id: int) -> str:
        assert isinstance(request, ShopRequest)
        assert request.url_rule is not None
        return f"{request.shop} {request.url_rule.rule} {order_id}"

    return app


def test_the_route_is_the_matched_rule_and_unmatched_otherwise(emitter: Emitter) -> None:
    app = instrument(instrument(make_app(), emitter), emitter)  # once is enough
    server = Server()
    server.serve(app, environ(PATH_INFO="/orders/17"))
    assert server.status == "200 OK"
    assert server.received == b"ours /orders/<int:order_id> 17"
    Server().serve(app, environ("POST", b"12345", PATH_INFO="/orders/18"))
    Server().serve(app, environ(PATH_INFO="/nowhere"))
    Server().serve(app, environ("DELETE", PATH_INFO="/orders/19"))
    counted = emitter.totals()
    assert counted[("/orders/<int:order_id>", "GET")]["bytes_out"] == len(server.received)
    assert counted[("/orders/<int:order_id>", "GET")]["requests"] == 1
    assert counted[("/orders/<int:order_id>", "POST")]["requests"] == 1
    assert counted[("<unmatched>", "GET")]["status"] == [0, 0, 0, 1, 0]
    assert counted[("<unmatched>", "DELETE")]["status"] == [0, 0, 0, 1, 0]  # 405
    assert set(counted) == {
        ("/orders/<int:order_id>", "GET"),
        ("/orders/<int:order_id>", "POST"),
        ("<unmatched>", "GET"),
        ("<unmatched>", "DELETE"),
    }


def test_a_view_that_raises_counts_500_under_its_route(emitter: Emitter) -> None:
    app = Flask("shop")

    @app.get("/boom/<name>")
    def boom(name: str) -> str:
        raise RuntimeError(name)

    instrument(app, emitter)
    server = Server()
    server.serve(app, environ(PATH_INFO="/boom/x"))
    assert server.status is not None
    assert server.status.startswith("500")
    counted = totals(emitter, "/boom/<name>")
    assert (counted["status"], counted["bytes_out"]) == ([0, 0, 0, 0, 1], len(server.received))
