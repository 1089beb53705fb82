"""The one place wsgate touches aiohttp's private or undocumented internals, each for want of a public API.

An aiohttp upgrade that changes one of them fails `tests/test_aiohttp_private.py`, naming the API, rather
than a test deep in the suite. What each use relies on, and why no public API serves:

- `web.Server.connection_made` / `connection_lost` (`watch_connections`): every `RequestHandler` calls them
  on its server (`self._manager`) when a socket is accepted and when it is gone, before any request is
  parsed. aiohttp has no public per-socket callback (signals and middlewares start at a parsed request).
- `BaseTestServer._make_runner` (`production_test_server`): `TestServer.start_server` builds an `AppRunner`
  with `handler_cancellation=True`; neither the runner's class nor that flag can be chosen publicly.
- `GunicornWebWorker._get_valid_log_format` (`gunicorn_access_log_format`): how aiohttp's worker turns
  gunicorn's `--access-logformat` into aiohttp's (gunicorn's default becomes aiohttp's default; a
  gunicorn-style `%(name)s` format is refused with a ValueError). A worker that builds its own runner must
  do the same, and the conversion has no public form.

Where a public API exists wsgate uses it instead: `GatewayRunner` extends `AppRunner.setup()` and reads
`runner.server` (not `AppRunner._make_server`), and `GatewayWorker` hands aiohttp's worker an async
factory returning the runner from gunicorn's `load_wsgi` (not an override of `GunicornWebWorker._run`).

This module is at the bottom layer: it imports aiohttp only, and aiohttp's test utilities and gunicorn
worker only inside the function that needs them (neither is loaded by a production server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web import RequestHandler

if TYPE_CHECKING:
    from aiohttp.test_utils import TestServer
    from aiohttp.worker import GunicornWebWorker

SocketMade = Callable[[RequestHandler, asyncio.Transport], None]
SocketLost = Callable[[RequestHandler], None]
RunnerFactory = Callable[..., web.AppRunner]


def watch_connections(server: web.Server, made: SocketMade, lost: SocketLost) -> None:
    """Call `made(handler, transport)` when `server` accepts a socket and `lost(handler)` when it is gone.

    `made` runs after aiohttp's own `Server.connection_made` (the handler is then in `server.connections`);
    `lost` runs before aiohttp's `Server.connection_lost`, which runs whatever `lost` raises. Both are
    called by the event loop, from `RequestHandler.connection_made` / `connection_lost`, once per socket,
    whatever its stage (headers under way, HTTP, WebSocket).

    Private: replaces the two methods on this Server instance (`RequestHandler` calls them through the
    instance, `self._manager`); aiohttp has no public hook that sees a socket before its request is parsed.
    """
    server_made, server_lost = server.connection_made, server.connection_lost

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        server_made(handler, transport)
        made(handler, transport)

    def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
        try:
            lost(handler)
        finally:
            server_lost(handler, exc)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]


def production_test_server(app: web.Application, runner: RunnerFactory, **kwargs: Any) -> TestServer:
    """aiohttp's `TestServer` for `app` (kwargs: its host, port, scheme), serving through
    `runner(app, **runner_kwargs)` and, as production servers do, with `handler_cancellation=False`.

    aiohttp's test server cancels a request's handler when its peer goes (`handler_cancellation`), which
    production servers never do, and which would hide what a gone client leaves running.

    Private: overrides `TestServer._make_runner`, which `start_server` calls with `handler_cancellation=True`
    (passing the flag again to `start_server` is a duplicate keyword); no public argument picks the runner.
    """
    from aiohttp.test_utils import TestServer

    class ProductionTestServer(TestServer):
        async def _make_runner(self, **runner_kwargs: Any) -> web.AppRunner:
            return runner(self.app, **{**runner_kwargs, "handler_cancellation": False})

    return ProductionTestServer(app, **kwargs)


def gunicorn_access_log_format(worker: GunicornWebWorker, gunicorn_format: str) -> str:
    """aiohttp's access log format for gunicorn's `--access-logformat` (`worker.cfg.access_log_format`).

    Raises ValueError (aiohttp's text) for a gunicorn-style `%(name)s` format other than gunicorn's default.
    Private: `GunicornWebWorker._get_valid_log_format`, what aiohttp's worker does for the runner it builds
    itself; a worker building its own runner must convert alike, and aiohttp offers no public conversion.
    """
    return worker._get_valid_log_format(gunicorn_format)
