"""The built-in `dashboard` plugin: operator identity, operator message types, and live figures.

Registered only with `dashboard.enabled`. A WebSocket that carries a dashboard
session cookie (or a JWT whose `admin_claim` is true) is an operator. Operators
may send:

- `dashboard_watch`: from now on, receive `dashboard_stats` every second;
- `dashboard_publish` `{room, data}`: publish a server message to a room;
- `dashboard_tail` `{room}`: receive a room's traffic (as a member of it);
- `dashboard_disconnect` `{client_id}`: close a client (1008, "disconnected by an operator").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .. import hookimpl, protocol
from ..auth import Identity
from .messages import room_of
from ..config import Settings
from ..connection import Connection
from ..dashboard import COOKIE, SESSION_CLAIM, operator, same_host
from ..gateway import Gateway
from ..hookspecs import Handler
from ..keys import GATEWAY
from ..protocol import ClientError, Message

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0  # seconds between two dashboard_stats
TOP_ROOMS = 20
SAMPLE_CLIENTS = 50
DISCONNECTED = "disconnected by an operator"


class Dashboard:
    """One gateway's dashboard plugin: its watchers and its figures task."""

    def __init__(self, settings: Settings) -> None:
        self._admin_claim = settings.dashboard.admin_claim
        self._watchers: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    # --- hooks --------------------------------------------------------------------------

    @hookimpl
    def wsgate_authenticate(self, request: web.Request) -> object | None:
        """The session cookie makes an operator, but only from the dashboard's own pages (or no page)."""
        sessions, session = request.app[GATEWAY].dashboard, request.cookies.get(COOKIE)
        if sessions is None or not sessions.valid(session) or not same_host(request):
            return None
        assert session is not None
        return operator(session)

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {
            "dashboard_watch": self.watch,
            "dashboard_publish": self.publish,
            "dashboard_tail": self.tail,
            "dashboard_disconnect": self.disconnect,
        }

    @hookimpl
    def wsgate_startup(self, gateway: Gateway) -> None:
        self._task = asyncio.create_task(self._report(gateway), name="wsgate-dashboard")

    @hookimpl
    async def wsgate_shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @hookimpl
    def wsgate_client_disconnected(self, client: Connection) -> None:
        self._watchers.discard(client)

    # --- operator messages ----------------------------------------------------------------

    def _operator(self, client: Connection) -> None:
        if not self._is_operator(client):
            raise ClientError(protocol.NOT_ALLOWED, "dashboard messages are for operators")

    def _is_operator(self, client: Connection) -> bool:
        """A live dashboard login (checked every time: logging out ends it), or a JWT with the admin claim."""
        identity = client.identity
        if not isinstance(identity, Identity):
            return False
        sessions = client.gateway.dashboard
        session = identity.claims.get(SESSION_CLAIM)
        if isinstance(session, str):
            return sessions is not None and sessions.valid(session)
        return identity.claims.get(self._admin_claim) is True

    async def watch(self, client: Connection, message: Message) -> None:
        self._operator(client)
        self._watchers.add(client)
        client.enqueue(protocol.encode("dashboard_watching"))

    async def publish(self, client: Connection, message: Message) -> None:
        self._operator(client)
        room = room_of(message)
        delivered = await client.gateway.publish(room, message.data)
        client.enqueue(protocol.encode("dashboard_published", room=room, data={"delivered": delivered}))

    async def tail(self, client: Connection, message: Message) -> None:
        self._operator(client)
        room = room_of(message)
        client.gateway.hub.join(client, room)
        await client.gateway.broker.wait_receiving(room)
        client.enqueue(protocol.encode("dashboard_tailing", room=room))

    async def disconnect(self, client: Connection, message: Message) -> None:
        self._operator(client)
        target_id = message.fields.get("client_id")
        if not isinstance(target_id, str):
            raise ClientError(protocol.INVALID_JSON, "field 'client_id' must be a string")
        target = client.gateway.hub.connections.get(target_id)
        if target is not None:
            log.info("operator %s disconnects client %s", client.id, target_id, extra={"client_id": target_id})
            target.drop(protocol.CLOSE_POLICY_VIOLATION, DISCONNECTED)
        client.enqueue(protocol.encode("dashboard_disconnected", data={"client_id": target_id,
                                                                        "found": target is not None}))

    # --- figures --------------------------------------------------------------------------

    async def _report(self, gateway: Gateway) -> None:
        """Every second: this node's figures, shared through the broker; every node's, pushed to the watchers."""
        before, then = gateway.metrics.totals(), time.monotonic()
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            now, totals = time.monotonic(), gateway.metrics.totals()
            elapsed = max(now - then, 1e-6)
            figures = _figures(gateway, totals, before, elapsed)
            before, then = totals, now
            try:  # every node shares its figures, watched or not: a dashboard on any node shows them all
                nodes = [protocol.loads(node) for node in await gateway.broker.share_stats(protocol.dumps(figures))]
            except Exception:  # a broken Redis must not stop the dashboard: show this node alone
                log.debug("dashboard: sharing figures failed", exc_info=True)
                nodes = [figures]
            if not self._watchers:
                continue
            payload = protocol.encode("dashboard_stats", data={"node": figures, "nodes": nodes})
            for watcher in list(self._watchers):
                if self._is_operator(watcher):
                    watcher.enqueue(payload)
                else:
                    self._watchers.discard(watcher)  # logged out, or the login expired


def _figures(gateway: Gateway, totals: dict[str, Any], before: dict[str, Any], elapsed: float) -> dict[str, Any]:
    hub = gateway.hub
    rooms = sorted(hub.rooms.items(), key=lambda item: len(item[1]), reverse=True)[:TOP_ROOMS]
    recent = list(hub.connections.values())[-SAMPLE_CLIENTS:]
    return {
        "node": getattr(gateway.broker, "node_id", b"local").decode(),
        "clients": len(hub.connections),
        "rooms": len(hub.rooms),
        "top_rooms": [[room, len(members)] for room, members in rooms],
        "in_per_s": round((totals["received"] - before["received"]) / elapsed, 1),
        "out_per_s": round((totals["delivered"] - before["delivered"]) / elapsed, 1),
        "errors": totals["errors"],
        "broker": gateway.broker.state,
        "clients_sample": [{"client_id": c.id, "remote": c.remote, "rooms": len(c.rooms)} for c in recent],
    }


def build(settings: Settings) -> Dashboard | None:
    """The plugin for this gateway, or None when the dashboard is off (then nothing of it runs)."""
    return Dashboard(settings) if settings.dashboard.enabled else None
