"""What every broker provides. The hub holds a broker; it does not inherit from one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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

    def room_added(self, room: str) -> None:
        """This node's first member joined `room`: start receiving it from other nodes."""

    def room_removed(self, room: str) -> None:
        """This node's last member left `room`: stop receiving it."""

    async def wait_receiving(self, room: str) -> None:
        """Return once frames for `room` from other nodes arrive here (so `subscribed` means it)."""

    async def close(self) -> None:
        """Disconnect and release resources."""
