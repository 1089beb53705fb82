"""The running gateway as application code and plugins see it.

Reached as `app[wsgate.keys.GATEWAY]` from aiohttp code, or `client.gateway`
from a handler. It publishes through the broker, so code written against it
keeps working when the gateway scales out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from . import __version__, protocol
from .auth import AccessPolicy, DashboardSessions
from .broker import Broker, make_broker
from .config import Settings
from .connection import Flusher
from .dispatch import Dispatcher
from .rooms import RoomPatterns
from .hub import Hub
from .metrics import Metrics
from .plugins import Plugins
from .presence import Presence
from .protocol import Decoder

log = logging.getLogger(__name__)

HOLD_FACTOR = 10
RESTART_BATCH_INTERVAL = 0.1  # seconds between batches of clients closed by a restart drain


class Gateway:
    """Settings, hub, broker, plugins, services and metrics of one running gateway, with its public API."""

    def __init__(self, settings: Settings, plugins: Plugins) -> None:
        self.settings = settings
        self.plugins = plugins
        self.registry = plugins.build_registry()
        self.metrics = Metrics(self.registry.owners())
        self.broker: Broker = make_broker(settings, self.metrics)
        self.history_rooms = RoomPatterns(settings.history.rooms)
        # A recovering client's live messages wait while its history is read: up to ten outboxes' worth.
        self.hub = Hub(settings.websocket.limits, self.broker, HOLD_FACTOR * settings.websocket.send_queue_size)
        self.presence = Presence(settings.presence, self.broker)
        if self.presence.rooms:
            self.hub.presence = self.presence  # rooms without presence cost nothing on join and leave
        self.flusher = Flusher()
        limits = settings.websocket.limits
        self.decoder = Decoder(limits.max_room_name_length, limits.max_json_depth, limits.room_name_pattern)
        self.dispatcher = Dispatcher(self.registry, self.metrics, self.decoder)
        self.access = AccessPolicy(settings.auth)
        self.dashboard = DashboardSessions(settings.dashboard) if settings.dashboard.enabled else None
        """Dashboard logins (None when the dashboard is off)."""
        self.draining = False
        self.started_at = time.monotonic()
        self.services: Mapping[str, object] = {}
        """Services provided by plugins (`wsgate_services`), by name: the spec's service layer."""
        self.services = plugins.collect_services(self)

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The `[plugins.<name>]` table of the settings file (empty when absent), read-only."""
        return self.plugins.options(name)

    async def publish(
        self, room: str, data: Any, *, type: str = protocol.MESSAGE, client_id: str | None = None
    ) -> int:
        """Send `{"type": type, "room": room, "data": data}` to every member of `room`.

        This is the spec's RoomBroadcast / NotifyRoom. `client_id` names the sender
        (absent for server messages). Returns how many local clients it was queued for.
        """
        if self.history_rooms.match(room):  # offset and epoch are stamped in by the broker
            head = protocol.encode(type, room=room, data=data, client_id=client_id)[:-1]
            await self.broker.publish_history(room, head)
            return len(self.hub.rooms.get(room, ()))
        frame = protocol.encode(type, room=room, data=data, client_id=client_id)
        return await self.broker.publish(room, frame)

    async def broadcast(
        self, data: Any, *, type: str = protocol.MESSAGE, client_id: str | None = None
    ) -> int:
        """Send `{"type": type, "data": data}` to every connected client (the spec's Broadcast / NotifyAllClients)."""
        frame = protocol.encode(type, data=data, client_id=client_id)
        return await self.broker.publish(None, frame)

    def deliver(self, room: str | None, frame: bytes) -> int:
        """Hand a frame from the broker to this node's clients, counting the fan-out once."""
        count = self.hub.deliver(room, frame)
        self.metrics.messages_delivered(count)
        return count

    def health(self) -> dict[str, Any]:
        """The `/health` body: the spec's status and live counts, then uptime and version."""
        return {
            "status": "draining" if self.draining else "healthy",
            "clients": len(self.hub.connections),
            "rooms": len(self.hub.rooms),
            "broker": self.broker.state,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
            "version": __version__,
        }

    async def drain(self, timeout: float) -> None:
        """Refuse new clients, close every client and wait (at most `timeout`) until all are gone.

        `shutdown.mode = "drain"` closes everyone at once with 1001. `"restart"` closes with 1012
        in shuffled batches spread over `shutdown.window`, so reconnecting clients arrive at the
        other nodes gradually, not as one storm. Only the first call does anything: the CLI drains
        before aiohttp's own shutdown calls it again.
        """
        if self.draining:
            return
        self.draining = True
        shutdown = self.settings.shutdown
        restart = shutdown.mode == "restart"
        code, reason = (
            (protocol.CLOSE_SERVICE_RESTART, "service restart") if restart
            else (protocol.CLOSE_GOING_AWAY, "server shutting down")
        )
        clients = list(self.hub.connections.values())
        random.shuffle(clients)
        batches = max(1, min(len(clients), round(shutdown.window / RESTART_BATCH_INTERVAL))) if restart else 1
        if clients:
            log.info("draining: closing %d clients (%s, %d batches)", len(clients), shutdown.mode, batches)
        try:
            async with asyncio.timeout(timeout):
                size = max(1, -(-len(clients) // batches))
                for start in range(0, len(clients), size):
                    if start:
                        await asyncio.sleep(shutdown.window / batches)
                    for conn in clients[start:start + size]:
                        conn.drop(code, reason)
                for conn in clients:
                    await conn.closed.wait()
        except TimeoutError:
            still_open = sum(not conn.closed.is_set() for conn in clients)
            log.warning("draining: %d clients still open after %ss", still_open, timeout)
