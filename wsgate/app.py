"""`create_app`: the one place where a gateway is wired together.

`python -m wsgate` and gunicorn (`wsgate.app:create_app` with
`aiohttp.GunicornWebWorker`, which awaits async factories) both enter here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .broker import MemoryBroker
from .config import Settings, load_settings
from .gateway import Gateway
from .keys import GATEWAY, PLUGIN_MANAGER, SETTINGS
from .metrics import Metrics
from .plugins import build_registry, make_plugin_manager
from .views import health_view, ws_view


async def create_app(settings: Settings | None = None) -> web.Application:
    """Build the application: settings (loaded when not given), plugins, gateway, routes."""
    settings = settings if settings is not None else load_settings()
    pm = make_plugin_manager(settings)
    gateway = Gateway(settings, MemoryBroker(), build_registry(pm), Metrics())

    app = web.Application()
    app[SETTINGS] = settings
    app[PLUGIN_MANAGER] = pm
    app[GATEWAY] = gateway
    app.router.add_get("/health", health_view)
    if settings.websocket.enabled:
        app.router.add_get("/ws", ws_view)
    app.cleanup_ctx.append(_broker)
    app.on_shutdown.append(_close_clients)
    return app


async def _broker(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.broker.start(gateway.hub.deliver)
    yield
    await gateway.broker.close()


async def _close_clients(app: web.Application) -> None:
    """On shutdown every client gets close code 1001 (a no-op if the CLI drained already)."""
    await app[GATEWAY].drain(app[SETTINGS].websocket.timeout)
