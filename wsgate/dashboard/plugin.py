"""The built-in `dashboard` plugin: operator identity, operator message types, and live figures.

Registered only with `dashboard.enabled`. A WebSocket that carries a dashboard
session cookie (or a JWT whose `admin_claim` is true) is an operator. Operators
may send:

- `dashboard_watch`: from now on, receive `dashboard_stats` every second;
- `dashboard_publish` `{room, data}`: publish a server message to a room;
- `dashboard_tail` `{room}`: receive a room's traffic (as a member of it);
- `dashboard_disconnect` `{client_id}`: close a client (1008, "disconnected by an operator").

A socket opened with a dashboard login lives no longer than the login: logging out, the
login's expiry (`session_ttl`, or an admin JWT's `exp`) and a new login from the same
browser close it at once (1008, "dashboard session ended: ..."), with its tails and rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from wsgate import Client, ClientError, Gateway, Handler, Identity, Message, errors, hookimpl, protocol
from wsgate.config import Settings
from wsgate.errors import CloseReason
from wsgate.origins import same_host

from .sessions import COOKIE, DashboardSessions, LoginThrottle, operator, session_of

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0  # seconds between two dashboard_stats
TOP_ROOMS = 20
TOP_ROOMS_EVERY = 10  # reports between two searches for the largest rooms (one pass over every room of the node)
SAMPLE_CLIENTS = 50
DISCONNECTED = errors.OPERATOR_DISCONNECT.text
"""The close reason (code 1008) of a client an operator disconnected."""
LOGGED_OUT, EXPIRED, REPLACED = errors.DASHBOARD_LOGGED_OUT, errors.DASHBOARD_EXPIRED, errors.DASHBOARD_REPLACED
"""How a dashboard login ends (`end_session`): the close reasons its sockets get."""


class Dashboard:
    """One gateway's dashboard plugin: its watchers and its figures task."""

    def __init__(self, settings: Settings) -> None:
        self._admin_claim = settings.dashboard.admin_claim
        self.sessions = DashboardSessions(settings.dashboard)
        """Dashboard logins, shared with the dashboard's HTTP views (`wsgate.dashboard.web`)."""
        self.throttle = LoginThrottle()
        """Slows password guessing (the login view's)."""
        self._watchers: set[Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._sockets: dict[str, set[Client]] = {}  # session -> the sockets opened with it
        self._opened_with: dict[str, str] = {}  # client id -> its session (its identity may change since)
        self._timers: dict[str, asyncio.TimerHandle] = {}  # session -> its end, while it has sockets

    # --- hooks --------------------------------------------------------------------------

    @hookimpl
    def wsgate_authenticate(self, request: web.Request) -> object | None:
        """The session cookie makes an operator, but only from the dashboard's own pages (or no page)."""
        session = request.cookies.get(COOKIE)
        if not self.sessions.valid(session) or not same_host(request):
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
        self._task = gateway.spawn(
            "dashboard-figures",
            lambda: report_figures(
                gateway, lambda: {watcher.id for watcher in self._watchers}, self._show, lambda: bool(self._watchers)
            ),
        )

    @hookimpl
    async def wsgate_shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    @hookimpl
    def wsgate_client_connected(self, client: Client) -> None:
        """Remember which login a socket was opened with, so that its end closes the socket; one whose login
        ended during the upgrade is closed at once."""
        session = session_of(client.identity)
        if session is None:
            return
        remaining = self.sessions.remaining(session)
        if remaining is None:
            client.drop(EXPIRED)
            return
        self._sockets.setdefault(session, set()).add(client)
        self._opened_with[client.id] = session
        if session not in self._timers:
            self._timers[session] = asyncio.get_running_loop().call_later(remaining, self.end_session, session, EXPIRED)

    @hookimpl
    def wsgate_client_disconnected(self, client: Client) -> None:
        self._watchers.discard(client)
        session = self._opened_with.pop(client.id, None)
        sockets = self._sockets.get(session or "")
        if session is not None and sockets is not None:
            sockets.discard(client)
            if not sockets:
                del self._sockets[session]
                timer = self._timers.pop(session, None)
                if timer is not None:
                    timer.cancel()

    def end_session(self, session: str, cause: CloseReason) -> int:
        """End a dashboard login (`cause`: LOGGED_OUT, EXPIRED or REPLACED) and close every socket opened
        with it, at once, with 1008 "dashboard session ended: <cause>". Returns how many were closed.

        Called by the logout and login views and by the login's own expiry timer (a loop callback: it
        cannot raise). Closing the socket takes away all the login gave it, whatever was granted."""
        self.sessions.end(session)
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        sockets = self._sockets.pop(session, set())
        for client in sockets:
            self._watchers.discard(client)
            client.drop(cause)
        if sockets:
            log.info(
                "dashboard session ended (%s): closed %d socket(s)",
                cause.text.removeprefix(f"{errors.SESSION_ENDED}: "),
                len(sockets),
            )
        return len(sockets)

    # --- operator messages ----------------------------------------------------------------

    def _operator(self, client: Client) -> None:
        if not self._is_operator(client):
            raise ClientError(errors.NOT_ALLOWED, "dashboard messages are for operators")

    def _is_operator(self, client: Client) -> bool:
        """A live dashboard login (checked every time: logging out ends it), or a JWT with the admin claim."""
        identity = client.identity
        if not isinstance(identity, Identity):
            return False
        session = session_of(identity)
        if session is not None:
            return self.sessions.valid(session)
        expired = identity.expires_at is not None and identity.expires_at <= time.time()
        return identity.claims.get(self._admin_claim) is True and not expired  # (the socket closes then too)

    async def watch(self, client: Client, message: Message) -> None:
        self._operator(client)
        self._watchers.add(client)
        client.enqueue(protocol.encode("dashboard_watching"))

    async def publish(self, client: Client, message: Message) -> None:
        self._operator(client)
        room = message.require_room()
        delivered = await client.gateway.publish(room, message.data)
        client.enqueue(protocol.encode("dashboard_published", room=room, data={"delivered": delivered}))

    async def tail(self, client: Client, message: Message) -> None:
        self._operator(client)
        room = message.require_room()
        await client.gateway.join(client, room)
        client.enqueue(protocol.encode("dashboard_tailing", room=room))

    async def disconnect(self, client: Client, message: Message) -> None:
        self._operator(client)
        target_id = message.fields.get("client_id")
        if not isinstance(target_id, str):
            raise ClientError(errors.INVALID_JSON, "field 'client_id' must be a string")
        target = client.gateway.client(target_id)
        if target is not None:
            log.info("operator %s disconnects client %s", client.id, target_id, extra={"client_id": target_id})
            target.drop(errors.OPERATOR_DISCONNECT)
        client.enqueue(
            protocol.encode("dashboard_disconnected", data={"client_id": target_id, "found": target is not None})
        )

    # --- figures --------------------------------------------------------------------------

    def _show(self, node: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        """Push this node's figures and every live node's to the watchers still logged in (`report_figures` calls
        it only while someone watches)."""
        payload = protocol.encode("dashboard_stats", data={"node": node, "nodes": nodes})
        for watcher in list(self._watchers):
            if self._is_operator(watcher):
                watcher.enqueue(payload)
            else:
                self._watchers.discard(watcher)  # logged out, or the login expired


async def report_figures(
    gateway: Gateway,
    operators: Callable[[], set[str]] = set,
    show: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
    watching: Callable[[], bool] | None = None,
) -> None:
    """Every STATS_INTERVAL seconds: this node's figures (`_figures`, its dashboard's `operators()` client ids
    marked), shared with every node (`Gateway.share_figures`: with the Redis broker, `<prefix>:stats`, where an
    entry outlives its node's last report by presence.redis.STATS_TTL at most); `show(node, nodes)` gets this
    node's figures and every live node's, while `watching()` (None: always). Every node with the Redis broker runs
    it, the dashboard's through the plugin and the others through `wsgate.app` (task `figures`): the Nodes table
    lists them all (docs/operations.md), not only the nodes that serve the dashboard.

    Every node's figures are read and decoded only for a `show` that is watched, and every TOP_ROOMS_EVERY
    reports (which drops the entries of nodes that stopped reporting): reading them every second cost each node
    more, the more nodes there were, for a page nobody had open (benchmarks/RESULTS.md, "What is left of issue
    25")."""
    before, then = gateway.stats(top_rooms=0, sample_clients=0), time.monotonic()
    top_rooms: list[Any] = []
    for report in itertools.count():
        await asyncio.sleep(STATS_INTERVAL)
        fresh = report % TOP_ROOMS_EVERY == 0  # (finding them looks at every room: not every second)
        now, stats = time.monotonic(), gateway.stats(top_rooms=TOP_ROOMS if fresh else 0, sample_clients=SAMPLE_CLIENTS)
        if fresh:
            top_rooms = stats["top_rooms"]
        stats["top_rooms"] = top_rooms
        figures = _figures(stats, before, max(now - then, 1e-6), operators())
        before, then = stats, now
        watched = show is not None and (watching is None or watching())
        nodes = await gateway.share_figures(figures, others=watched or fresh)
        if watched:
            assert show is not None
            show(figures, nodes)


def _figures(stats: dict[str, Any], before: dict[str, Any], elapsed: float, operators: set[str]) -> dict[str, Any]:
    """What the page shows of a node: its stats, with messages in and out per second instead of totals, and
    its dashboards (`operators`: their own connections are clients too, and marked so)."""
    figures = {key: value for key, value in stats.items() if key not in ("received", "delivered")}
    figures["operators"] = len(operators)
    figures["clients_sample"] = [
        {**client, "operator": client["client_id"] in operators} for client in stats["clients_sample"]
    ]
    figures["in_per_s"] = round((stats["received"] - before["received"]) / elapsed, 1)
    figures["out_per_s"] = round((stats["delivered"] - before["delivered"]) / elapsed, 1)
    return figures
