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
``<unmatched>``. Under ASGI (``get_asgi_application()`` wrapped in
``bwmon_client.asgi.BwmonMiddleware``) the same middleware puts the route in the scope, where
the ASGI middleware reads it. Never resolves a URL itself, never raises out of itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

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


class _ResolvedRoute:
    """What ``bwmon_client.asgi.route_of`` reads in an ASGI scope: the template."""

    __slots__ = ("path_format",)

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


def _name_route(request: Any) -> None:
    try:
        route = route_of(request)
        if route is None:
            return
        request.META[ROUTE_KEY] = route
        scope = getattr(request, "scope", None)  # served over ASGI
        if isinstance(scope, dict):
            scope["route"] = _ResolvedRoute(route)
    except Exception:  # counting must never fail a request
        return


class RouteMiddleware:
    """Django middleware: the resolved route into ``request.META["bwmon.route"]`` (WSGI) and,
    under ASGI, into the scope as ``bwmon_client.asgi.BwmonMiddleware`` reads it. Sync and
    async: it runs as the rest of the stack does, without a thread hop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._call_async(request)
        try:
            return self.get_response(request)
        finally:
            _name_route(request)

    async def _call_async(self, request: Any) -> Any:
        try:
            return await self.get_response(request)
        finally:
            _name_route(request)
