"""`create_app`: the one place where a gateway is wired together.

`python -m wsgate` and gunicorn (`wsgate.app:create_app` with
`aiohttp.GunicornWebWorker`, which awaits async factories) both enter here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from aiohttp import web

from .broker import MemoryBroker
from .config import Settings, load_settings
from .gateway import Gateway
from .keys import GATEWAY, SETTINGS
from .metrics import Metrics
from .plugins import load_plugins
from .views import health_view, ws_view


async def create_app(settings: Settings | None = None, plugins: Iterable[object] = ()) -> web.Application:
    """Build the application: settings (loaded when not given), plugins, gateway, routes.

    `plugins` registers extra plugin objects (modules or instances) next to the
    discovered ones: how tests and embedding applications add their own.
    """
    settings = settings if settings is not None else load_settings()
    gateway = Gateway(settings, MemoryBroker(), load_plugins(settings, plugins), Metrics())

    app = web.Application()
    app[SETTINGS] = settings
    app[GATEWAY] = gateway
    app.router.add_get("/health", health_view)
    if settings.websocket.enabled:
        app.router.add_get("/ws", ws_view)
    app.cleanup_ctx.append(_run_gateway)
    app.on_shutdown.append(_close_clients)
    return app


async def _run_gateway(app: web.Application) -> AsyncIterator[None]:
    """Broker first, then plugin services and start-up hooks; torn down in reverse."""
    gateway = app[GATEWAY]
    await gateway.broker.start(gateway.hub.deliver)
    try:
        await gateway.plugins.start(gateway)
        yield
    finally:
        await gateway.plugins.stop(gateway)
        await gateway.broker.close()


async def _close_clients(app: web.Application) -> None:
    """On shutdown every client gets close code 1001 (a no-op if the CLI drained already)."""
    await app[GATEWAY].drain(app[SETTINGS].websocket.timeout)
