"""`create_app`: the one place where a gateway is wired together.

`python -m wsgate` and gunicorn (`wsgate.app:create_app` with
`aiohttp.GunicornWebWorker`, which awaits async factories) both enter here.
Every component gets its collaborators in its constructor and is stored under
its own AppKey (`wsgate.keys`):

    settings ─► plugins ─► registry ─► metrics
    broker (relay, room interest, history) ─┐
    presence store ─► presence ─────────────┤
                                            ├─► hub ─► router (the one route) ─► gateway (the façade)
    decoder ─► dispatcher                   │                                      └─► commands (server-side)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp_cors
from aiohttp import web

from .admission import AcceptErrors, AfterShutdown
from .api import broadcast_view, disconnect_view, publish_view, subscribe_view, unsubscribe_view
from .broker import describe_broker, make_broker
from .broker.redis_schema import new_sender_id
from .builtin import BUILTIN_PLUGINS
from .commands import Commands
from .config import Settings, describe_source, inert_settings, load_settings, secrets_of, unknown_variables
from .connection import Flusher
from .dashboard import web as dashboard_web
from .dashboard.plugin import report_figures
from .dispatch import Dispatcher
from .gateway import Gateway
from .hub import Hub
from .keys import (
    BROKER,
    COMMANDS,
    DASHBOARD,
    DECODER,
    DISPATCHER,
    FLUSHER,
    GATEWAY,
    HUB,
    METRICS,
    PLUGINS,
    PRESENCE,
    PRESENCE_STORE,
    ROUTER,
    SCHEDULE,
    SETTINGS,
    STARTED_AT,
    SUPERVISOR,
)
from .logs import configure_logging, quiet_malformed_requests
from .looplag import watch_loop_lag
from .metrics import Metrics
from .origins import host_guard
from .overhead import FRAME_HEAD_BYTES, largest_message
from .plugins import load_plugins
from .presence import Presence, make_presence_store
from .protocol import Decoder
from .rooms import RoomPatterns
from .routing import Router
from .schedule import Schedule
from .supervision import Supervisor
from .views import (
    SESSIONS,
    WS_PATH,
    Sessions,
    client_js_view,
    health_view,
    metrics_view,
    ready_view,
    ws_disabled_view,
    ws_method_not_allowed,
    ws_view,
)

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 1.0  # seconds between refreshes of the client/room/throughput gauges


async def create_app(settings: Settings | None = None, plugins: Iterable[object] = ()) -> web.Application:
    """Build the application: settings (loaded when not given), plugins, components, routes.

    `plugins` registers extra plugin objects (modules or instances) next to the
    discovered ones: how tests and embedding applications add their own. When
    settings are loaded here (gunicorn), logging is configured from them too.
    """
    quiet_malformed_requests()  # (whoever configured logging: an ERROR traceback per bad request floods it)
    if settings is None:
        settings = load_settings()
        configure_logging(settings.logging, secrets_of(settings))
        log.info("%s", describe_source())  # the absolute file: gunicorn's start-up says which file it read
        log.info("broker: %s", describe_broker(settings))  # memory, or the Redis URL with its password masked
        for warning in unknown_variables() + inert_settings(settings):
            log.warning("%s", warning)
    if "*" in settings.security.allowed_origins:
        log.warning('security.allowed_origins is ["*"]: any web page may open WebSockets to this gateway')

    loaded = load_plugins(settings, BUILTIN_PLUGINS, plugins)
    registry = loaded.build_registry()
    metrics = Metrics(registry.owners())
    node_id = new_sender_id()
    supervisor = Supervisor(metrics)
    largest = largest_message(settings.websocket.send_queue_bytes, settings.websocket.limits.max_room_name_length)
    broker = make_broker(settings, metrics, node_id, supervisor, largest)
    presence_store = make_presence_store(settings, metrics, node_id, supervisor)
    presence = Presence(settings.presence, presence_store)
    router: Router

    def room_removed(room: str) -> None:  # the broker stops receiving it, the router stops ordering it
        broker.room_removed(room)
        router.forget(room)

    hub = Hub(
        settings.websocket.limits,
        metrics,
        send_queue_size=settings.websocket.send_queue_size,
        send_queue_bytes=settings.websocket.send_queue_bytes,
        replay_bytes=settings.history.max_answer_bytes + FRAME_HEAD_BYTES * settings.history.size,
        room_added=broker.room_added,
        room_removed=room_removed,
        presence=presence,
    )
    router = Router(hub, broker, RoomPatterns(settings.history.rooms), metrics, largest=largest)
    limits = settings.websocket.limits
    decoder = Decoder(
        limits.max_room_name_length, limits.max_json_depth, limits.room_name_pattern, limits.max_number_digits
    )
    gateway = Gateway(
        settings,
        plugins=loaded,
        hub=hub,
        router=router,
        broker=broker,
        presence=presence,
        presence_store=presence_store,
        metrics=metrics,
        supervisor=supervisor,
        decoder=decoder,
        node_id=node_id.decode(),
    )
    gateway.services = loaded.collect_services(gateway)

    # aiohttp's keep-alive timeout also runs before the first request: unfinished requests are closed.
    allowed_hosts = settings.security.allowed_hosts
    app = web.Application(
        handler_args={"keepalive_timeout": settings.security.request_timeout},
        middlewares=[host_guard(allowed_hosts)] if allowed_hosts else [],
    )
    app[SETTINGS] = settings
    app[PLUGINS] = loaded
    app[METRICS] = metrics
    app[HUB] = hub
    app[BROKER] = broker
    app[PRESENCE_STORE] = presence_store
    app[PRESENCE] = presence
    app[ROUTER] = router
    app[DECODER] = decoder
    app[DISPATCHER] = Dispatcher(
        registry,
        metrics,
        decoder,
        hook_timeout=settings.plugins.hook_timeout,
        waiting_on=loaded.waiting_on,
        eager=registry.eager_types() if loaded.authorizes_eagerly else frozenset(),
    )
    app[GATEWAY] = gateway
    # an API command's answer waits for its round trip through Redis, then its own connections' turn
    answer_wait = settings.broker.connect_timeout + settings.plugins.hook_timeout
    app[COMMANDS] = Commands(gateway, broker, decoder, metrics, answer_wait=answer_wait)
    app[FLUSHER] = Flusher()
    app[SCHEDULE] = Schedule()
    app[SESSIONS] = Sessions(hub, app[DISPATCHER], loaded, metrics, gateway)
    app[SUPERVISOR] = supervisor
    app[STARTED_AT] = time.monotonic()
    http_routes = [app.router.add_get("/health", health_view), app.router.add_get("/ready", ready_view)]
    if settings.metrics.enabled:
        http_routes.append(app.router.add_get(settings.metrics.path, metrics_view))
    if settings.api.key:  # the HTTP API exists only with a key
        http_routes.append(app.router.add_post("/api/publish", publish_view))
        http_routes.append(app.router.add_post("/api/broadcast", broadcast_view))
        http_routes.append(app.router.add_post("/api/subscribe", subscribe_view))
        http_routes.append(app.router.add_post("/api/unsubscribe", unsubscribe_view))
        http_routes.append(app.router.add_post("/api/disconnect", disconnect_view))
    module_routes = []
    if settings.websocket.enabled:
        app.router.add_get(WS_PATH, ws_view, allow_head=False)  # not CORS: browsers do not apply it to WebSockets
        app.router.add_route("*", WS_PATH, ws_method_not_allowed)  # the handshake is a GET (RFC 6455 section 4.1)
        module_routes.append(app.router.add_get("/client.js", client_js_view))
        if (dashboard := loaded.get("dashboard")) is not None:
            app[DASHBOARD] = dashboard
            dashboard_web.add_routes(app)
    else:
        app.router.add_get(WS_PATH, ws_disabled_view)  # says why, rather than a bare 404
    _allow_cross_origin(
        app, http_routes, settings.cors.allowed_origins, module_routes, settings.security.allowed_origins
    )
    app.cleanup_ctx.append(_run)
    app.on_shutdown.append(_close_clients)
    return app


def _allow_cross_origin(
    app: web.Application,
    routes: list[web.AbstractRoute],
    origins: Iterable[str],
    module_routes: list[web.AbstractRoute],
    ws_origins: Iterable[str],
) -> None:
    """CORS (aiohttp-cors): only `cors.allowed_origins` may read the HTTP endpoints; `/client.js`, an ES module
    that a page on another origin imports, is also readable by the pages that may open `/ws`
    (`security.allowed_origins`)."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_headers="*", allow_methods=["GET", "POST"], max_age=3600
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in routes:
        cors.add(route)
    module_origins = dict.fromkeys([*origins, *ws_origins], options)
    for route in module_routes:
        cors.add(route, module_origins)


async def _run(app: web.Application) -> AsyncIterator[None]:
    """Broker and presence store first, then plugin services and start-up hooks; torn down in reverse."""
    broker, presence_store, gateway, plugins = app[BROKER], app[PRESENCE_STORE], app[GATEWAY], app[PLUGINS]
    supervisor = app[SUPERVISOR]
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(AcceptErrors())  # out of file descriptors: one line per interval
    try:
        await broker.start(app[ROUTER].receive, app[ROUTER].resynced, app[COMMANDS].received)
    except BaseException:
        loop.set_exception_handler(previous_handler)
        raise
    try:
        await presence_store.start()
        try:
            await plugins.start(gateway)
            supervisor.spawn("commands", app[COMMANDS].consume)  # every node's, this one's too, in the broker's order
            supervisor.spawn("gauges", functools.partial(_refresh_gauges, app))
            supervisor.spawn("event-loop-lag", functools.partial(watch_loop_lag, app[METRICS]))
            if app[SETTINGS].broker.url and plugins.get("dashboard") is None:  # (the plugin reports with operators)
                supervisor.spawn("figures", functools.partial(report_figures, gateway))  # every node in Nodes
            presence = app[PRESENCE]
            if presence.rooms and app[SETTINGS].presence.events:  # events take the one route, without history
                supervisor.spawn(
                    "presence-events",
                    functools.partial(presence.run, functools.partial(app[ROUTER].publish, history=False)),
                )
            yield
        finally:
            await plugins.stop(gateway)
            await presence_store.close()
    finally:
        await broker.close()
        app[ROUTER].close()
        await supervisor.stop()
        app[METRICS].publish_counts()  # the last second's messages too (a worker's files outlive it)
        loop.set_exception_handler(AfterShutdown(previous_handler))  # (an accept() retry may still be due)


async def _refresh_gauges(app: web.Application) -> None:
    """Every second: clients, rooms and throughput into their gauges (each worker its own, under gunicorn)."""
    hub, metrics = app[HUB], app[METRICS]
    while True:
        metrics.sample(len(hub.connections), len(hub.rooms))
        await asyncio.sleep(GAUGE_INTERVAL)


async def _close_clients(app: web.Application) -> None:
    """On shutdown every client gets close code 1001 (a no-op if the CLI drained already); then every client's end,
    its `wsgate_client_disconnected` hooks included, has run before `wsgate_shutdown` (bounded by hook_timeout)."""
    settings = app[SETTINGS]
    await app[HUB].drain(settings.shutdown, settings.websocket.timeout)
    await app[SESSIONS].all_ended(settings.plugins.hook_timeout)
