"""HTTP endpoints: `/ws` (the WebSocket protocol), `/health` and `/metrics`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from . import protocol
from .auth import SUBPROTOCOL, unauthorized, user_id_of
from .connection import Connection
from .dashboard import same_host
from .gateway import Gateway
from .keys import GATEWAY
from .metrics import CONTENT_TYPE_LATEST
from .protocol import ClientError

log = logging.getLogger(__name__)

READ_BATCH = 32  # frames one client may have handled before others get a turn (well under send_queue_size)


CLIENT_JS = Path(__file__).parent / "static" / "client.js"


async def client_js_view(request: web.Request) -> web.FileResponse:
    """The JavaScript client, an ES module: `import { WsgateClient } from "/client.js"`."""
    return web.FileResponse(CLIENT_JS, headers={"Content-Type": "text/javascript; charset=utf-8"})


async def health_view(request: web.Request) -> web.Response:
    """`{"status":"healthy","clients":N,"rooms":M}`; 503 with `"draining"` during shutdown."""
    gateway = request.app[GATEWAY]
    return web.json_response(gateway.health(), status=503 if gateway.draining else 200)


ORIGIN_NOT_ALLOWED = "origin not allowed"
TOO_MANY_FROM_ADDRESS = "too many connections from this address"
AUTHENTICATION_REQUIRED = "authentication required"


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Cross-Site WebSocket Hijacking guard: browsers send Origin, and CORS does not cover WebSockets.

    Exact matches only (no substring or suffix matching). With no list, only pages served
    from this same host may connect; `"*"` allows any origin.
    """
    if allowed:
        return "*" in allowed or origin in allowed
    return urlsplit(origin).netloc.lower() == host.lower()


async def metrics_view(request: web.Request) -> web.Response:
    """The Prometheus text format (summed over workers under gunicorn's multiprocess mode)."""
    gateway = request.app[GATEWAY]
    gateway.metrics.sample(len(gateway.hub.connections), len(gateway.hub.rooms))
    return web.Response(body=gateway.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ws_view(request: web.Request) -> web.StreamResponse:
    """Upgrade, admit (or refuse at capacity), then read until the client goes away."""
    gateway = request.app[GATEWAY]
    if gateway.draining:
        return web.json_response({"error": "server is shutting down"}, status=503)
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request.host, gateway.settings.security.allowed_origins) and not (
        gateway.dashboard is not None and same_host(request)  # the dashboard's own page
    ):
        gateway.metrics.error("origin_rejected")
        log.warning("refused a WebSocket from origin %r (%s)", origin, request.remote, extra={"remote": request.remote})
        return web.json_response({"error": ORIGIN_NOT_ALLOWED}, status=403)
    address = request.remote or ""
    if not gateway.hub.claim_address(address):  # counted, not logged: a storm must not flood the log too
        gateway.metrics.error("address_limit")
        return web.json_response({"error": TOO_MANY_FROM_ADDRESS}, status=429)
    try:
        return await _open(request, gateway)
    finally:
        gateway.hub.release_address(address)


async def _open(request: web.Request, gateway: Gateway) -> web.StreamResponse:
    identity = None
    if gateway.plugins.authenticates:
        try:
            identity = await gateway.plugins.authenticate(request)
        except web.HTTPException:
            raise  # the plugin's refusal (401, 403, ...), sent before any upgrade
        except Exception:
            log.exception("an authentication plugin failed for %s", request.remote)
            gateway.metrics.error("handler_error")
            return web.json_response({"error": protocol.INTERNAL_ERROR}, status=500)
    if identity is None and gateway.settings.auth.required:
        gateway.metrics.error("auth_required")
        raise unauthorized(AUTHENTICATION_REQUIRED, "connect with a token (auth.required is on)")
    settings = gateway.settings.websocket
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,) if gateway.settings.auth.jwt.enabled else (),  # the token's carrier, chosen back
        max_msg_size=settings.max_message_size,
        compress=settings.compression,
        autoping=False,  # pings and pongs reach the read loop: they count as signs of life
        timeout=settings.write_wait,  # how long a close handshake may take
    )
    try:
        stream = await ws.prepare(request)
    except ConnectionResetError:  # the client left during the handshake: nothing to serve, nothing to log
        return ws
    if gateway.draining:  # began while we authenticated or upgraded: drain() would not see this client
        await ws.close(code=protocol.CLOSE_GOING_AWAY, message=b"server shutting down")
        return ws
    conn = Connection(ws, stream, request, gateway, identity)
    if not gateway.hub.admit(conn):
        await _refuse_full(ws, gateway)
        return ws
    gateway.metrics.connection_opened()
    log.info("client %s connected from %s", conn.id, conn.remote, extra={"client_id": conn.id, "remote": conn.remote})
    try:
        conn.start()
        conn.enqueue(
            protocol.encode(
                protocol.CONNECTED, data=_connected_data(conn)
            )
        )
        if gateway.plugins.watches_clients:
            await gateway.plugins.notify("wsgate_client_connected", conn)
        await _read_loop(ws, conn, gateway)
    finally:
        gateway.hub.remove(conn)
        try:
            await conn.stop()
        finally:
            if gateway.plugins.watches_clients:
                await gateway.plugins.notify("wsgate_client_disconnected", conn)
    return ws


async def _read_loop(ws: web.WebSocketResponse, conn: Connection, gateway: Gateway) -> None:
    dispatcher = gateway.dispatcher
    binary_error = ClientError(protocol.BINARY_NOT_SUPPORTED, "send JSON messages as text frames")
    batch = 0
    while True:
        msg = await ws.receive()
        conn.touch()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await dispatcher.dispatch(conn, msg.data)
            # receive() does not yield while frames are buffered. Yield every READ_BATCH frames
            # so outboxes are flushed (several frames per write) before a burst could fill them.
            batch += 1
            if batch >= READ_BATCH:
                batch = 0
                await asyncio.sleep(0)
        elif kind is WSMsgType.BINARY:
            if dispatcher.within_rate(conn, len(msg.data)):
                dispatcher.reject(conn, binary_error)
        elif kind is WSMsgType.PING:
            conn.queue_pong(msg.data)
        elif kind is WSMsgType.PONG:
            continue
        else:  # CLOSE, CLOSING, CLOSED or ERROR: aiohttp has answered the close already
            error = msg.data if kind is WSMsgType.ERROR else None
            if isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG:
                gateway.metrics.error("message_too_big")
                conn.close_reason, conn.close_code = "message too big", WSCloseCode.MESSAGE_TOO_BIG
            return


def _connected_data(conn: Connection) -> dict[str, str]:
    """The spec's `connected` data; with `user_id` added for an authenticated client."""
    data = {"client_id": conn.id, "message": protocol.CONNECTED_TEXT}
    if (user_id := user_id_of(conn.identity)) is not None:
        data["user_id"] = user_id
    return data


async def _refuse_full(ws: web.WebSocketResponse, gateway: Gateway) -> None:
    """The spec's answer at `max_connections`: the error message, then close 1013."""
    gateway.metrics.error("server_full")
    try:
        await ws.send_frame(protocol.encode_error(ClientError(protocol.SERVER_FULL)), WSMsgType.TEXT)
        await ws.close(code=protocol.CLOSE_TRY_AGAIN_LATER, message=protocol.SERVER_FULL.encode())
    except ConnectionResetError:
        pass  # the client left first
