"""The Redis layout wsgate nodes share with each other and with `RedisPublisher`: names, marks, scripts.

Every relayed message is `sender id (32 bytes) + message bytes` on
`<prefix>:room:<room>` or `<prefix>:broadcast`. A node skips messages whose
sender id is its own (it delivered them locally when they were published);
publishers from outside use an id of their own, so every node delivers theirs.

History: a hash `<prefix>:history:<room>:meta` {epoch, offset} and a stream
`<prefix>:history:<room>:stream` whose entry ids are the offsets
(`<offset>-0`). Both expire `history.ttl` after the last message; a room
without them starts a new epoch at offset 0. `PUBLISH_SCRIPT` gives out the
offset, keeps the message and publishes it in one atomic step, so offsets are
given out, kept and relayed in one order that every node sees. A message id
(`<prefix>:history:<room>:id:<id>`, kept `OUTCOME_WINDOW`) makes a second run of
the same message a no-op answered like the first: a publisher that was not told
what happened sends it again safely (DESIGN "The fault model").

Idempotency keys (`wsgate.idempotency`): `<prefix>:idem:<claim>`, where `<claim>` is
the hex SHA-256 `claim_id(scope, room, key)` (so no room and key can stand for
another's), holds what the first publish with the key is answered with again:
`<offset> <epoch>` in a room with history, an empty string in a room without,
for the idempotency window. It is taken in the same script that keeps or
publishes the message (`PUBLISH_SCRIPT`, `ONCE_SCRIPT`), only when the message
goes out: a publish that was not run leaves the key free, and one whose outcome
was unknown is decided by Redis (the first to run is the one delivered).

`<prefix>:history:config` holds the gateways' `[history]` settings (JSON), and
their `idempotency_window`, so a `RedisPublisher` in another process stamps and
keeps history, and remembers keys, exactly as the gateways do.
"""

from __future__ import annotations

import hashlib
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..history import epoch_suffix
from ..idempotency import WINDOW

NODE_ID_LENGTH = 32  # uuid4().hex


def new_sender_id() -> bytes:
    """A random sender id: a node's, or an outside publisher's."""
    return uuid.uuid4().hex.encode()


@dataclass(frozen=True, slots=True)
class RedisNames:
    """Every key and channel name under one `broker.prefix`."""

    prefix: str

    @property
    def broadcast(self) -> bytes:
        return f"{self.prefix}:broadcast".encode()

    @property
    def room_prefix(self) -> bytes:
        return f"{self.prefix}:room:".encode()

    def channel(self, room: str | None) -> bytes:
        """The pub/sub channel of `room` (None: the broadcast channel)."""
        return self.broadcast if room is None else self.room_prefix + room.encode()

    @property
    def control(self) -> bytes:
        """The channel every node receives commands on (`Broker.command`): `sender id + command JSON`."""
        return f"{self.prefix}:control".encode()

    def probe(self, node_id: bytes) -> bytes:
        """The channel a node publishes to itself to prove its subscription still hears Redis."""
        return f"{self.prefix}:probe:".encode() + node_id

    def history_keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:history:{room}:meta", f"{self.prefix}:history:{room}:stream"]

    def publish_keys(self, room: str, message_id: str, claim: bytes | None = None) -> list[str]:
        """KEYS of PUBLISH_SCRIPT: the history keys, the message id's key when there is an id, and then an
        idempotency claim's key when there is one (it needs a message id)."""
        keys = self.history_keys(room)
        if not message_id:
            return keys
        keys.append(self.message_id(room, message_id))
        return keys if claim is None else [*keys, self.claim(claim)]

    def message_id(self, room: str, message_id: str) -> str:
        """Where a run of a message id is remembered (OUTCOME_WINDOW)."""
        return f"{self.prefix}:history:{room}:id:{message_id}"

    def claim(self, claim: bytes) -> str:
        """Where an idempotency claim (`wsgate.idempotency.claim_id`, 32 bytes) is remembered."""
        return f"{self.prefix}:idem:{claim.hex()}"

    def once_keys(self, room: str, message_id: str, claim: bytes) -> list[str]:
        """KEYS of ONCE_SCRIPT: the message id's key and the claim's."""
        return [self.message_id(room, message_id), self.claim(claim)]

    @property
    def history_config(self) -> str:
        return f"{self.prefix}:history:config"

    def presence(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    @property
    def node_prefix(self) -> str:
        return f"{self.prefix}:node:"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"


_ENSURE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local now = redis.call('TIME')  -- the epoch begins now, by Redis's clock (history.new_epoch)
  epoch = string.format('%08x%05x', tonumber(now[1]), tonumber(now[2])) .. ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"""

PUBLISH_SCRIPT = (
    """
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then  -- this message ran before: answered as then, neither kept nor published again
    local n, receivers, epoch = string.match(seen, '^(%d+) (%d+) (.*)$')
    return {tonumber(n), epoch, tonumber(receivers), 1}
  end
end
if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then  -- a publish with this idempotency key went out: nothing is kept or published
    local n, epoch = string.match(first, '^(%d+) (.*)$')
    return {tonumber(n or 0), epoch or '', 0, 2}
  end
end
"""
    + _ENSURE
    + """
local n = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = ARGV[3] .. ',"offset":' .. n .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], n .. '-0', 'p', payload)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local receivers = redis.call('PUBLISH', ARGV[5], ARGV[6] .. payload)
if KEYS[3] then
  redis.call('SET', KEYS[3], n .. ' ' .. receivers .. ' ' .. epoch, 'PX', ARGV[7])
end
if KEYS[4] then
  redis.call('SET', KEYS[4], n .. ' ' .. epoch, 'PX', ARGV[8])
end
return {n, epoch, receivers, 0}
"""
)
"""KEYS: publish_keys(room, message_id, claim). ARGV: `publish_args(...)`. Returns {offset, epoch, receivers,
again}: `again` is 1 when the message id ran before (then offset, epoch and receivers are that run's); the
stamped bytes are `history.stamp(head, offset, epoch)`. `again` is 2 when the idempotency claim was taken by an
earlier publish (nothing was kept or published): offset and epoch are that publish's (0 and '' when it went to
the room while it kept no history), receivers 0."""

ONCE_SCRIPT = """
local seen = redis.call('GET', KEYS[1])
if seen then  -- this message ran before (sent again after an unknown outcome): answered as then
  return {1, tonumber(seen)}
end
if redis.call('EXISTS', KEYS[2]) == 1 then  -- a publish with this idempotency key went out: not this one
  return {2, 0}
end
redis.call('SET', KEYS[2], '', 'PX', ARGV[5])
local receivers = redis.call('PUBLISH', ARGV[2], ARGV[3] .. ARGV[1])
redis.call('SET', KEYS[1], receivers, 'PX', ARGV[4])
return {0, receivers}
"""
"""A message for a room without history, published with an idempotency claim: the claim is taken and the message
published in one step. KEYS: once_keys(room, message_id, claim). ARGV: `once_args(...)`. Returns {again,
receivers}: again 0 (published now) or 1 (this message id ran before, published then), with the receivers of
that PUBLISH; again 2 when another publish took the claim (nothing was published), receivers 0."""

ONCE_SHA = hashlib.sha1(ONCE_SCRIPT.encode()).hexdigest()

PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
"""What EVALSHA names PUBLISH_SCRIPT by (Redis's SCRIPT LOAD answers the same)."""

OUTCOME_WINDOW = 60.0
"""Seconds Redis remembers a message id of PUBLISH_SCRIPT: a second run within it is answered as the first."""


def new_message_id() -> str:
    """A random message id for PUBLISH_SCRIPT (one per message a node or RedisPublisher publishes)."""
    return uuid.uuid4().hex


def publish_args(
    head: bytes,
    size: int,
    ttl: float,
    channel: bytes,
    sender: bytes,
    window: float = OUTCOME_WINDOW,
    claim_window: float = WINDOW,
) -> list[bytes | str | int]:
    """ARGV of PUBLISH_SCRIPT: the random part of an epoch for a room that has none, the ttl in ms, the
    message without its closing brace, how many messages to keep, the channel, the sender id, how long
    (ms) the message id is remembered, and how long (ms) an idempotency claim is (used only with one)."""
    return [
        epoch_suffix(),
        max(1, round(ttl * 1000)),
        head,
        size,
        channel,
        sender,
        max(1, round(window * 1000)),
        max(1, round(claim_window * 1000)),
    ]


def once_args(
    message: bytes, channel: bytes, sender: bytes, window: float = OUTCOME_WINDOW, claim_window: float = WINDOW
) -> list[bytes | str | int]:
    """ARGV of ONCE_SCRIPT: the message, the channel, the sender id, how long (ms) the message id is remembered,
    and how long (ms) the idempotency claim is."""
    return [message, channel, sender, max(1, round(window * 1000)), max(1, round(claim_window * 1000))]


class Attempt:
    """Whether commands handed to `exchange` reached the socket: until `written`, Redis never saw them."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


async def exchange(redis: Any, commands: list[tuple[Any, ...]], attempt: Attempt) -> list[Any]:
    """Send `commands` in one write on one connection of `redis`'s pool and read every answer, in order;
    an error answer is returned in its place (a `ResponseError`). No retry and no time limit of its own
    (the caller bounds it; redis-py's retry would run a command a second time after a lost answer).

    `attempt.written` turns True just before the write: a failure before it (no connection, the pool's
    wait, the handshake) means nothing reached Redis, "not sent" for certain; after it the commands may
    have run. Raises what redis-py raises (OSError, RedisError); a connection left mid-way (an error, a
    cancellation) is closed, so that nobody reads its late answers.
    """
    from redis.exceptions import ResponseError

    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        attempt.written = True
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        answers: list[Any] = []
        for _ in commands:
            try:
                answers.append(await connection.read_response())
            except ResponseError as exc:
                answers.append(exc)
        return answers
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)


READ_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return {'', '0', {}, 0}  -- no history yet: reading creates nothing (a client's choice of names leaves no keys)
end
local offset = redis.call('HGET', KEYS[1], 'offset')
local entries, over, limit = {}, 0, tonumber(ARGV[3])
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[2]) + 1) .. '-0', '+')
  local size = 0
  for i = 1, #entries do
    size = size + #entries[i][2][2]
    if limit > 0 and size > limit then
      return {epoch, offset, {}, 1}  -- more than a recovery may hold: none of it
    end
  end
elseif ARGV[1] == 'last' then
  local top = '+'
  if tonumber(ARGV[4]) > 0 then top = '(' .. ARGV[4] .. '-0' end
  entries = redis.call('XREVRANGE', KEYS[2], top, '-', 'COUNT', ARGV[2])
  local size = 0
  for i = 1, #entries do
    size = size + #entries[i][2][2]
    if limit > 0 and size > limit and i > 1 then
      for j = #entries, i, -1 do entries[j] = nil end  -- the newest that fit (at least one)
      over = 1
      break
    end
  end
end
return {epoch, offset, entries, over}
"""
"""KEYS: history_keys(room). ARGV: mode (none, after, last), offset or count, the most payload bytes to return
(0: any; `history.max_answer_bytes`), and for `last` the offset to stay below (0: none). Returns {epoch, offset,
entries, over}: `over` is 1 when entries were left out for the byte bound (for `after`: all of them)."""

PRESENCE_SCRIPT = """
local entries = redis.call('HGETALL', KEYS[1])
local alive, found = {}, {}
for i = 1, #entries, 2 do
  local node = string.sub(entries[i + 1], 1, 32)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if not alive[node] then
    if redis.call('SISMEMBER', ARGV[3], node) == 0 then redis.call('HDEL', KEYS[1], entries[i]) end
  elseif node ~= ARGV[2] then
    table.insert(found, string.sub(entries[i + 1], 33))
  end
end
return found
"""
"""KEYS: presence(room). ARGV: node_prefix, this node's id, the presence nodes set (`REAP_SCRIPT`). Returns
the other live nodes' members. A dead node's entries are skipped; they are removed here only when no
surviving node will reap them (the node is not in the set), so that REAP_SCRIPT reports every leave."""

REAP_SCRIPT = """
local found = {}
for _, node in ipairs(redis.call('SMEMBERS', ARGV[1])) do
  if redis.call('EXISTS', ARGV[2] .. node) == 0 then
    local rooms = ARGV[3] .. node
    for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
      local key = ARGV[4] .. room
      local entries = redis.call('HGETALL', key)
      for i = 1, #entries, 2 do
        if string.sub(entries[i + 1], 1, 32) == node then
          redis.call('HDEL', key, entries[i])
          table.insert(found, room)
          table.insert(found, string.sub(entries[i + 1], 33))
        end
      end
    end
    redis.call('DEL', rooms)
    redis.call('SREM', ARGV[1], node)
    redis.call('SET', ARGV[5] .. node, '1', 'PX', ARGV[6])  -- if it lives after all, it learns it was reaped
  end
end
return found
"""
"""Remove the presence entries of every dead node (in the presence nodes set, its liveness key expired) and
return them as a flat list: room, member, room, member... Atomic: when several surviving nodes run it, each
entry is returned to exactly one of them, which reports the leaves (Phoenix.Presence on nodedown).
A reaped node is marked (`<prefix>:presence-reaped:<node>`, for 3 node_ttl): a node that was only stalled or cut
off reads the mark on its next write and writes its members again, reporting them as joins (its leaves were
sent); without the mark (it stalled but nobody reaped it, or Redis came back empty) it reports nothing.
ARGV: the presence nodes set, node_prefix, the prefix of a node's rooms set, the prefix of presence(room), the
prefix of the reaped marks, their lifetime in ms."""


def describe(exc: BaseException) -> str:
    """An exception as one line for logs and errors."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Reconnects:
    """Tells a pooled connection's first connect from its reconnects: `watch(connection)` is called on every
    connect (see `connect`), and `reconnected(connection)` runs when that connection object had connected
    before, i.e. its earlier socket was lost or dropped, whoever reconnected it (redis-py's retry, the pool's
    check of an idle connection, or a command after a timeout). `reconnected` must not await Redis: it runs
    inside redis-py's connect, before the connection is used."""

    def __init__(self, reconnected: Callable[[object], None]) -> None:
        self._seen: weakref.WeakSet[object] = weakref.WeakSet()
        self._reconnected = reconnected

    def watch(self, connection: object) -> None:
        if connection in self._seen:
            self._reconnected(connection)
        else:
            self._seen.add(connection)


def connect(
    url: str,
    connect_timeout: float,
    client_name: str,
    max_connections: int,
    on_connect: Callable[[object], None] | None = None,
) -> object:
    """A redis-py client with a bounded pool that makes callers wait for a connection (a burst queues up,
    it does not fail with "Too many connections"). Raises ImportError without redis-py, ValueError for a bad URL.

    A pooled connection that Redis closed (a restart) fails on first use: it is tried once more on a fresh
    one rather than lose the command. A command that failed this way never ran.

    `on_connect(connection)` runs after every connect of every connection of the pool, once redis-py has
    set the connection up (AUTH, HELLO, SELECT, CLIENT SETNAME) and before anything else uses it (a pub/sub
    connection resubscribes only after it). redis-py reconnects on its own (its retry, in `get_message`
    too, and the pool's check of idle connections): this is where the caller learns of it
    (`Connection(redis_connect_func=...)`, the hook redis-py's cluster client uses for its own set-up).
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def set_up(connection: Any) -> None:
        await connection.on_connect()  # what redis-py does when no redis_connect_func is given
        if on_connect is not None:
            on_connect(connection)

    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=connect_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        client_name=client_name,
        redis_connect_func=set_up,
    )
    return aioredis.Redis.from_pool(pool)
