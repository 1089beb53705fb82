"""Admission at the socket: the front door every socket passes, and what happens when file descriptors run out.

For every way wsgate is served (the CLI, gunicorn, the test server: all run a `GatewayRunner`):

- `websocket.limits.max_connections_per_ip` counts sockets from the moment they are accepted, whatever their
  stage (headers under way, HTTP, WebSocket): one over the limit gets
  `429 {"error": "too many connections from this address"}` at once and is closed (`wsgate.frontdoor`).
- `security.request_timeout` closes a connection that has not sent a complete request within it, and an HTTP
  connection idle that long (the front door before the first bytes, then aiohttp's keep-alive timeout).
- The plain WebSocket upgrade is answered at the front door, without aiohttp's request handling
  (`wsgate.frontdoor`); everything else goes on to aiohttp.
- When accept() fails for want of file descriptors, asyncio logs a traceback per attempt; `AcceptErrors` makes
  that one line per interval, with a count. asyncio retries by itself, and the server recovers as sockets are
  closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger
from aiohttp.web_log import AccessLogger

from .frontdoor import AccessLog, FrontDoors
from .supervision import Throttled

log = logging.getLogger(__name__)

ACCEPT_LOG_INTERVAL = 10.0  # seconds between two log lines about failing accepts


def late_accept_retry(context: dict[str, Any]) -> bool:
    """Whether a loop exception is asyncio's retry of accept() (scheduled a second after it ran out of
    descriptors) running after the listening socket was closed at shutdown: nothing to do, nothing to report."""
    return isinstance(context.get("exception"), ValueError) and "_start_serving" in repr(context.get("handle"))


class AfterShutdown:
    """The loop's exception handler once the gateway has stopped: the one it had before (`previous`; None:
    asyncio's default), except for a late accept() retry (`late_accept_retry`), which can still fire then."""

    _previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None) -> None:
        while isinstance(previous, AfterShutdown):  # (a loop that served before: one wrapper, not a chain)
            previous = previous._previous
        self._previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if late_accept_retry(context):
            return
        if self._previous is None:
            loop.default_exception_handler(context)
        else:
            self._previous(loop, context)


class AcceptErrors:
    """A loop exception handler that turns asyncio's per-attempt accept() tracebacks (EMFILE, ENFILE,
    ENOBUFS, ENOMEM) into one warning per `interval`, and passes everything else on."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self._warn = Throttled(log, interval)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if late_accept_retry(context):
            return
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        error = context.get("exception")
        self._warn(
            "cannot accept connections: %s; asyncio retries every second, and accepting resumes as connections close",
            error.strerror if isinstance(error, OSError) else error,
        )


class GatewayRunner(web.AppRunner):
    """An AppRunner whose sites listen through the front door (`wsgate.frontdoor.FrontDoors`): sockets are
    counted per address from accept() on, and the plain WebSocket upgrade skips aiohttp's request handling."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._access = AccessLog(  # (aiohttp's defaults where not given)
            kwargs.get("access_log", access_logger),
            kwargs.get("access_log_format", AccessLogger.LOG_FORMAT),
            kwargs.get("access_log_class", AccessLogger) is AccessLogger,
        )
        self._doors: FrontDoors | None = None

    async def setup(self) -> None:
        """aiohttp's setup (the app's start-up, then its server), then the front door on that server, before any
        site is started: public API (`BaseRunner.setup`, `BaseRunner.server`), no override of `_make_server`."""
        await super().setup()
        server = super().server
        assert server is not None  # set by setup, or it raised
        self._doors = FrontDoors(self.app, server, self._access)

    @property
    def server(self) -> web.Server | None:
        """What sites listen with: the front door, which reads as aiohttp's `web.Server` behind it."""
        if super().server is None:  # (not set up yet, or cleaned up)
            return None
        return self._doors  # type: ignore[return-value]  # (a protocol factory, as the Server; see FrontDoors)

    async def shutdown(self) -> None:
        """Close the sockets still silent at the front door, then aiohttp's shutdown (the app's on_shutdown)."""
        if self._doors is not None:
            self._doors.close_pending()
        await super().shutdown()
