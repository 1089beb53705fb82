"""The local room index: which connections exist, which rooms they are in, and fan-out.

Fan-out takes a message encoded once, builds its frame once, and appends the
frame to each member's outbox: no await, no encode, no metrics call per
recipient. Nothing here awaits, so iterating a room while delivering is safe.

The hub drives the holds and fences of recovering members (`wsgate.ordering`
holds the rules): a held member's messages go to its `Held` buffer, bounded
here (HOLD_FACTOR outboxes' worth, and `send_queue_bytes`: past that it is
closed as a slow consumer); a fenced member is skipped for what it already read
(`Ordering.fenced_off`, asked only when the room has fences).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Callable

from . import errors
from .auth import user_id_of
from .config import LimitsSettings, ShutdownSettings
from .connection import FAULT_LOG_INTERVAL, Connection, State
from .errors import ClientError, ClientGone
from .history import Position
from .metrics import Metrics
from .ordering import Held, Ordering
from .overhead import FRAME_HEAD_BYTES
from .presence import Presence
from .supervision import Throttled
from .wire import text_frame

log = logging.getLogger(__name__)

HOLD_FACTOR = 10  # a recovering client's live messages wait while its history is read: up to ten outboxes' worth
RESTART_BATCH_INTERVAL = 0.1  # seconds between batches of clients closed by a restart drain
DRAIN_GRACE = 0.5  # seconds the drain waits past its budget for aborted clients' readers to finish


RoomInterest = Callable[[str], None]
"""Told a room's name when it gains its first or loses its last local member (the broker subscribes or not)."""


class Hub:
    """Connections and rooms of this process, with the spec's connection limits, and the shutdown drain."""

    def __init__(
        self,
        limits: LimitsSettings,
        metrics: Metrics,
        *,
        send_queue_size: int,
        room_added: RoomInterest,
        room_removed: RoomInterest,
        presence: Presence | None = None,
        send_queue_bytes: int = 0,
        replay_bytes: int = 0,
    ) -> None:
        """`send_queue_bytes`: what may wait for one client (0: no bound); a message whose frame is larger is
        delivered to nobody (`deliver`). `replay_bytes`: the most a recovery's replay holds, framed
        (`history.max_answer_bytes` and a frame head per kept message): what is held for a recovering client
        leaves room for it (`_hold`), as both go to the client together."""
        self._limits = limits
        self._metrics = metrics
        # the longest message whose frame fits (its head at most FRAME_HEAD_BYTES)
        self._message_limit = send_queue_bytes - FRAME_HEAD_BYTES if send_queue_bytes else sys.maxsize
        self._replay_bytes = replay_bytes
        self._too_large = Throttled(log, FAULT_LOG_INTERVAL)
        self._hold_limit = HOLD_FACTOR * send_queue_size  # messages held for one recovering client
        self._room_added = room_added
        self._room_removed = room_removed
        # Told of joins and leaves in presence rooms; rooms without presence cost nothing on join and leave.
        self._presence = presence if presence is not None and presence.rooms else None
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, set[Connection]] = {}  # user id -> its connections here (an entry per user with one)
        self._user_of: dict[Connection, str] = {}  # connection -> the user id it is indexed under
        self.rooms: dict[str, set[Connection]] = {}
        # The delivery order of rooms with history (the router drives its sequences); its holds and fences
        # are read here on every delivery: the same dicts, never rebound.
        self.ordering: Ordering[Connection, asyncio.Future[int]] = Ordering(self.rooms)
        self.holding: dict[str, dict[Connection, Held]] = self.ordering.holding  # room -> recovering -> held
        self.fences: dict[str, dict[Connection, Position]] = self.ordering.fences  # room -> recovered -> read
        self.addresses: dict[str, int] = {}  # connections (and upgrades under way) per client address
        self.claimed: dict[object, str] = {}  # the server's protocol object of each counted socket -> its address
        self.draining = False

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

    @property
    def full(self) -> bool:
        """Whether `max_connections` is reached: `admit` would refuse."""
        limit = self._limits.max_connections
        return bool(limit) and len(self.connections) >= limit

    def admit(self, conn: Connection) -> bool:
        """Add a new connection; False when `max_connections` is reached."""
        if self.full:
            return False
        self.connections[conn.id] = conn
        self._index_user(conn)
        return True

    def reindex_user(self, conn: Connection) -> None:
        """`conn` has a new identity (`Gateway.reauthenticate`): file it under its user id now (`users`)."""
        if self.connections.get(conn.id) is conn:
            self._unindex_user(conn)
            self._index_user(conn)

    def _index_user(self, conn: Connection) -> None:
        user_id = user_id_of(conn.identity)
        if user_id is not None:
            self.users.setdefault(user_id, set()).add(conn)
            self._user_of[conn] = user_id

    def _unindex_user(self, conn: Connection) -> None:
        user_id = self._user_of.pop(conn, None)
        if user_id is not None:
            same_user = self.users[user_id]
            same_user.discard(conn)
            if not same_user:
                del self.users[user_id]  # an entry exists while the user has connections here

    def remove(self, conn: Connection) -> None:
        """Forget a connection and take it out of every room it was in."""
        if self.connections.pop(conn.id, None) is None:
            return
        self._unindex_user(conn)
        for room in list(conn.rooms):
            self._leave(conn, room)

    def join(self, conn: Connection, room: str, *, hold: bool = False, replay: bool = False) -> int:
        """Add `conn` to `room` (joining twice is harmless); returns the room's member count.

        Raises ClientGone when `conn` is no longer open and admitted (every caller may have awaited
        since it last looked), ClientError at the room limits.

        `hold`: the client is reading the room's position or history. Messages for it are held back, not
        sent, until `release` hands them over (so replayed and live messages can be put in order). `replay`:
        a replay will go out with them (a `subscribe` with `since`): they leave room for it (`replay_bytes`).
        """
        if conn.state is not State.OPEN or self.connections.get(conn.id) is not conn:
            raise ClientGone(conn.id)  # a handler awaited (a hook, Redis) and the client went meanwhile
        if room in conn.rooms:
            return self._count(room)
        limit = self._limits.max_rooms_per_client
        if limit and len(conn.rooms) >= limit:
            raise ClientError(errors.TOO_MANY_ROOMS, f"a client may be in at most {limit} rooms")
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            self._room_added(room)
        limit = self._limits.max_connections_per_room
        if limit and self._count(room) >= limit:
            raise ClientError(errors.ROOM_FULL)
        if hold:
            self.ordering.hold(room, conn, self._replay_bytes if replay else 0)
        else:
            members.add(conn)
        conn.rooms.add(room)
        if self._presence is not None and self._presence.rooms.match(room):
            self._presence.joined(conn, room)
        return self._count(room)

    def release(self, conn: Connection, room: str, read_up_to: Position | None = None) -> list[bytes]:
        """End a `hold`: the client becomes an ordinary member; returns what was held for it that its read did
        not include, in order (`Ordering.release`).

        `read_up_to`: the history position the client was sent up to (None: everything held). Messages up to
        it may still be on their way from Redis (pub/sub can trail the script that read the history): they
        are fenced off for this client until a newer one passes.
        """
        stays = room in conn.rooms
        if stays:
            self.rooms[room].add(conn)
        return self.ordering.release(room, conn, read_up_to, stays)

    def _count(self, room: str) -> int:
        held = self.holding.get(room)
        return len(self.rooms.get(room, ())) + (len(held) if held else 0)

    def leave(self, conn: Connection, room: str) -> None:
        """Take `conn` out of `room`; ClientError when it was not a member."""
        if room not in conn.rooms:
            raise ClientError(errors.NOT_SUBSCRIBED)
        self._leave(conn, room)

    def _leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        if self._presence is not None and self._presence.rooms.match(room):
            self._presence.left(conn, room)
        if self.holding or self.fences:
            self.ordering.left(room, conn)
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(conn)
        if not members and room not in self.holding:
            del self.rooms[room]  # a room exists while it has members
            self._room_removed(room)

    def deliver(self, room: str | None, message: bytes, skip: Connection | None = None) -> int:
        """Queue an encoded message for every local member of `room` (everyone when None); returns how many took it.

        The WebSocket frame is built once here; each member gets the same bytes. `skip`: one connection left
        out (a publish's `"skip_self": true`), handled by a branch of its own, so a delivery that skips nobody
        does no per-recipient work for it.
        """
        if len(message) > self._message_limit:
            return self._undeliverable(room, len(message))
        if skip is not None:
            return self._deliver_skipping(room, message, skip)
        if self.holding and room is not None and (held := self.holding.get(room)):
            self._hold(held, message)
        targets = self.connections.values() if room is None else self.rooms.get(room, ())
        if not targets:
            return 0
        frame = text_frame(message)
        if self.fences and room is not None and (fenced := self.fences.get(room)):
            skip_fenced = self.ordering.fenced_off(room, fenced, message)
            if skip_fenced:
                return sum([conn.put(frame) for conn in targets if conn not in skip_fenced])
        return sum([conn.put(frame) for conn in targets])  # a list comprehension: the fastest loop here

    def _deliver_skipping(self, room: str | None, message: bytes, skip: Connection) -> int:
        """`deliver` to every member but `skip` (which is not held for either, when it is recovering)."""
        if self.holding and room is not None and (held := self.holding.get(room)):
            self._hold({conn: buffer for conn, buffer in held.items() if conn is not skip}, message)
        targets = self.connections.values() if room is None else self.rooms.get(room, ())
        if not targets:
            return 0
        frame = text_frame(message)
        left_out = {skip}
        if self.fences and room is not None and (fenced := self.fences.get(room)):
            left_out |= self.ordering.fenced_off(room, fenced, message)
        return sum([conn.put(frame) for conn in targets if conn not in left_out])

    def _undeliverable(self, room: str | None, size: int) -> int:
        """A message of `size` bytes whose frame is over `send_queue_bytes`, which no client could be sent (nor
        hold while its history is read): delivered to nobody, counted (`message_too_large`) and logged (at most
        once per FAULT_LOG_INTERVAL), rather than closing every member as a slow consumer. This node's publishers
        are refused such a message (`Router.begin`); it comes from a node or a RedisPublisher that allows more
        (`websocket.send_queue_bytes` differs between nodes)."""
        self._metrics.error(errors.MESSAGE_TOO_LARGE.label)
        self._too_large(
            "a message of %d bytes for %s is over websocket.send_queue_bytes (%d): delivered to nobody here; "
            "do the nodes share one send_queue_bytes?",
            size,
            "every client" if room is None else f"room {room!r}",
            self._message_limit + FRAME_HEAD_BYTES,
        )
        return 0

    def _hold(self, held: dict[Connection, Held], message: bytes) -> None:
        """Hold `message` for each recovering client; one that would hold more than ten outboxes' worth, or more
        bytes than `send_queue_bytes` allows with what is queued for it and the replay to come (`replay_bytes`;
        the held messages framed), is closed as a slow consumer."""
        for conn, messages in held.items():
            # the read (bounded by broker.connect_timeout) is too slow, or the room too busy for this client
            framed = messages.size + len(message) + FRAME_HEAD_BYTES * (len(messages) + 1)
            if len(messages) >= self._hold_limit or not conn.fits(framed + messages.reserve):
                if conn.state is State.OPEN:
                    self._metrics.error(errors.SLOW_CONSUMER.label)
                    log.warning(
                        "client %s: %d messages (%d bytes) arrived while its history was read; closing",
                        conn.id,
                        len(messages),
                        messages.size,
                        extra={"client_id": conn.id},
                    )
                conn.drop(errors.SLOW_CONSUMER)
            else:
                messages.append(message)
                messages.size += len(message)

    async def drain(self, settings: ShutdownSettings, timeout: float) -> None:
        """Refuse new clients, close every client and wait (about `timeout`) until all are gone.

        Each client first gets what is already queued for it, then the close frame, within what is
        left of `timeout` (`Connection.close_gracefully`). `shutdown.mode = "drain"` closes everyone at once
        with 1001. `"restart"` closes with 1012
        in shuffled batches spread over `shutdown.window`, so reconnecting clients arrive at the
        other nodes gradually, not as one storm. Only the first call does anything: the CLI drains
        before aiohttp's own shutdown calls it again.
        """
        if self.draining:
            return
        self.draining = True
        restart = settings.mode == "restart"
        reason = errors.SERVICE_RESTART if restart else errors.SHUTTING_DOWN
        clients = list(self.connections.values())
        random.shuffle(clients)
        batches = max(1, min(len(clients), round(settings.window / RESTART_BATCH_INTERVAL))) if restart else 1
        if clients:
            log.info("draining: closing %d clients (%s, %d batches)", len(clients), settings.mode, batches)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout + DRAIN_GRACE):
                size = max(1, -(-len(clients) // batches))
                for start in range(0, len(clients), size):
                    if start:
                        await asyncio.sleep(settings.window / batches)
                    for conn in clients[start : start + size]:  # what is queued first, then the close frame
                        conn.close_gracefully(reason, max(0.0, deadline - loop.time()))
                for conn in clients:
                    await conn.closed.wait()
        except TimeoutError:
            still_open = sum(not conn.closed.is_set() for conn in clients)
            log.warning("draining: %d clients still open after %ss", still_open, timeout)
