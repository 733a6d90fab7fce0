"""Flask: ``instrument(app)`` counts every request of a Flask application per route template.

It wraps ``app.wsgi_app`` in ``BwmonWSGIMiddleware`` (bwmon_client.wsgi says what is counted)
and names each request's route with the rule Flask matched (``request.url_rule.rule``, e.g.
``/orders/<int:order_id>``), read when Flask starts the response from the request object
werkzeug keeps in the WSGI environ (``environ["werkzeug.request"]``: every werkzeug request
puts itself there when it is made, and Flask takes it out when it pops the request context).
Flask's own matching is the only one; a request no rule matched (404, 405) has no rule and
counts under ``<unmatched>``.

Why not a ``teardown_request`` function or a request class of our own: either does work on
every request inside Flask (its hook machinery and context-local lookups, or a Python property
that Flask reads several times per request); reading one attribute once, when Flask starts the
response, is less, and an application's own ``request_class`` stays as it is.

Never matches a URL itself, never raises into a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask

from bwmon_client.wsgi import BwmonWSGIMiddleware, route_of

if TYPE_CHECKING:
    from bwmon_client import Emitter

__all__ = ["instrument", "matched_rule"]


def matched_rule(environ: dict[str, Any]) -> str | None:
    """The rule Flask matched for the request of ``environ`` (None: none matched), or a route
    the application put in ``environ["bwmon.route"]`` itself."""
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    if rule is None:
        return route_of(environ)
    template = rule.rule
    return template if isinstance(template, str) else None


def instrument(app: Flask, emitter: Emitter | None = None, service: str | None = None) -> Flask:
    """Count ``app``'s requests into ``emitter`` (default: the process's,
    ``bwmon_client.emitter(service)``); returns ``app``. An application instrumented already is
    returned as it is (its requests are not counted twice)."""
    if isinstance(app.wsgi_app, BwmonWSGIMiddleware):
        return app
    app.wsgi_app = BwmonWSGIMiddleware(app.wsgi_app, emitter, service, matched_rule)  # type: ignore[method-assign]
    return app
