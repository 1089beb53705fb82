"""HTTP endpoints: `/ws` (the WebSocket protocol), `/health` and `/metrics`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11

from . import __version__, errors, protocol
from .aiohttp_private import DetachedResponse, Upgraded, take_over
from .auth import SUBPROTOCOL, expires_at_of, subs_of, unauthorized, user_id_of
from .broker import describe_broker
from .clients import GatewayConnection
from .dispatch import Dispatcher
from .errors import ClientError, CloseReason, close_text
from .gateway import Gateway
from .hub import Hub
from .keys import (
    BROKER,
    DASHBOARD,
    FLUSHER,
    GATEWAY,
    HUB,
    METRICS,
    PLUGINS,
    SCHEDULE,
    SETTINGS,
    STARTED_AT,
    SUPERVISOR,
)
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .origins import origin_allowed, origin_problem, same_host
from .plugins import HookTimedOut, Plugins
from .wire import close_fields

log = logging.getLogger(__name__)

CLIENT_JS = Path(__file__).parent / "static" / "client.js"
WS_PATH = "/ws"
"""The WebSocket endpoint's path (the guide's)."""


async def client_js_view(request: web.Request) -> web.FileResponse:
    """The JavaScript client, an ES module: `import { WsgateClient } from "/client.js"`."""
    return web.FileResponse(CLIENT_JS, headers={"Content-Type": "text/javascript; charset=utf-8"})


async def health_view(request: web.Request) -> web.Response:
    """`{"status":"healthy","clients":N,"rooms":M}` (the spec's), then `broker` (its state: `ok`, `degraded`),
    `broker_backend` (which broker: `memory`, or the Redis URL with its password masked), `tasks` (how many
    background tasks run, and which are down waiting to restart), `uptime_seconds` and `version`; 503 with
    `"draining"` during shutdown."""
    app = request.app
    hub, supervisor = app[HUB], app[SUPERVISOR]
    body: dict[str, Any] = {
        "status": "draining" if hub.draining else "healthy",
        "clients": len(hub.connections),
        "rooms": len(hub.rooms),
        "broker": app[BROKER].state,
        "broker_backend": describe_broker(app[SETTINGS]),
        "tasks": {"running": supervisor.running, "down": supervisor.down},
        "uptime_seconds": round(time.monotonic() - app[STARTED_AT], 3),
        "version": __version__,
    }
    return web.json_response(body, status=503 if hub.draining else 200)


async def ready_view(request: web.Request) -> web.Response:
    """Readiness for a load balancer: 200 `{"ready": true}`, or 503 `{"ready": false, "reasons": [...]}` while
    draining, while the broker is degraded (other nodes are not heard) or while a background task is down."""
    app = request.app
    reasons = []
    if app[HUB].draining:
        reasons.append("draining")
    if app[BROKER].state != "ok":
        reasons.append(f"broker {app[BROKER].state}")
    reasons += [f"task {name} is down" for name in app[SUPERVISOR].down]
    body: dict[str, Any] = {"ready": not reasons}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=503 if reasons else 200)


ORIGIN_NOT_ALLOWED = "origin not allowed"
AUTHENTICATION_REQUIRED = "authentication required"
CLIENT_LEFT = 499  # the access log's status for a client that left during its handshake (nginx's code)


async def metrics_view(request: web.Request) -> web.Response:
    """The Prometheus text format (summed over workers under gunicorn's multiprocess mode)."""
    hub, metrics = request.app[HUB], request.app[METRICS]
    metrics.sample(len(hub.connections), len(hub.rooms))
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ws_disabled_view(request: web.Request) -> web.Response:
    """`/ws` while `websocket.enabled` is false (the spec's default): 404, saying why and how to turn it on."""
    return web.json_response(
        {
            "error": "the WebSocket endpoint is off",
            "detail": ("websocket.enabled is false; set it to true in the settings file, or WEBSOCKET_ENABLED=true"),
        },
        status=404,
    )


async def ws_method_not_allowed(request: web.Request) -> web.Response:
    """`/ws` with another method than GET (POST, HEAD, OPTIONS...): 405 with `Allow: GET`, in JSON as every
    refusal (a WebSocket opening handshake is a GET, RFC 6455 section 4.1)."""
    request.app[METRICS].error(errors.UPGRADE_REQUIRED.label)
    return web.json_response(
        {"error": errors.UPGRADE_REQUIRED.text, "detail": f"the opening handshake is a GET, not a {request.method}"},
        status=405,
        headers={"Allow": "GET"},
    )


async def ws_view(request: web.Request) -> web.StreamResponse:
    """Upgrade, admit (or refuse at capacity), then read until the client goes away.

    Every refusal before the upgrade is JSON, `{"error": text, "detail": why}`: 503 (draining), 400 (an
    unsupported `?protocol=N`), 403 (origin), 401 and 503 (authentication), then 426 for a request that is not
    a WebSocket handshake (a plain GET) or for a `Sec-WebSocket-Version` other than 13, and 400 for a malformed
    one (`upgrade`).
    """
    app = request.app
    hub, metrics, settings = app[HUB], app[METRICS], app[SETTINGS]
    if hub.draining:
        return web.json_response({"error": "server is shutting down"}, status=503)
    try:
        version = protocol.negotiate(*request.query.getall("protocol", [None]))
    except ClientError as err:
        metrics.error(err.kind.label)
        return web.json_response({"error": err.text, "detail": err.detail}, status=400)
    origin = request.headers.get("Origin")
    if (
        origin is not None
        and not origin_allowed(origin, request.host, settings.security.allowed_origins)
        and not (
            DASHBOARD in app and same_host(request)  # the dashboard's own page
        )
    ):
        metrics.error("origin_rejected")
        if (problem := origin_problem(origin)) is None:
            log.warning(
                "refused a WebSocket from origin %r (%s): add it to security.allowed_origins "
                "(e.g. WSGATE_SECURITY__ALLOWED_ORIGINS='[\"%s\"]'); cors.allowed_origins covers HTTP only",
                origin,
                request.remote,
                origin,
                extra={"remote": request.remote},
            )
        else:  # never suggest an entry start-up would refuse
            log.warning(
                "refused a WebSocket from origin %r (%s); security.allowed_origins cannot list it: %s",
                origin,
                request.remote,
                problem,
                extra={"remote": request.remote},
            )
        return web.json_response({"error": ORIGIN_NOT_ALLOWED}, status=403)
    return await _open(request, version)  # (the address limit counts sockets from accept() on: wsgate.admission)


async def _open(request: web.Request, version: int) -> web.StreamResponse:
    app = request.app
    hub, metrics, plugins, settings = app[HUB], app[METRICS], app[PLUGINS], app[SETTINGS]
    identity = None
    if plugins.authenticates:
        try:
            identity = await plugins.authenticate(request)
        except web.HTTPException as refusal:  # the plugin's refusal (401, 403, ...), sent before any upgrade
            if refusal.status == 401:
                metrics.error("auth_failed")
            raise
        except HookTimedOut as timed_out:  # past plugins.hook_timeout: cancelled and logged (throttled)
            metrics.error("hook_timeout")
            return web.json_response(
                {"error": timed_out.text, "detail": timed_out.detail}, status=503, headers={"Retry-After": "1"}
            )
        except Exception:
            log.exception("an authentication plugin failed for %s", request.remote)
            metrics.error(errors.INTERNAL_ERROR.label)
            return web.json_response({"error": errors.INTERNAL_ERROR.text}, status=500)
    if identity is None and settings.auth.required:
        metrics.error("auth_required")
        raise unauthorized(AUTHENTICATION_REQUIRED, "connect with a token (auth.required is on)")
    ws_settings = settings.websocket
    ws = DetachedResponse(
        protocols=(SUBPROTOCOL,) if settings.auth.jwt.enabled else (),  # the token's carrier, chosen back
        max_msg_size=ws_settings.max_message_size,
        compress=ws_settings.compression,
        autoping=False,  # pings and pongs reach the connection: they count as signs of life
        autoclose=False,  # (before the hand-over; then the connection answers a close: wire.close_reply)
        timeout=ws_settings.write_wait,  # how long a close handshake may take
    )
    if "websocket" not in request.headers.get("Upgrade", "").lower():  # a plain GET, a browser's address bar
        metrics.error(errors.UPGRADE_REQUIRED.label)
        return web.json_response(
            {"error": errors.UPGRADE_REQUIRED.text, "detail": "connect with a WebSocket client (Upgrade: websocket)"},
            status=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    try:
        stream = await upgrade(ws, request)
    except web.HTTPException as refusal:  # a malformed handshake (aiohttp's text answer): JSON, as every refusal
        metrics.error(errors.UPGRADE_REQUIRED.label)
        return web.json_response(
            {
                "error": errors.UPGRADE_REQUIRED.text,
                "detail": f"the opening handshake is malformed: {refusal.text or refusal.reason}",
            },
            status=refusal.status,
            headers={
                k: v
                for k, v in refusal.headers.items()
                if k.lower().startswith("sec-websocket") or k.lower() in ("upgrade", "connection")
            },
        )
    if stream is None:
        return client_left()
    advise = version >= protocol.PROTOCOL
    if hub.draining:  # began while we authenticated or upgraded: drain() would not see this client
        await _close(ws, errors.SHUTTING_DOWN, advise)
        return ws
    sessions = app[SESSIONS]
    conn = new_connection(app, request.transport, request.remote, identity, version, compressed=bool(ws.compress))
    if not hub.admit(conn):
        await _refuse_full(ws, metrics, advise)
        return ws
    address = hub.claimed.pop(request.protocol, None)  # counted against its address until its socket goes
    upgraded = take_over(request, ws, conn)  # (no await since the upgrade: the socket is the connection's now)
    if sessions.begin(conn, upgraded, address):  # what it sends meanwhile is queued, handled after the hooks
        await sessions.welcome(conn)
    return ws  # (aiohttp ends the request: the socket is no longer its own, see aiohttp_private.take_over)


class Sessions:
    """What every WebSocket connection of one server reports to: one object for all of them, its callbacks bound
    once (a connection holds references, not closures of its own: docs/performance.md, "Memory per connection").

    - `text(conn, text)`: a text message (the dispatcher's `dispatch`);
    - `binary(conn, data)`: a binary message, refused with the spec's error and counted against the rate limits;
    - `gone(conn)`: dropped or closed by the server: out of the hub, its work in flight cancelled;
    - `ended(conn)`: its socket is gone and everything it held released: out of the hub, its address's count
      released, `wsgate_client_disconnected` told.

    `live` holds every connection whose end has not run yet, the closing ones too: the shutdown awaits them
    (`all_ended`) before `wsgate_shutdown`, so that every disconnect hook has run by then (docs/plugins.md).
    """

    __slots__ = (
        "_hub",
        "_dispatcher",
        "_plugins",
        "_metrics",
        "_gateway",
        "text",
        "binary",
        "gone",
        "ended",
        "live",
        "_none_left",
    )

    def __init__(self, hub: Hub, dispatcher: Dispatcher, plugins: Plugins, metrics: Metrics, gateway: Gateway) -> None:
        self._hub, self._dispatcher, self._plugins, self._metrics = hub, dispatcher, plugins, metrics
        self._gateway = gateway
        self.text = dispatcher.dispatch
        self.binary = self._binary
        self.gone = self._gone
        self.ended = self._ended
        self.live: set[GatewayConnection] = set()
        self._none_left: asyncio.Event | None = None

    async def all_ended(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until every connection's end has run, its disconnect hooks included."""
        if self.live:
            self._none_left = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._none_left.wait()
            except TimeoutError:
                log.warning("shutdown: %d clients still ending after %ss", len(self.live), timeout)

    def begin(self, conn: GatewayConnection, upgraded: Upgraded, address: str | None) -> bool:
        """Start an admitted connection whose socket is now its own (`aiohttp_private.take_over`, or
        `upgraded_here` at the front door): counted and logged, its address claim (`Hub.claim_address`) its own,
        `connected` written with the 101, its keepalive and token expiry running, its messages read.

        Returns whether hooks must run before its first message (`wsgate_client_connected`, the server's
        subscriptions): the connection then holds what the client sends until `release`.
        """
        self._metrics.connection_opened()
        log.info(
            "client %s connected from %s", conn.id, conn.remote, extra={"client_id": conn.id, "remote": conn.remote}
        )
        conn.address = address
        conn.enqueue(protocol.encode(protocol.CONNECTED, data=_connected_data(conn, self._dispatcher)))
        conn.write_head(upgraded.head)  # the 101 and `connected`, in one system call
        self.live.add(conn)
        conn.start()
        conn.expire_at(expires_at_of(conn.identity))
        hooks = self._plugins.watches_clients or bool(subs_of(conn.identity))
        conn.attach(upgraded, self.text, self.binary, self.ended, hold=hooks)
        return hooks

    async def welcome(self, conn: GatewayConnection) -> None:
        """What runs before the first message of a connection `begin` held: the `wsgate_client_connected` hooks
        (each plugin's within plugins.hook_timeout), then the server's subscriptions (`Identity.subs`); both end
        when the client goes. Then its queued messages are handled."""
        try:
            if self._plugins.watches_clients:
                await self._dispatcher.until_gone(conn, self._plugins.notify("wsgate_client_connected", conn))
            if subs_of(conn.identity):
                await self._dispatcher.until_gone(conn, self._gateway.subscribe_identity(conn))
        finally:
            conn.release()

    def _binary(self, conn: GatewayConnection, data: bytes) -> None:
        if self._dispatcher.within_rate(conn, len(data)):
            self._dispatcher.reject(conn, BINARY_NOT_SUPPORTED)

    def _gone(self, conn: GatewayConnection) -> None:
        try:
            self._hub.remove(conn)
        finally:
            self._dispatcher.client_gone(conn)

    async def _ended(self, conn: GatewayConnection) -> None:
        try:
            self._hub.remove(conn)
            if conn.address is not None:
                self._hub.release_address(conn.address)
        finally:
            try:
                if self._plugins.watches_clients:
                    await self._plugins.notify("wsgate_client_disconnected", conn)
            finally:
                self.live.discard(conn)
                if not self.live and self._none_left is not None:
                    self._none_left.set()


SESSIONS = web.AppKey("wsgate.sessions", Sessions)
BINARY_NOT_SUPPORTED = ClientError(errors.BINARY_NOT_SUPPORTED, "send JSON messages as text frames")


def new_connection(
    app: web.Application,
    transport: Any,
    remote: str | None,
    identity: object,
    version: int,
    *,
    compressed: bool,
) -> GatewayConnection:
    """The connection for an upgraded socket (`transport`), not admitted yet (`Hub.admit`); `version` is the
    protocol it asked for (`protocol.negotiate`), `identity` what authentication returned (None: anonymous)."""
    return GatewayConnection(
        transport,
        remote=remote,
        settings=app[SETTINGS].websocket,
        flusher=app[FLUSHER],
        schedule=app[SCHEDULE],
        metrics=app[METRICS],
        on_drop=app[SESSIONS].gone,
        identity=identity,
        gateway=app[GATEWAY],
        protocol_version=version,
        compressed=compressed,
    )


def _connected_data(conn: GatewayConnection, dispatcher: Dispatcher) -> dict[str, Any]:
    """The spec's `connected` data; with `user_id` added for an authenticated client, and `expires_at`
    (Unix time in milliseconds) when its token expires: refresh before then, or be closed with 4001. Protocol 2
    adds `protocol` (the version), `extensions` (protocol.EXTENSIONS) and `types` (the message types this
    server handles, sorted)."""
    data: dict[str, Any] = {"client_id": conn.id, "message": protocol.CONNECTED_TEXT}
    if (user_id := user_id_of(conn.identity)) is not None:
        data["user_id"] = user_id
    if (expires_at := expires_at_of(conn.identity)) is not None:
        data["expires_at"] = round(expires_at * 1000)
    if conn.protocol >= protocol.PROTOCOL:
        data["protocol"] = conn.protocol
        data["extensions"] = list(protocol.EXTENSIONS)
        data["types"] = dispatcher.types
    return data


async def upgrade(ws: web.WebSocketResponse, request: web.Request) -> AbstractStreamWriter | None:
    """Answer the opening handshake (RFC 6455 section 4.2.2); None when the client left during it.

    The view then returns `client_left()`: the unprepared WebSocketResponse would make aiohttp log
    an "Unhandled exception" traceback as it closes it.

    Raises HTTPException (400, or 426 with `Sec-WebSocket-Version: 13`) for what aiohttp's handshake lets
    through and section 4.2.1 refuses: HTTP/1.0 (or an HTTP/2.0 request line), a body (aiohttp would read it
    from the socket after the upgrade, and log a traceback for each such request), a repeated key or version,
    a version other than 13.
    """
    if request.version != HttpVersion11:  # (HTTP/1.0; an "HTTP/2.0" request line: HTTP/2 has no 101)
        raise web.HTTPBadRequest(text="an opening handshake needs HTTP/1.1 (RFC 6455 section 4.2.1)")
    if request.body_exists:
        raise web.HTTPBadRequest(text="an opening handshake has no body (RFC 6455 section 4.1)")
    headers = request.headers
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version"):
        if len(headers.getall(name, ())) > 1:
            raise web.HTTPBadRequest(text=f"{name} is repeated")
    if (version := headers.get("Sec-WebSocket-Version", "13")) != "13":  # (missing: aiohttp's 400)
        if not (version.isascii() and version.isdigit()):  # not a version at all (section 4.1: 1*DIGIT)
            raise web.HTTPBadRequest(text="Sec-WebSocket-Version is not a number")
        raise web.HTTPUpgradeRequired(
            text=f"Sec-WebSocket-Version {version[:16]!r} is not supported: 13 is",
            headers={"Sec-WebSocket-Version": "13", "Upgrade": "websocket", "Connection": "Upgrade"},  # (RFC 9110)
        )
    try:
        stream = await ws.prepare(request)
    except ConnectionError:  # reset, or a broken pipe
        return None
    except ValueError as error:  # a header aiohttp's handshake cannot read (not ASCII: a key b64decode refuses)
        raise web.HTTPBadRequest(text=f"a handshake header is not ASCII ({type(error).__name__})") from None
    if request.transport is None or request.transport.is_closing():  # (the 101 is held: DetachedResponse)
        return None
    return stream


def client_left() -> web.Response:
    """What a view returns for a client that left during its handshake: nothing reaches it (the closed
    transport refuses the write, and aiohttp lets that pass quietly); the access log shows 499, the
    status nginx logs for a client that closed its request."""
    return web.Response(status=CLIENT_LEFT)


async def _refuse_full(ws: web.WebSocketResponse, metrics: Metrics, advise: bool) -> None:
    """The spec's answer at `max_connections`: the error message, then close 1013 (protocol 2: coded, advised)."""
    metrics.error(errors.SERVER_FULL_ERROR.label)
    try:
        await ws.send_frame(protocol.encode_error(ClientError(errors.SERVER_FULL_ERROR), coded=advise), WSMsgType.TEXT)
        await _close(ws, errors.SERVER_FULL, advise)
    except ConnectionResetError:
        pass  # the client left first


async def _close(ws: web.WebSocketResponse, reason: CloseReason, advise: bool) -> None:
    """Close `ws` for `reason` as every close wsgate sends: through `wire.close_fields` (a code that may be
    sent, a reason of at most 123 bytes), with its reconnect advice under protocol 2 (`errors.close_text`)."""
    code, message = close_fields(reason.code, close_text(reason, advise))
    await ws.close(code=code, message=message)
