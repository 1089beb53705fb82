"""Presence in one process: the tracker knows every member, so the store has nothing to add."""

from __future__ import annotations

from collections.abc import Callable


class MemoryPresenceStore:
    """No other nodes: no members elsewhere, and this node's figures are all there are."""

    async def start(self) -> None:
        pass

    def watch_departures(self, departed: Callable[[str, bytes], None], revived: Callable[[], None]) -> None:
        pass  # no other node can die

    def join(self, room: str, client_id: str, member: bytes) -> None:
        pass

    def leave(self, room: str, client_id: str) -> None:
        pass

    async def members(self, room: str) -> list[bytes]:
        return []

    async def share_figures(self, figures: bytes, *, others: bool = True) -> list[bytes]:
        return [figures] if others else []

    async def close(self) -> None:
        pass
