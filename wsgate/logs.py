"""Logging set-up from settings: text or JSON lines, level, and client/room context.

Code logs with `extra={"client_id": ..., "room": ...}`; the JSON format turns
those into fields, the text format leaves them in the message where it put them.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .config import LoggingSettings
from .redaction import Redactor

CONTEXT_FIELDS = ("client_id", "room", "remote", "close_code", "plugin")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_text:  # already formatted, and masked, by the Redactor
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _WsgateHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler wsgate installs (so a second call replaces it, not somebody else's)."""


def configure_logging(settings: LoggingSettings, secrets: Iterable[str] = ()) -> None:
    """Log to stderr in the configured format, at the configured level, with `secrets` (and every URL
    password and token) masked in every record (`wsgate.redaction.Redactor`).

    Handlers someone else installed (gunicorn's --log-config, pytest) are kept: then only
    the level is set, their format applies, and the masking is added to them. So are the handlers
    of loggers that do not pass records to the root (gunicorn's `gunicorn.error` and `gunicorn.access`,
    where aiohttp writes the access log under gunicorn): every output gets the same rule.
    """
    root = logging.getLogger()
    root.setLevel(settings.level)
    for old in [h for h in root.handlers if isinstance(h, _WsgateHandler)]:
        root.removeHandler(old)
    if not root.handlers:
        ours = _WsgateHandler()
        ours.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
        root.addHandler(ours)
    redactor = Redactor(secrets)
    apart = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    for handler in {h: None for logger in (root, *apart) for h in logger.handlers}:
        for old_filter in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(old_filter)
        handler.addFilter(redactor)


MALFORMED_LOG_INTERVAL = 10.0  # seconds between two lines about malformed HTTP requests (with a count)


class MalformedRequests(logging.Filter):
    """aiohttp's "Error handling request" records for requests its parser refused (a URL or header over its
    limits, a broken request line: `HttpProcessingError`, answered 400 by aiohttp) become one WARNING line
    without a traceback, at most one per `interval` seconds, with a count: anyone can send them, as often as
    they like, and each was an ERROR with a traceback. Other records pass unchanged."""

    def __init__(self, interval: float = MALFORMED_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._count = 0
        self._logged_at = -interval

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if not isinstance(refused, HttpProcessingError):
            return True
        self._count += 1
        now = self._clock()
        if now - self._logged_at < self._interval:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "refused %d malformed HTTP requests since the last report, the last from %s: %s"
        record.args = (self._count, remote, f"{refused.code} {refused.message}".strip())
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self._logged_at, self._count = now, 0
        return True


def quiet_malformed_requests() -> None:
    """Put one `MalformedRequests` on aiohttp's server logger (replacing one an earlier app put there)."""
    logger = logging.getLogger("aiohttp.server")
    for old in [f for f in logger.filters if isinstance(f, MalformedRequests)]:
        logger.removeFilter(old)
    logger.addFilter(MalformedRequests())
