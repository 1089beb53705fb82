"""`create_app`: the one place where a gateway is wired together.

`python -m wsgate` and gunicorn (`wsgate.app:create_app` with
`aiohttp.GunicornWebWorker`, which awaits async factories) both enter here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import aiohttp_cors
from aiohttp import web

from . import dashboard
from .api import broadcast_view, publish_view
from .config import Settings, load_settings
from .gateway import Gateway
from .keys import GATEWAY, SETTINGS
from .logs import configure_logging
from .plugins import load_plugins
from .views import client_js_view, health_view, metrics_view, ws_view

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 1.0  # seconds between refreshes of the client/room/throughput gauges


async def create_app(settings: Settings | None = None, plugins: Iterable[object] = ()) -> web.Application:
    """Build the application: settings (loaded when not given), plugins, gateway, routes.

    `plugins` registers extra plugin objects (modules or instances) next to the
    discovered ones: how tests and embedding applications add their own. When
    settings are loaded here (gunicorn), logging is configured from them too.
    """
    if settings is None:
        settings = load_settings()
        configure_logging(settings.logging)
    gateway = Gateway(settings, load_plugins(settings, plugins))
    if "*" in settings.security.allowed_origins:
        log.warning('security.allowed_origins is ["*"]: any web page may open WebSockets to this gateway')

    app = web.Application()
    app[SETTINGS] = settings
    app[GATEWAY] = gateway
    http_routes = [app.router.add_get("/health", health_view)]
    if settings.metrics.enabled:
        http_routes.append(app.router.add_get(settings.metrics.path, metrics_view))
    if settings.api.key:  # the publish API exists only with a key
        http_routes.append(app.router.add_post("/api/publish", publish_view))
        http_routes.append(app.router.add_post("/api/broadcast", broadcast_view))
    if settings.websocket.enabled:
        app.router.add_get("/ws", ws_view)  # not CORS: browsers do not apply it to WebSockets
        app.router.add_get("/client.js", client_js_view)
        if settings.dashboard.enabled:
            dashboard.add_routes(app)
    _allow_cross_origin(app, http_routes, settings.cors.allowed_origins)
    app.cleanup_ctx.append(_run_gateway)
    app.on_shutdown.append(_close_clients)
    return app


def _allow_cross_origin(app: web.Application, routes: list[web.AbstractRoute], origins: Iterable[str]) -> None:
    """CORS (aiohttp-cors) for the HTTP endpoints: only `cors.allowed_origins` may read them."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_headers="*", allow_methods=["GET", "POST"], max_age=3600
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in routes:
        cors.add(route)


async def _run_gateway(app: web.Application) -> AsyncIterator[None]:
    """Broker first, then plugin services and start-up hooks; torn down in reverse."""
    gateway = app[GATEWAY]
    await gateway.broker.start(gateway.deliver)
    try:
        await gateway.plugins.start(gateway)
        tasks = [asyncio.create_task(_refresh_gauges(gateway), name="wsgate-gauges")]
        if gateway.presence.rooms and gateway.settings.presence.events:
            tasks.append(asyncio.create_task(gateway.presence.run(), name="wsgate-presence-events"))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await gateway.plugins.stop(gateway)
        await gateway.broker.close()


async def _refresh_gauges(gateway: Gateway) -> None:
    """Every second: clients, rooms and throughput into their gauges (each worker its own, under gunicorn)."""
    while True:
        gateway.metrics.sample(len(gateway.hub.connections), len(gateway.hub.rooms))
        await asyncio.sleep(GAUGE_INTERVAL)


async def _close_clients(app: web.Application) -> None:
    """On shutdown every client gets close code 1001 (a no-op if the CLI drained already)."""
    await app[GATEWAY].drain(app[SETTINGS].websocket.timeout)
