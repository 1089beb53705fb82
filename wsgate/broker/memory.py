"""The default broker: one process, so there are no other nodes and publishing is local delivery."""

from __future__ import annotations

from .base import Deliver


class MemoryBroker:
    """Delivers in-process, synchronously, so per-publisher order is kept trivially."""

    state = "ok"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, room: str | None, frame: bytes) -> int:
        if self._deliver is None:
            raise RuntimeError("broker used before start()")
        return self._deliver(room, frame)

    def room_added(self, room: str) -> None:
        pass  # every room is local

    def room_removed(self, room: str) -> None:
        pass

    async def wait_receiving(self, room: str) -> None:
        pass

    async def close(self) -> None:
        self._deliver = None
