"""Room history: offsets and epochs, pure (no I/O, no settings): the stores are the brokers'.

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
from collections.abc import Iterable
from dataclasses import dataclass, field

OFFSET_FIELD = b',"offset":'


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room's history stands: the last offset given out (0: none yet) in `epoch`."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer to "what did I miss since `since`": the messages after it, in order, or recovered=False.

    `kept`: when the history was trimmed past `since` in the same epoch (recovered=False), what it still holds
    after `since`, oldest first. A client is not sent them (it must reload its state: the spec's recovery); a
    node's catch-up of its own delivery order sends them and skips only what is gone (`wsgate.ordering`).
    """

    position: Position
    recovered: bool
    messages: list[bytes] = field(default_factory=list)
    kept: list[bytes] = field(default_factory=list)


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
    if first != since.offset + 1:  # trimmed past the client's position
        return Replay(position, recovered=False, kept=[payload for _, payload in after])
    return Replay(position, recovered=True, messages=[payload for _, payload in after])
