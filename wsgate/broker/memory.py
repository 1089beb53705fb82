"""The default broker: one process, so there are no other nodes and publishing is local delivery."""

from __future__ import annotations

from ..config import HistorySettings
from ..history import MemoryHistory, Position, Replay
from .base import Deliver


class MemoryBroker:
    """Delivers in-process, synchronously, so per-publisher order is kept trivially; keeps history in memory."""

    state = "ok"

    def __init__(self, history: HistorySettings | None = None) -> None:
        self._deliver: Deliver | None = None
        self.history = MemoryHistory(history or HistorySettings())

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, room: str | None, frame: bytes) -> int:
        if self._deliver is None:
            raise RuntimeError("broker used before start()")
        return self._deliver(room, frame)

    async def publish_history(self, room: str, head: bytes) -> None:
        await self.publish(room, self.history.append(room, head))

    async def history_position(self, room: str) -> Position:
        return self.history.position(room)

    async def history_replay(self, room: str, since: Position) -> Replay:
        return self.history.replay(room, since)

    async def history_last(self, room: str, limit: int) -> tuple[Position, list[bytes]]:
        return self.history.last(room, limit)

    def presence_join(self, room: str, client_id: str, member: bytes) -> None:
        pass  # one process: the hub knows every member

    def presence_leave(self, room: str, client_id: str) -> None:
        pass

    async def presence_members(self, room: str) -> list[bytes]:
        return []

    async def share_stats(self, stats: bytes) -> list[bytes]:
        return [stats]  # the only node

    def room_added(self, room: str) -> None:
        pass  # every room is local

    def room_removed(self, room: str) -> None:
        pass

    async def wait_receiving(self, room: str) -> None:
        pass

    async def close(self) -> None:
        self._deliver = None
