"""Flask: ``instrument(app)`` counts every request of a Flask application per route template.

It wraps ``app.wsgi_app`` in ``BwmonWSGIMiddleware`` (bwmon_client.wsgi says what is counted)
and adds a ``teardown_request`` function that copies the rule Flask matched
(``request.url_rule.rule``, e.g. ``/orders/<int:order_id>``) into the WSGI environ, where the
middleware reads it when it records the request. Teardown functions run after the request was
dispatched, also when a view raised or a ``before_request`` function answered first; a request
no rule matched (404, 405) has no rule and counts under ``<unmatched>``.

Never matches a URL itself, never raises out of the teardown function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, request

from bwmon_client.wsgi import ROUTE_KEY, BwmonWSGIMiddleware

if TYPE_CHECKING:
    from bwmon_client import Emitter

__all__ = ["instrument"]


def _name_route(_exc: BaseException | None) -> None:
    try:
        rule = request.url_rule
        if rule is not None:
            request.environ[ROUTE_KEY] = rule.rule
    except Exception:  # counting must never fail a request
        return


def instrument(app: Flask, emitter: Emitter | None = None) -> Flask:
    """Count ``app``'s requests into ``emitter`` (default: the process-wide emitter); returns
    ``app``."""
    middleware = BwmonWSGIMiddleware(app.wsgi_app, emitter)
    app.teardown_request(_name_route)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return app
