"""Admission at the socket: what one address may hold, and what happens when file descriptors run out.

aiohttp counts nothing before a request is parsed, so a client that opens
hundreds of sockets and sends its headers one line at a time holds them all
(slowloris). Three defences, each for every way wsgate is served (the CLI,
gunicorn, the test server: all run a `GatewayRunner`):

- `websocket.limits.max_connections_per_ip` counts sockets from the moment they
  are accepted, whatever their stage (headers under way, HTTP, WebSocket). One
  over the limit gets `429 {"error": "too many connections from this address"}`
  at once and is closed.
- `security.request_timeout` closes a connection that has not sent a complete
  request within it, and an HTTP connection idle that long (aiohttp's
  keep-alive timeout, which also runs before the first request).
- When accept() fails for want of file descriptors, asyncio logs a traceback
  per attempt; `AcceptErrors` makes that one line per interval, with a count.
  asyncio retries by itself, and the server recovers as sockets are closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web import RequestHandler

from .aiohttp_private import watch_connections
from .hub import Hub
from .keys import HUB, METRICS
from .metrics import Metrics
from .supervision import Throttled

log = logging.getLogger(__name__)

TOO_MANY_FROM_ADDRESS = "too many connections from this address"
_REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
)
ACCEPT_LOG_INTERVAL = 10.0  # seconds between two log lines about failing accepts
REFUSAL_LINGER = 1.0  # seconds a refused socket stays open so its peer can read the 429


def guard_connections(server: web.Server, hub: Hub, metrics: Metrics) -> None:
    """Count every accepted socket against its address (`Hub.claim_address`); refuse one over the limit.

    Sees each socket through the server's own connection callbacks (`aiohttp_private.watch_connections`).
    They are called by the event loop: nothing may escape them (an exception there skips what follows, and a
    refused socket whose peer reset it first would never be closed), so the refused socket's abort is
    scheduled first.
    """
    claimed = hub.claimed

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else ""
        if hub.claim_address(address):
            claimed[handler] = address
            return
        metrics.error("address_limit")  # counted, not logged: a storm must not flood the log too
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)  # closed, whatever happens below
        body = b'{"error": "%s"}' % TOO_MANY_FROM_ADDRESS.encode()
        try:
            transport.pause_reading()  # its request is never parsed
            transport.write(_REFUSAL % (len(body), body))
            if transport.can_write_eof():
                transport.write_eof()  # the answer, then FIN: closing at once would reset it away
        except (OSError, RuntimeError):  # the peer reset it first (ENOTCONN from shutdown()): nobody to answer
            transport.abort()

    def connection_lost(handler: RequestHandler) -> None:
        address = claimed.pop(handler, None)  # (an upgraded socket's claim went with it to its connection)
        if address is not None:
            hub.release_address(address)

    watch_connections(server, connection_made, connection_lost)


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
    """An AppRunner whose server counts sockets per address from accept() on (`guard_connections`)."""

    async def setup(self) -> None:
        """aiohttp's setup (the app's start-up, then its server), then the guard on that server, before any
        site is started: public API (`BaseRunner.setup`, `BaseRunner.server`), no override of `_make_server`."""
        await super().setup()
        assert self.server is not None  # set by setup, or it raised
        guard_connections(self.server, self.app[HUB], self.app[METRICS])
