"""Presence: who is in a room (rooms matched by `presence.rooms`), across nodes with Redis, and join/leave events.

Each node knows its own members (the hub); with Redis every node also writes
them to a hash per room, tagged with its node id, and proves it is alive every
`node_ttl / 3`. A `presence` request merges the local members with those of
the other live nodes, so members of a node that crashed vanish within
`node_ttl`. With `presence.events`, joins and leaves are gathered for
`presence.interval` and sent as one `presence_diff` per room: a room of 5,000
members that all reconnect costs one message per interval, not 5,000. The
members of a node that died leave as events too: the surviving node that reaps
them (`PresenceStore.watch_departures`) reports their leaves, within
`node_ttl + node_ttl / 3 + interval` of the dead node's last beat, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import errors, protocol
from ..auth import claims_of, user_id_of
from ..config import PresenceSettings, Settings
from ..metrics import Metrics
from ..rooms import RoomPatterns
from ..supervision import Supervisor
from .base import PresenceError, PresenceStore
from .memory import MemoryPresenceStore

__all__ = ["Member", "Presence", "PresenceError", "PresenceStore", "Publish", "make_presence_store"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[int]]
"""Send an encoded message to a room's members on every node (the router's route, without history:
presence events are not publications)."""


class Member(Protocol):
    """What presence needs of a client: its id and identity."""

    @property
    def id(self) -> str: ...

    @property
    def identity(self) -> object: ...


class Presence:
    """Members of presence rooms, presence answers and the batched `presence_diff` events."""

    def __init__(self, settings: PresenceSettings, store: PresenceStore) -> None:
        self.rooms = RoomPatterns(settings.rooms)
        self._settings = settings
        self._store = store
        self._members: dict[str, dict[str, dict[str, Any]]] = {}  # room -> local client id -> member
        self._joins: dict[str, dict[str, dict[str, Any]]] = {}  # room -> client id -> member, since the last diff
        self._leaves: dict[str, dict[str, dict[str, Any]]] = {}
        self._changed = asyncio.Event()
        store.watch_departures(self._departed, self._revived)

    def describe(self, conn: Member) -> dict[str, Any]:
        """A member as others see it: client id, and user id and the chosen claims when authenticated."""
        member: dict[str, Any] = {"client_id": conn.id}
        user_id = user_id_of(conn.identity)
        if user_id is not None:
            member["user_id"] = user_id
        if self._settings.claims and conn.identity is not None:
            claims = claims_of(conn.identity)
            chosen = {name: claims[name] for name in self._settings.claims if name in claims}
            if chosen:
                member["claims"] = chosen
        return member

    def joined(self, conn: Member, room: str) -> None:
        member = self.describe(conn)
        self._members.setdefault(room, {})[conn.id] = member
        self._store.join(room, conn.id, protocol.dumps(member))
        if self._settings.events and self._leaves.get(room, {}).pop(conn.id, None) is None:
            self._joins.setdefault(room, {})[conn.id] = member  # (left and came back: no change to report)
            self._changed.set()

    def left(self, conn: Member, room: str) -> None:
        members = self._members.get(room)
        member = members.pop(conn.id, None) if members is not None else None
        if members is not None and not members:
            del self._members[room]
        if member is None:
            return
        self._store.leave(room, conn.id)
        if self._settings.events and self._joins.get(room, {}).pop(conn.id, None) is None:
            self._leaves.setdefault(room, {})[conn.id] = member  # (joined and left: no change to report)
            self._changed.set()

    def _departed(self, room: str, member: bytes) -> None:
        """A member of a dead node, reaped by this node: its leave goes out with the next diff."""
        if not self._settings.events:
            return
        try:
            described = protocol.loads(member)
            client_id = described["client_id"]
        except Exception:  # noqa: BLE001 - garbled in Redis: nothing to report it as
            log.warning("presence: a reaped member of room %r is not a member's JSON; no leave sent", room)
            return
        if self._joins.get(room, {}).pop(client_id, None) is None:
            self._leaves.setdefault(room, {})[client_id] = described
        self._changed.set()

    def _revived(self) -> None:
        """Other nodes took this node for dead and reported its members' leaves: they join again."""
        if not self._settings.events:
            return
        for room, members in self._members.items():
            for client_id, member in members.items():
                if self._leaves.get(room, {}).pop(client_id, None) is None:
                    self._joins.setdefault(room, {})[client_id] = member
        self._changed.set()

    async def members(self, room: str) -> list[bytes]:
        """Every member of `room`, encoded: this node's, then the other nodes' (PresenceError if unreachable)."""
        local = [protocol.dumps(member) for member in self._members.get(room, {}).values()]
        return local + await self._store.members(room)

    async def run(self, publish: Publish) -> None:
        """Send the gathered joins and leaves every `interval` while there are any, through `publish`."""
        while True:
            await self._changed.wait()
            await asyncio.sleep(self._settings.interval)  # gather one interval's worth
            self._changed.clear()
            joins, self._joins = self._joins, {}
            leaves, self._leaves = self._leaves, {}
            for room in joins.keys() | leaves.keys():
                joined, left = list(joins.get(room, {}).values()), list(leaves.get(room, {}).values())
                if joined or left:
                    await self._announce(publish, room, joined, left)

    async def _announce(self, publish: Publish, room: str, joins: list[Any], leaves: list[Any]) -> None:
        """Send `room`'s `presence_diff` to its members on every node: one message, or, when it would list more
        than `presence.max_answer_bytes` of members or be too large for a client (`message is too large`), its
        halves, each the same way. A single member too large even alone is logged and not announced."""
        message = protocol.encode(protocol.PRESENCE_DIFF, room=room, data={"joins": joins, "leaves": leaves})
        several = len(joins) + len(leaves) > 1
        if several and len(message) > self._settings.max_answer_bytes:
            await self._announce_halves(publish, room, joins, leaves)
            return
        try:
            await publish(room, message)
        except protocol.ClientError as err:
            if err.kind is not errors.MESSAGE_TOO_LARGE:
                raise
            if several:
                await self._announce_halves(publish, room, joins, leaves)
            else:
                log.warning("presence: a member of room %r is too large to announce (%s); not announced", room, err)

    async def _announce_halves(self, publish: Publish, room: str, joins: list[Any], leaves: list[Any]) -> None:
        """`_announce` of the first half of the members (joins first), then of the rest: two or more, each
        half has at least one."""
        half = (len(joins) + len(leaves)) // 2
        if half <= len(joins):
            await self._announce(publish, room, joins[:half], [])
            await self._announce(publish, room, joins[half:], leaves)
        else:
            cut = half - len(joins)
            await self._announce(publish, room, joins, leaves[:cut])
            await self._announce(publish, room, [], leaves[cut:])


def make_presence_store(settings: Settings, metrics: Metrics, node_id: bytes, supervisor: Supervisor) -> PresenceStore:
    """The presence store `broker.url` asks for: in this process when empty, Redis otherwise."""
    if not settings.broker.url:
        return MemoryPresenceStore()
    from .redis import RedisPresenceStore  # only Redis users need redis-py

    return RedisPresenceStore(settings.broker, metrics, node_id, settings.presence.node_ttl, supervisor)
