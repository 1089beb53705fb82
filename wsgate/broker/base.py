"""What every broker provides. The hub holds a broker; it does not inherit from one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..history import Position, Replay

Deliver = Callable[[str | None, bytes], int]
"""Hand an encoded frame to this node's local members of a room (None: every client)."""


class BrokerError(Exception):
    """The broker cannot be used (bad URL, server unreachable at start-up); one line."""


class Broker(Protocol):
    """Carries encoded frames between gateway nodes.

    `publish` delivers to this node's clients at once and relays the same bytes to
    every other node, which delivers them without decoding: each client gets each
    frame exactly once, in the order its publisher sent them.
    """

    @property
    def state(self) -> str:
        """`ok`, or `degraded` while other nodes cannot be reached (local delivery goes on)."""

    async def start(self, deliver: Deliver) -> None:
        """Connect; frames from other nodes are passed to `deliver` from now on. Raises BrokerError."""

    async def publish(self, room: str | None, frame: bytes) -> int:
        """Deliver `frame` to `room` (None: everyone) here and on every other node; returns local recipients."""

    async def publish_history(self, room: str, head: bytes) -> None:
        """Publish to a room that keeps history: stamp the room's next offset and epoch into `head`
        (an encoded message without its closing brace), keep it, deliver it everywhere in offset order."""

    async def history_position(self, room: str) -> Position:
        """The room's current offset and epoch (created, at offset 0, if the room has none yet)."""

    async def history_replay(self, room: str, since: Position) -> Replay:
        """The messages after `since`, read together with the position they lead up to."""

    async def history_last(self, room: str, limit: int) -> tuple[Position, list[bytes]]:
        """The position and the last `limit` kept messages of a room, oldest first."""

    def presence_join(self, room: str, client_id: str, member: bytes) -> None:
        """A local client joined a room with presence (`member`: its encoded description); without waiting."""

    def presence_leave(self, room: str, client_id: str) -> None:
        """A local client left a room with presence; without waiting."""

    async def presence_members(self, room: str) -> list[bytes]:
        """The encoded members of `room` on the other nodes (the local ones are the hub's)."""

    async def share_stats(self, stats: bytes) -> list[bytes]:
        """Publish this node's dashboard figures; returns every live node's (this one's included)."""

    def room_added(self, room: str) -> None:
        """This node's first member joined `room`: start receiving it from other nodes."""

    def room_removed(self, room: str) -> None:
        """This node's last member left `room`: stop receiving it."""

    async def wait_receiving(self, room: str) -> None:
        """Return once frames for `room` from other nodes arrive here (so `subscribed` means it)."""

    async def close(self) -> None:
        """Disconnect and release resources."""
