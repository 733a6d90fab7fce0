"""Starlette and FastAPI: ``instrument(app)`` puts ``BwmonMiddleware`` outside the whole
middleware stack, around Starlette's own ``ServerErrorMiddleware``, so that the 500 response it
sends for an exception is counted with its bytes, as the client received it.

``app.add_middleware(BwmonMiddleware)`` works too, but sits inside ``ServerErrorMiddleware``: an
exception then counts as a 500 with the bytes sent before it, without the error page's.
Imports no Starlette: it only wraps what ``build_middleware_stack`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bwmon_client.asgi import ASGIApp, BwmonMiddleware
from bwmon_client.process_emitter import Emitter


def instrument(app: Any, emitter: Emitter | None = None, service: str | None = None) -> Any:
    """Count ``app``'s HTTP requests (a Starlette or FastAPI application); returns ``app``."""
    middleware = BwmonMiddleware(_NotBuilt(), emitter, service)
    build: Callable[[], ASGIApp] = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        middleware.app = build()
        return middleware

    app.build_middleware_stack = build_wrapped
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = build_wrapped()
    return app


class _NotBuilt:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the application's middleware stack is not built yet")
