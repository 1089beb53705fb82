"""The local room index: which connections exist, which rooms they are in, and fan-out.

Fan-out takes bytes encoded once and appends them to each member's outbox: no
await, no encode, no metrics call per recipient. Nothing here awaits, so
iterating a room while delivering is safe.
"""

from __future__ import annotations

from .broker import Broker
from .config import LimitsSettings
from .connection import Connection
from . import protocol
from .protocol import NOT_SUBSCRIBED, ROOM_FULL, TOO_MANY_ROOMS, ClientError


class Hub:
    """Connections and rooms of this process, with the spec's connection limits."""

    def __init__(self, limits: LimitsSettings, broker: Broker) -> None:
        self._limits = limits
        self._broker = broker  # told when a room gains its first or loses its last local member
        self.connections: dict[str, Connection] = {}
        self.rooms: dict[str, set[Connection]] = {}
        self.addresses: dict[str, int] = {}  # connections (and upgrades under way) per client address

    def claim_address(self, address: str) -> bool:
        """Count one more connection from `address`; False (nothing counted) at `max_connections_per_ip`."""
        count = self.addresses.get(address, 0)
        limit = self._limits.max_connections_per_ip
        if limit and count >= limit:
            return False
        self.addresses[address] = count + 1
        return True

    def release_address(self, address: str) -> None:
        """Undo one `claim_address` (the map only holds addresses that have connections)."""
        count = self.addresses.pop(address, 0) - 1
        if count > 0:
            self.addresses[address] = count

    def admit(self, conn: Connection) -> bool:
        """Add a new connection; False when `max_connections` is reached."""
        limit = self._limits.max_connections
        if limit and len(self.connections) >= limit:
            return False
        self.connections[conn.id] = conn
        return True

    def remove(self, conn: Connection) -> None:
        """Forget a connection and take it out of every room it was in."""
        if self.connections.pop(conn.id, None) is None:
            return
        for room in list(conn.rooms):
            self._leave(conn, room)

    def join(self, conn: Connection, room: str) -> int:
        """Add `conn` to `room` (joining twice is harmless); returns the room's member count."""
        members = self.rooms.get(room)
        if members is not None and conn in members:
            return len(members)
        limit = self._limits.max_rooms_per_client
        if limit and len(conn.rooms) >= limit:
            raise ClientError(TOO_MANY_ROOMS, f"a client may be in at most {limit} rooms")
        if members is None:
            members = self.rooms[room] = set()
            self._broker.room_added(room)
        limit = self._limits.max_connections_per_room
        if limit and len(members) >= limit:
            raise ClientError(ROOM_FULL)
        members.add(conn)
        conn.rooms.add(room)
        return len(members)

    def leave(self, conn: Connection, room: str) -> None:
        """Take `conn` out of `room`; ClientError when it was not a member."""
        if room not in conn.rooms:
            raise ClientError(NOT_SUBSCRIBED)
        self._leave(conn, room)

    def _leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self.rooms[room]  # a room exists while it has members
            self._broker.room_removed(room)

    def deliver(self, room: str | None, payload: bytes) -> int:
        """Queue an encoded message for every local member of `room` (everyone when None); returns how many took it.

        The WebSocket frame is built once here; each member gets the same bytes.
        """
        targets = self.connections.values() if room is None else self.rooms.get(room, ())
        if not targets:
            return 0
        frame = protocol.frame(payload)
        return sum([conn.put(frame) for conn in targets])  # a list comprehension: the fastest loop here
