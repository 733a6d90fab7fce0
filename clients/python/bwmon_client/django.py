"""Django: ``RouteMiddleware`` names each request's route for ``BwmonWSGIMiddleware``.

Two lines make a Django project count its requests per route (clients/README.md):

``settings.py``, first in the list::

    MIDDLEWARE = ["bwmon_client.django.RouteMiddleware", *MIDDLEWARE]

``wsgi.py``::

    application = BwmonWSGIMiddleware(get_wsgi_application(), service="checkout")

After the rest of the middleware and the view ran, ``RouteMiddleware`` copies the route of the
URL pattern Django resolved (``request.resolver_match.route``, the patterns of ``include()``
joined: ``api/orders/<int:pk>/``) with a leading ``/`` (a ``re_path`` regular expression as it
is written) into the WSGI environ (``request.META`` is the environ), where the WSGI middleware
reads it when it records the request. A request no pattern matched counts under
``<unmatched>``. Never resolves a URL itself, never raises out of itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bwmon_client.wsgi import ROUTE_KEY, BwmonWSGIMiddleware

__all__ = ["BwmonWSGIMiddleware", "RouteMiddleware", "route_of"]


def route_of(request: Any) -> str | None:
    """The route template Django resolved for ``request``, or None."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    route = match.route
    if not isinstance(route, str):
        return None
    if route.startswith(("/", "^")):
        return route
    return "/" + route


class RouteMiddleware:
    """Django middleware: the resolved route into ``request.META["bwmon.route"]``."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        try:
            return self.get_response(request)
        finally:
            try:
                route = route_of(request)
                if route is not None:
                    request.META[ROUTE_KEY] = route
            except Exception:  # counting must never fail a request
                pass
