"""The one route every message takes, whoever sends it and whatever the room.

    encoded once ─► (room keeps history) broker.append: offset and epoch stamped, kept, relayed
                 └► (any other room, broadcasts) broker.relay, queued in the same order
                 ─► local fan-out (hub.deliver), in the order messages were published on this node

A client's publish and broadcast, `gateway.publish`/`broadcast`, the HTTP API,
the dashboard and presence events all come here. Messages from other nodes
arrive through `receive` and go to the same fan-out. Because the broker sends
what it is handed in order and local delivery follows publish order too, one
publisher's messages reach every subscriber in the order sent, on every node,
whatever the mix of plain rooms, rooms with history and broadcasts
(python-socketio `AsyncPubSubManager.emit`: local first, the backend only transports).

A message for a room with history is delivered only once it has its offset. When
it cannot be kept (Redis away), it is delivered nowhere and the publisher gets
BrokerError: a resuming client never meets a silent gap.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .broker import Broker
from .hub import Hub
from .metrics import Metrics
from .rooms import RoomPatterns


class _Waiting:
    """A message published here whose local delivery waits for an earlier message's offset (or its own)."""

    __slots__ = ("room", "stamped", "delivered")

    def __init__(self, room: str | None, stamped: asyncio.Future[bytes], delivered: asyncio.Future[int]) -> None:
        self.room = room
        self.stamped = stamped
        self.delivered = delivered


class Router:
    """Publishes messages (local fan-out plus relay, with history where the room keeps it) and receives relayed ones."""

    def __init__(self, hub: Hub, broker: Broker, history_rooms: RoomPatterns, metrics: Metrics) -> None:
        self._hub = hub
        self._broker = broker
        self._history_rooms = history_rooms
        self._metrics = metrics
        self._waiting: deque[_Waiting] = deque()  # in publish order

    def keeps_history(self, room: str | None) -> bool:
        """Whether messages to `room` get offsets (`history.rooms`)."""
        return self._history_rooms.match(room)

    async def publish(self, room: str | None, message: bytes, *, history: bool | None = None) -> int:
        """Send `message` (one encoded JSON object) to `room`'s members on every node (None: every client).

        `history`: keep it in the room's history; by default, when `history.rooms` matches the room
        (presence events pass False: they are not publications). Returns how many local clients it was
        queued for. Raises BrokerError when the room keeps history and the message cannot be kept.
        """
        loop = asyncio.get_running_loop()
        if room is not None and (self._history_rooms.match(room) if history is None else history):
            stamped = self._broker.append(room, message[:-1])
            if not self._waiting and stamped.done():  # kept at once (the memory broker): nothing to wait for
                return self._deliver(room, stamped.result())
        else:
            self._broker.relay(room, message)
            if not self._waiting:  # the common case: no offset pending, deliver now
                return self._deliver(room, message)
            stamped = loop.create_future()
            stamped.set_result(message)
        waiting = _Waiting(room, stamped, loop.create_future())
        self._waiting.append(waiting)
        if stamped.done():
            self._deliver_ready()
        else:
            stamped.add_done_callback(self._deliver_ready)
        return await waiting.delivered

    def receive(self, room: str | None, message: bytes) -> None:
        """A message another node published (the broker's callback): deliver it to this node's members."""
        self._deliver(room, message)

    def _deliver_ready(self, _: object = None) -> None:
        """Deliver, in publish order, every waiting message whose offset (and every earlier one's) is known."""
        waiting = self._waiting
        while waiting and waiting[0].stamped.done():
            entry = waiting.popleft()
            error = entry.stamped.exception()
            if error is not None:  # not kept: delivered nowhere, the publisher is told
                if not entry.delivered.done():
                    entry.delivered.set_exception(error)
                continue
            count = self._deliver(entry.room, entry.stamped.result())
            if not entry.delivered.done():  # (the publisher may have gone: the message still goes out)
                entry.delivered.set_result(count)

    def _deliver(self, room: str | None, message: bytes) -> int:
        count = self._hub.deliver(room, message)
        self._metrics.messages_delivered(count)
        return count
