"""What every broker provides. The hub holds a broker; it does not inherit from one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Deliver = Callable[[str | None, bytes], int]
"""Hand an encoded frame to this node's local members of a room (None: every client)."""


class Broker(Protocol):
    """Carries encoded frames to every node, this one included.

    Frames are relayed as bytes: a receiving node delivers them without decoding.
    """

    async def start(self, deliver: Deliver) -> None:
        """Connect; from now on frames for this node are passed to `deliver`."""

    async def publish(self, room: str | None, frame: bytes) -> int:
        """Send `frame` to `room` (None: broadcast) on every node; returns local recipients."""

    async def close(self) -> None:
        """Disconnect and release resources."""
