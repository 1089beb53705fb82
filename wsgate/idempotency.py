"""Idempotency keys on publish: what a key is, whose it is, and the bounded memory of recent ones (no I/O).

A publish may carry an `idempotency_key` (docs/protocol.md, "idempotency_key"): within the window
(`publish.idempotency_window`, 300 s), a second publish with the same key, by the same publisher, to the same
room, is delivered nowhere and not refused (the first's delivery stands for both). The brokers decide which
publish is the first: the memory broker with `RecentKeys` below, Redis in the script that keeps or publishes the
message (`redis_schema`), so the check and the publishing are one atomic step.

A key belongs to a `Scope`: a WebSocket client's keys are its user's (the user id of an authenticated client) or,
for an anonymous client, its connection's; the HTTP API's keys are the API's (one scope); a `RedisPublisher`'s are
its own, or, given a `scope` name, those of every RedisPublisher given that name (`publisher_scope`); code in the
gateway process publishes in a scope it names. Two publishers using the same key are two messages, so no client
can claim a key a backend will use.

What the brokers remember per key is `claim_id(scope, room, key)`, a SHA-256 digest of an unambiguous encoding
(each part length-prefixed: room `a` with key `b:c` and room `a:b` with key `c` are two claims), and what the
first publish is remembered by: its offset and epoch in a room with history (`First`), nothing else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from . import errors
from .errors import ClientError, WsgateError
from .history import Position

KEY_LENGTH = 64
"""The longest idempotency key, in characters (as long as a request id)."""
WINDOW = 300.0
"""Seconds a key is remembered by default (`publish.idempotency_window`)."""
INVALID_KEY = f"field 'idempotency_key' must be a string of 1 to {KEY_LENGTH} characters"
"""The `detail` of the `invalid JSON format` answer to a key that is not one."""

MEMORY_KEYS = 100_000
"""Keys the memory broker remembers at most; past that, the oldest are forgotten first."""
MEMORY_BYTES = 16 * 2**20
"""Bytes the memory broker's keys may take at most (`RecentKeys.size`); past that, the oldest go first."""
ENTRY_OVERHEAD = 240
"""Bytes one remembered key costs besides its digest: a dict slot, a tuple, a float, a First, the digest's bytes
object (measured with tracemalloc: about 230 with the digest, on CPython 3.11 x86-64)."""
POSITION_OVERHEAD = 140
"""Bytes a remembered offset and epoch cost besides the epoch's characters: a Position, an int, a str (measured:
about 140)."""


def check_key(value: object) -> str:
    """`value` when it is an idempotency key: a string of 1 to KEY_LENGTH characters. Raises ClientError
    (`invalid JSON format`, detail INVALID_KEY) for anything else; callers take JSON `null` for the field's
    absence (as for `id`) before they ask."""
    if not isinstance(value, str) or not 1 <= len(value) <= KEY_LENGTH:
        raise ClientError(errors.INVALID_JSON, INVALID_KEY)
    return value


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose keys: `kind` (`user`, `client`, `server`, `publisher`, `service`) and `name` within it (a user id, a
    connection id, a server-side publisher's name such as `api`, a RedisPublisher's sender id, the `scope` name
    RedisPublishers share). Scopes of two kinds never meet, whatever their names."""

    kind: str
    name: str


API_SCOPE = Scope("server", "api")
"""The HTTP API's keys: one scope for every caller holding `api.key`."""
SERVER_SCOPE = Scope("server", "gateway")
"""Keys of code in the gateway process that names no scope (`Gateway.publish(..., idempotency_key=k)`)."""


def publisher_scope(sender: str, name: str | None = None) -> Scope:
    """A `RedisPublisher`'s scope: its own (`publisher`, its random sender id) when it names none, else the one
    every RedisPublisher given `name` shares (`service`: a kind of its own, so a name chosen by a service meets
    neither the HTTP API's scope, nor a client's, nor a sender id). ValueError for a name that is not a
    non-empty string."""
    if name is None:
        return Scope("publisher", sender)
    if not isinstance(name, str) or not name:
        raise ValueError("scope must be a non-empty string (or None: this publisher's own keys)")
    return Scope("service", name)


def _netstring(part: str) -> bytes:
    data = part.encode("utf-8", "surrogatepass")
    return b"%d:%s," % (len(data), data)


def claim_id(scope: Scope, room: str, key: str) -> bytes:
    """The 32-byte SHA-256 digest that stands for `key` used by `scope` in `room`: each part length-prefixed
    (a netstring), so no two different triples encode alike."""
    encoded = b"".join(_netstring(part) for part in (scope.kind, scope.name, room, key))
    return hashlib.sha256(encoded).digest()


class First(NamedTuple):
    """What is remembered of the first publish with a key: its `position` (offset and epoch) in a room with
    history, None in a room without (`Duplicate.first` tells in-process code)."""

    position: Position | None


class AlreadyPublished(WsgateError):
    """A publish whose key was used by the same publisher in the same room within the window: it was delivered
    nowhere and kept nowhere. `first` says what is remembered of the first one (its offset and epoch, if any)."""

    def __init__(self, first: First) -> None:
        super().__init__("a publish with this idempotency key went out already")
        self.first = first


def encode_first(first: First) -> bytes:
    """What Redis and the memory broker keep per key: `b""`, or `b"<offset> <epoch>"` in a room with history
    (PUBLISH_SCRIPT writes the same)."""
    position = first.position
    return b"" if position is None else b"%d %s" % (position.offset, position.epoch.encode())


def decode_first(raw: bytes) -> First:
    """The inverse of `encode_first`; a value it cannot read counts as a plain room's (answered without offset)."""
    offset, _, epoch = raw.partition(b" ")
    if not offset.isdigit() or not epoch:
        return First(None)
    return First(Position(int(offset), epoch.decode("ascii", "replace")))


class RecentKeys:
    """The claims (`claim_id`) published with in the last `window` seconds and their `First`: the memory broker's
    map, bounded in entries (`max_keys`) and in bytes (`max_bytes`, counted by `size`: ENTRY_OVERHEAD plus the
    digest and the epoch per entry). Entries leave, oldest first, when their window ends (as new ones come) or
    when a bound is reached (then a retry of a forgotten key is delivered again). `clock`: seconds, monotonic."""

    def __init__(
        self,
        window: float = WINDOW,
        *,
        max_keys: int = MEMORY_KEYS,
        max_bytes: int = MEMORY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_keys = max_keys
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: dict[bytes, tuple[float, First]] = {}  # claim -> (expires, first); oldest first
        self.size = 0
        """Bytes held (see the class)."""

    def first(self, claim: bytes) -> First | None:
        """The first publish's answer while `claim` is remembered; None when it is not (never, or expired)."""
        entry = self._entries.get(claim)
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    def remember(self, claim: bytes, first: First) -> None:
        """`claim` was published with now, answered `first` (a claim `first` found nothing for)."""
        now = self._clock()
        self._forget(claim)
        cost = _cost(claim, first)
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if len(entries) < self._max_keys and self.size + cost <= self._max_bytes and entries[oldest][0] > now:
                break
            self._forget(oldest)
        if cost <= self._max_bytes and self._max_keys > 0:
            entries[claim] = (now + self._window, first)
            self.size += cost

    def _forget(self, claim: bytes) -> None:
        entry = self._entries.pop(claim, None)
        if entry is not None:
            self.size -= _cost(claim, entry[1])

    def __len__(self) -> int:
        return len(self._entries)


def _cost(claim: bytes, first: First) -> int:
    if first.position is None:
        return ENTRY_OVERHEAD + len(claim)
    return ENTRY_OVERHEAD + len(claim) + POSITION_OVERHEAD + len(first.position.epoch)


class Duplicate(int):
    """What `Gateway.publish` returns for a retry whose key was used (an int: 0 clients, it was delivered
    nowhere); `first` is how the first publish was answered (its offset and epoch in a room with history)."""

    first: First

    def __new__(cls, first: First) -> Duplicate:
        duplicate = super().__new__(cls, 0)
        duplicate.first = first
        return duplicate
