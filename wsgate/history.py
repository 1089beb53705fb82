"""Room history: offsets and epochs, which rooms keep history, and the in-memory store.

A message published to a room with history gets the room's next `offset`
(1, 2, 3, ...) and the room's `epoch`, the name of one unbroken run of
offsets: when it began (so that a later epoch sorts after an earlier one) and a
random part. When history is lost (the memory broker restarted, the history
expired, Redis lost the stream) the room starts a new epoch, and a client that
remembers an offset of the old one is told it cannot recover.

Both are stamped into the encoded message once, at publish time:
`stamp(head, offset, epoch)` closes an encoded object whose closing brace was
left off. Every node and every replay then sends the same bytes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import HistorySettings

OFFSET_FIELD = b',"offset":'


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room's history stands: the last offset given out (0: none yet) in `epoch`."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer to "what did I miss since `since`": the messages after it, in order, or recovered=False."""

    position: Position
    recovered: bool
    messages: list[bytes] = field(default_factory=list)


def stamp(head: bytes, offset: int, epoch: str) -> bytes:
    """An encoded message (`head`: its JSON without the closing brace) with `offset` and `epoch` added."""
    return b'%s,"offset":%d,"epoch":"%s"}' % (head, offset, epoch.encode())


_STAMP = re.compile(rb'(\d+),"epoch":"([0-9a-f]+)"\}')


def stamp_of(payload: bytes) -> tuple[int, str] | None:
    """The (offset, epoch) `stamp` put at the end of a payload (None: a message without one).

    Only the stamp counts: an `"offset"` key inside the message's data is not it.
    """
    start = payload.rfind(OFFSET_FIELD)
    if start < 0:
        return None
    match = _STAMP.fullmatch(payload, start + len(OFFSET_FIELD))
    return (int(match[1]), match[2].decode()) if match else None


def comes_after(payload: bytes, position: Position) -> bool:
    """Whether a payload is one a reader of the history up to `position` has not seen: it has no stamp, or
    another epoch (the history was lost and began again), or a later offset."""
    found = stamp_of(payload)
    return found is None or found[1] != position.epoch or found[0] > position.offset


def new_epoch() -> str:
    """A new epoch: when it began, in hex seconds (8 digits) and microseconds (5), then `epoch_suffix()`.
    Redis writes the same from its own clock (`PUBLISH_SCRIPT`), so one clock orders a room's epochs."""
    now = time.time_ns() // 1000
    return f"{now // 1_000_000:08x}{now % 1_000_000:05x}{epoch_suffix()}"


def epoch_suffix() -> str:
    """An epoch's random part (32 bits): two epochs begun in the same microsecond still differ."""
    return secrets.token_hex(4)


def epoch_order(epoch: str) -> tuple[int, str]:
    """Sort key of epochs, earliest first: "" (no history yet), then epochs written before they carried their
    time (12 random digits), then timed ones by the time they began."""
    return len(epoch), epoch


def later_epoch(epoch: str, than: str) -> bool:
    """Whether `epoch` began after `than` (`epoch_order`)."""
    return epoch_order(epoch) > epoch_order(than)


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


def newest_within(newest_first: Iterable[bytes], limit: int, max_bytes: int) -> list[bytes]:
    """At most `limit` payloads, oldest first, of `newest_first`: the newest whose sizes add up to at most
    `max_bytes` (0: no bound), and always the newest one, so that paging back with `before` moves on."""
    taken: list[bytes] = []
    size = 0
    for payload in newest_first:
        if len(taken) >= limit:
            break
        size += len(payload)
        if max_bytes and size > max_bytes and taken:
            break
        taken.append(payload)
    taken.reverse()
    return taken


NO_HISTORY = Position(0, "")
"""The position of a room that keeps no history yet: reading it creates nothing (epoch "")."""


def replay_from(position: Position, after: list[tuple[int, bytes]], since: Position) -> Replay:
    """What a client at `since` missed, from a room's `position` and the kept `(offset, payload)`
    entries after `since.offset`, oldest first (read together with the position).

    `since.epoch == ""`: the room had no history when the client looked. It recovers when the
    room still has none, or when its history is kept whole from offset 1 (one caveat: a history
    that began, expired and began again while the client was away longer than `history.ttl` looks
    whole too).
    """
    if since.epoch == "" and since.offset == 0:
        if position.epoch == "" or position.offset == 0:
            return Replay(position, recovered=True)
        if after and after[0][0] == 1:
            return Replay(position, recovered=True, messages=[payload for _, payload in after])
        return Replay(position, recovered=False)
    if since.epoch != position.epoch or since.offset > position.offset:
        return Replay(position, recovered=False)
    first = after[0][0] if after else position.offset + 1
    if first != since.offset + 1:
        return Replay(position, recovered=False)  # trimmed past the client's position
    return Replay(position, recovered=True, messages=[payload for _, payload in after])
