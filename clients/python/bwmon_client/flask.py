"""Flask: ``instrument(app)`` counts every request of a Flask application per route template.

It wraps ``app.wsgi_app`` in ``BwmonWSGIMiddleware`` (bwmon_client.wsgi says what is counted)
and names each request's route with the rule Flask matched (``request.url_rule.rule``, e.g.
``/orders/<int:order_id>``): ``app.request_class`` becomes a subclass of itself whose
``url_rule``, when Flask sets it, also goes into the WSGI environ, where the middleware reads it
once the response has ended. Flask's own matching is the only one; a request no rule matched
(404, 405) has no rule and counts under ``<unmatched>``.

Why not a ``teardown_request`` function: it would do the same work on every request through
Flask's hook machinery and two context-local lookups, about as much again as the middleware
itself (``bwmon bench middleware``); setting an attribute costs one call. Set a custom
``request_class`` before calling ``instrument``: one set after it replaces the subclass, and
every request then counts under ``<unmatched>``.

Never matches a URL itself, never raises into a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask

from bwmon_client.wsgi import ROUTE_KEY, BwmonWSGIMiddleware

if TYPE_CHECKING:
    from bwmon_client import Emitter

__all__ = ["instrument"]

_RULE = "_bwmon_url_rule"


def _routed(base: type[Any]) -> type[Any]:
    """``base`` (a Flask request class) with a ``url_rule`` that names the route."""
    if getattr(base, "_bwmon_routed", False):
        return base

    def get_rule(self: Any) -> Any:
        return self.__dict__.get(_RULE)

    def set_rule(self: Any, rule: Any) -> None:
        self.__dict__[_RULE] = rule
        if rule is not None:
            try:
                self.environ[ROUTE_KEY] = rule.rule
            except Exception:  # counting must never fail a request
                return

    namespace = {
        "url_rule": property(get_rule, set_rule),
        "_bwmon_routed": True,
        "__doc__": base.__doc__,
        "__module__": base.__module__,
    }
    return type(base.__name__, (base,), namespace)


def instrument(app: Flask, emitter: Emitter | None = None, service: str | None = None) -> Flask:
    """Count ``app``'s requests into ``emitter`` (default: the process's,
    ``bwmon_client.emitter(service)``); returns ``app``. An application instrumented already is
    returned as it is (its requests are not counted twice)."""
    if isinstance(app.wsgi_app, BwmonWSGIMiddleware):
        return app
    middleware = BwmonWSGIMiddleware(app.wsgi_app, emitter, service)
    app.request_class = _routed(app.request_class)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return app
