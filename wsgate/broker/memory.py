"""The default broker: one process, so there are no other nodes to relay to; history is kept in memory."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..config import HistorySettings
from ..history import NO_HISTORY, Position, Replay, new_epoch, newest_within, replay_from, stamp, stamp_of
from ..idempotency import WINDOW, AlreadyPublished, First, RecentKeys
from .base import Commanded, Receive


class _Room:
    __slots__ = ("epoch", "offset", "entries", "last_used")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.entries: deque[tuple[int, bytes]] = deque(maxlen=size)  # (offset, payload)
        self.last_used = now


class MemoryHistory:
    """History kept in this process (the memory broker's): the last `size` messages per room.

    A room's state (epoch, offset, messages) exists from its first message on (reading creates
    nothing) and is forgotten `ttl` after its last message; the next message starts a new epoch.
    Expired rooms are swept every `ttl / 4`, and at most `max_rooms` are kept (the least recently
    published to go first): state that clients' choice of room names creates is bounded.
    """

    def __init__(self, settings: HistorySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = settings.size
        self._ttl = settings.ttl
        self._max_rooms = settings.max_rooms
        self._clock = clock
        self._rooms: dict[str, _Room] = {}  # least recently published to first
        self._next_sweep = clock() + settings.ttl / 4

    def _existing(self, room: str) -> _Room | None:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        state = self._rooms.get(room)
        return state if state is not None and now - state.last_used <= self._ttl else None

    def _room(self, room: str) -> _Room:
        state = self._existing(room)
        if state is None:
            self._rooms.pop(room, None)  # (expired)
            while len(self._rooms) >= self._max_rooms:
                del self._rooms[next(iter(self._rooms))]
            state = self._rooms[room] = _Room(self._size, self._clock())
        else:
            self._rooms[room] = self._rooms.pop(room)  # now the most recently used
        return state

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._ttl / 4
        expired = [name for name, state in self._rooms.items() if now - state.last_used > self._ttl]
        for name in expired:
            del self._rooms[name]

    def append(self, room: str, head: bytes) -> bytes:
        """Give the next offset to a message (`head` as for `stamp`), keep it, and return its bytes."""
        state = self._room(room)
        state.offset += 1
        state.last_used = self._clock()
        payload = stamp(head, state.offset, state.epoch)
        state.entries.append((state.offset, payload))
        return payload

    def position(self, room: str) -> Position:
        state = self._existing(room)
        return Position(state.offset, state.epoch) if state is not None else NO_HISTORY

    def replay(self, room: str, since: Position, *, max_bytes: int = 0) -> Replay:
        """What a client at `since` missed (`replay_from`); `recovered=False` past `max_bytes` (0: no bound)."""
        state = self._existing(room)
        if state is None:
            return replay_from(NO_HISTORY, [], since)
        position = Position(state.offset, state.epoch)
        after = [e for e in state.entries if e[0] > since.offset]
        if max_bytes and sum(len(payload) for _, payload in after) > max_bytes:
            return Replay(position, recovered=False)
        return replay_from(position, after, since)

    def last(self, room: str, limit: int, *, before: int = 0, max_bytes: int = 0) -> tuple[Position, list[bytes]]:
        """The last `limit` messages below offset `before` (0: any) that fit in `max_bytes` (`newest_within`);
        a room with no history yet is not created (epoch "")."""
        state = self._existing(room)
        if state is None:
            return NO_HISTORY, []
        newest_first = (payload for offset, payload in reversed(state.entries) if not before or offset < before)
        return Position(state.offset, state.epoch), newest_within(newest_first, limit, max_bytes)

    def __len__(self) -> int:
        return len(self._rooms)


class MemoryBroker:
    """Relays nowhere (there is no other node) and keeps history in this process."""

    state = "ok"

    def __init__(self, history: HistorySettings | None = None, *, idempotency_window: float = WINDOW) -> None:
        self.history = MemoryHistory(history or HistorySettings())
        self.keys = RecentKeys(idempotency_window)
        """Idempotency claims of the last window (bounded: `RecentKeys`)."""
        self._commanded: Commanded = lambda _: None

    async def start(
        self, receive: Receive, resynced: Callable[[], None] = lambda: None, commanded: Commanded = lambda _: None
    ) -> None:
        self._commanded = commanded  # (nothing else ever arrives: there is no other node)

    async def command(self, payload: bytes) -> int:
        self._commanded(payload)  # back to this node, as the control channel would: in the order sent
        return 0  # there is no other node

    def relay(self, room: str | None, message: bytes) -> None:
        pass

    def append(self, room: str, head: bytes, claim: bytes | None = None) -> asyncio.Future[bytes]:
        stamped: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        first = None if claim is None else self.keys.first(claim)
        if first is not None:
            stamped.set_exception(AlreadyPublished(first))
            return stamped
        message = self.history.append(room, head)
        if claim is not None:
            found = stamp_of(message)
            self.keys.remember(claim, First(None if found is None else Position(*found)))
        stamped.set_result(message)  # done at once: the router delivers without waiting
        return stamped

    def relay_once(self, room: str, message: bytes, claim: bytes) -> asyncio.Future[bytes]:
        sent: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        first = self.keys.first(claim)
        if first is not None:
            sent.set_exception(AlreadyPublished(first))
        else:
            self.keys.remember(claim, First(None))
            sent.set_result(message)
        return sent

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
