"""The default broker: one process, so there are no other nodes to relay to; history is kept in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import HistorySettings
from ..history import MemoryHistory, Position, Replay
from .base import Receive


class MemoryBroker:
    """Relays nowhere (there is no other node) and keeps history in this process."""

    state = "ok"

    def __init__(self, history: HistorySettings | None = None) -> None:
        self.history = MemoryHistory(history or HistorySettings())

    async def start(self, receive: Receive, resynced: Callable[[], None] = lambda: None) -> None:
        pass  # nothing ever arrives from another node

    def relay(self, room: str | None, message: bytes) -> None:
        pass

    def append(self, room: str, head: bytes) -> asyncio.Future[bytes]:
        stamped = asyncio.get_running_loop().create_future()
        stamped.set_result(self.history.append(room, head))  # done at once: the router delivers without waiting
        return stamped

    def room_added(self, room: str) -> None:
        pass  # every room is local

    def room_removed(self, room: str) -> None:
        pass

    async def wait_receiving(self, room: str) -> None:
        pass

    async def history_position(self, room: str) -> Position:
        return self.history.position(room)

    async def history_replay(self, room: str, since: Position, *, max_bytes: int = 0) -> Replay:
        return self.history.replay(room, since, max_bytes=max_bytes)

    async def history_last(
        self, room: str, limit: int, *, before: int = 0, max_bytes: int = 0
    ) -> tuple[Position, list[bytes]]:
        return self.history.last(room, limit, before=before, max_bytes=max_bytes)

    async def close(self) -> None:
        pass
