"""structlog set-up: JSON lines (serialised by msgspec) when stderr is not a terminal, a readable
console format when it is.

Only the sync logging methods are used (``log.info``…): the async ones need asyncio, and the
daemon's code runs in trio. Context such as ``conn`` or ``peer`` is bound in contextvars at task
entry. Secrets never reach a log call: a processor drops keys named like credentials as a last
line of defence, and access tokens are cut out of every string value.

Libraries log through the standard library's ``logging`` (the MySQL driver's server warnings,
asyncio's errors) and ``warnings``: ``configure`` routes both into structlog, as ``library_log``
events with the library's logger name as ``component`` and its text as ``message``, so that no
raw line ever breaks the JSON log.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import msgspec
import structlog
from structlog.typing import FilteringBoundLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_KEYS = frozenset({"token", "password", "secret", "authorization", "key"})
_json = msgspec.json.Encoder()


# An access token (protocol.tokens) anywhere in a string value, e.g. inside an error message.
_TOKEN = re.compile(r"bwm1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    for key, value in event.items():
        if isinstance(value, str) and "bwm1." in value:
            event[key] = _TOKEN.sub("bwm1.[redacted]", value)
    return event


def _serialise(event: dict[str, Any], **_kw: Any) -> bytes:
    return _json.encode(
        {
            k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
            for k, v in event.items()
        }
    )


class _LibraryLog(logging.Handler):
    """Hands each record of the standard library's logging to structlog (warnings and up: the
    root logger's default level)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = min(max(record.levelno // 10 * 10, logging.DEBUG), logging.CRITICAL)
            fields: dict[str, Any] = {"message": record.getMessage()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            get_logger(record.name).log(level, "library_log", **fields)
        except Exception:
            self.handleError(record)


_LIBRARY_LOG = _LibraryLog()


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Configure structlog for the whole process; safe to call again (reload)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,  # before _redact: tracebacks are text too
            _redact,
            structlog.processors.JSONRenderer(serializer=_serialise),
        ]
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors += [_redact, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _LIBRARY_LOG not in root.handlers:
        root.addHandler(_LIBRARY_LOG)
    logging.captureWarnings(True)


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger that carries ``component=name`` in every line."""
    # A lazy proxy: it reads the configuration at each call, so module-level loggers created
    # at import time follow ``configure`` (a bound logger made at import would not).
    logger: FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
