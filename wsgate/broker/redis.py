"""The Redis broker: rooms that span processes and machines, over Redis pub/sub.

- A frame published here is delivered to local clients at once and sent to Redis
  as `node id + frame bytes` on `<prefix>:room:<room>` (or `<prefix>:broadcast`).
  Other nodes deliver the bytes as they are; a node skips its own frames, so every
  client gets each frame exactly once. One sender task pipelines PUBLISH commands
  in order, so each publisher's order is kept on every node.
- A node subscribes only to rooms it has members in (plus the broadcast channel).
- If Redis goes away, local delivery goes on; the node reconnects with backoff and
  re-subscribes. Frames published meanwhile do not reach other nodes (at most once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from ..config import HistorySettings
from ..history import Position, Replay, new_epoch, replay_from
from .base import BrokerError, Deliver

if TYPE_CHECKING:
    from ..config import BrokerSettings
    from ..metrics import Metrics

log = logging.getLogger(__name__)

NODE_ID_LENGTH = 32  # uuid4().hex
SUBSCRIBE_WAIT = 2.0  # longest a subscribe waits for Redis to confirm before answering anyway
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
PIPELINE_BATCH = 512
POOL_SIZE = 32  # Redis connections for commands (pub/sub has its own)
STATS_TTL = 5.0  # seconds a node's dashboard figures outlive its last report
RECEIVE_BATCH = 32  # messages from Redis delivered before other tasks (the flusher) get a turn
EVERY_NODE = b"h" * NODE_ID_LENGTH  # sender mark of history messages: no node skips them (ids are hex)

# History: a hash <prefix>:history:<room>:meta {epoch, offset} and a stream <prefix>:history:<room>:stream
# whose entry ids are the offsets ("<offset>-0"). Both expire `ttl` after the last message; a room
# without them starts a new epoch at offset 0. Scripts run atomically, so offsets are given out,
# kept and published in one order that every node sees.
_ENSURE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"""
PUBLISH_SCRIPT = _ENSURE + """
local n = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = ARGV[3] .. ',"offset":' .. n .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], n .. '-0', 'p', payload)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. payload)
return n
"""
PRESENCE_SCRIPT = """
local entries = redis.call('HGETALL', KEYS[1])
local alive, found = {}, {}
for i = 1, #entries, 2 do
  local node = string.sub(entries[i + 1], 1, 32)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if not alive[node] then
    redis.call('HDEL', KEYS[1], entries[i])
  elseif node ~= ARGV[2] then
    table.insert(found, string.sub(entries[i + 1], 33))
  end
end
return found
"""
READ_SCRIPT = """
if ARGV[3] == 'last' and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'', '0', {}}  -- reading the last messages creates nothing
end
""" + _ENSURE + """
local offset = redis.call('HGET', KEYS[1], 'offset')
local entries = {}
if ARGV[3] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[4]) + 1) .. '-0', '+')
elseif ARGV[3] == 'last' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[4])
end
return {epoch, offset, entries}
"""


class RedisBroker:
    """See the module docstring; `state` is `ok` or `degraded`."""

    def __init__(
        self, settings: BrokerSettings, metrics: Metrics, node_id: str | None = None,
        history: HistorySettings | None = None, node_ttl: float = 15.0,
    ) -> None:
        self._settings = settings
        self._history = history or HistorySettings()
        self._history_prefix = f"{settings.prefix}:history:"
        self._metrics = metrics
        self.node_id = (node_id or uuid.uuid4().hex).encode()
        assert len(self.node_id) == NODE_ID_LENGTH
        prefix = settings.prefix
        self._room_prefix = f"{prefix}:room:".encode()
        self._broadcast = f"{prefix}:broadcast".encode()
        self._deliver: Deliver | None = None
        self._redis: Any = None
        self._pubsub: Any = None
        self._outgoing: deque[tuple[str | None, bytes, bytes]] = deque()  # (room if kept in history, channel, bytes)
        self._outgoing_ready = asyncio.Event()
        self._wanted: set[str] = set()  # rooms with local members
        self._subscribed: set[str] = set()  # rooms Redis has been asked for on the current connection
        self._confirmed: dict[bytes, asyncio.Event] = {}  # channel -> set once Redis confirmed it
        self._resync = asyncio.Event()
        self._receiving = False
        self._sending = True
        self.receiving = asyncio.Event()  # set while subscribed to Redis (tests and health can wait on it)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._publish_script: Any = None
        self._read_script: Any = None
        self._presence_script: Any = None
        self._node_ttl = node_ttl
        self._node_key = f"{settings.prefix}:node:{self.node_id.decode()}"
        self._presence_prefix = f"{settings.prefix}:presence:"
        self._present: dict[str, dict[str, bytes]] = {}  # room -> local client id -> member (the truth)
        self._presence_changes: dict[tuple[str, str], bytes | None] = {}  # (room, client) -> member, None: left
        self._presence_ready = asyncio.Event()

    @property
    def state(self) -> str:
        return "ok" if self._receiving and self._sending else "degraded"

    # --- life cycle -------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError:
            raise BrokerError("broker.url names Redis, but redis-py is missing: pip install 'wsgate[redis]'") from None
        self._deliver = deliver
        try:
            # A bounded pool that makes callers wait for a connection: a burst of subscribes to rooms
            # with history must queue up, not fail with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self._settings.url, max_connections=POOL_SIZE, timeout=self._settings.connect_timeout,
                socket_connect_timeout=self._settings.connect_timeout,
                # A pooled connection that Redis closed (a restart) fails on first use: try once more on a
                # fresh one rather than lose the message. A command that failed this way never ran.
                retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
                client_name=f"wsgate-{self.node_id.decode()[:8]}",
            )
            self._redis = aioredis.Redis.from_pool(pool)
        except ValueError as exc:
            raise BrokerError(f"invalid setting broker.url = {self._settings.url!r}: {exc}") from None
        self._publish_script = self._redis.register_script(PUBLISH_SCRIPT)
        self._read_script = self._redis.register_script(READ_SCRIPT)
        self._presence_script = self._redis.register_script(PRESENCE_SCRIPT)
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await self._redis.ping()
                await self._redis.script_load(PUBLISH_SCRIPT)  # sent by its SHA from now on
                await self._connect_pubsub()
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            message = f"cannot reach Redis at {self._settings.url}: {_describe(exc)}"
            if self._settings.required:
                await self._redis.aclose()
                raise BrokerError(message) from None
            log.error("broker: %s; starting degraded (broker.required = false), retrying", message)
            self._metrics.broker_error()
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="wsgate-redis-receive"),
            asyncio.create_task(self._subscription_loop(), name="wsgate-redis-subscriptions"),
            asyncio.create_task(self._send_loop(), name="wsgate-redis-send"),
            asyncio.create_task(self._presence_loop(), name="wsgate-redis-presence"),
        ]

    async def close(self) -> None:
        self._closed = True  # loops also stop by themselves: redis-py can swallow a cancellation
        self._resync.set()
        self._outgoing_ready.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.connect_timeout)
        await self._drop_pubsub()
        if self._redis is not None:
            with contextlib.suppress(Exception):  # best effort: the key expires by itself otherwise
                async with asyncio.timeout(self._settings.connect_timeout):
                    await self._redis.delete(self._node_key)  # our members vanish from presence at once
            await self._redis.aclose()

    # --- publishing -------------------------------------------------------------------

    async def publish(self, room: str | None, frame: bytes) -> int:
        assert self._deliver is not None, "broker used before start()"
        count = self._deliver(room, frame)
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)  # Redis cannot keep up (or is away): other nodes miss this one
        else:
            channel = self._broadcast if room is None else self._room_prefix + room.encode()
            self._outgoing.append((None, channel, self.node_id + frame))
            self._outgoing_ready.set()
        return count

    # --- history ----------------------------------------------------------------------

    def _history_keys(self, room: str) -> list[str]:
        return [f"{self._history_prefix}{room}:meta", f"{self._history_prefix}{room}:stream"]

    def _ttl_ms(self) -> int:
        return max(1, round(self._history.ttl * 1000))

    async def publish_history(self, room: str, head: bytes) -> None:
        """Queued like any publish, but sent as one script that gives out the offset, keeps the message
        and publishes it to every node, this one included: every node delivers in offset order."""
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)
            self._deliver_unkept(room, head)
            return
        self._outgoing.append((room, self._room_prefix + room.encode(), head))
        self._outgoing_ready.set()

    def _deliver_unkept(self, room: str, head: bytes) -> None:
        """Redis cannot keep a message: this node's clients still get it, without an offset."""
        assert self._deliver is not None
        self._deliver(room, head + b"}")

    async def _read(self, room: str, mode: str, count: int) -> tuple[Position, list[tuple[int, bytes]]]:
        import redis.asyncio as aioredis

        try:
            async with asyncio.timeout(self._settings.connect_timeout):  # a recovering client is waiting
                epoch, offset, entries = await self._read_script(
                    keys=self._history_keys(room), args=[new_epoch(), self._ttl_ms(), mode, count]
                )
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            self._metrics.broker_error()
            raise BrokerError(f"reading the history of {room!r} from Redis failed: {_describe(exc)}") from None
        kept = [(int(entry_id.split(b"-")[0]), fields[1]) for entry_id, fields in entries]
        return Position(int(offset), epoch.decode()), kept

    async def history_position(self, room: str) -> Position:
        position, _ = await self._read(room, "none", 0)
        return position

    async def history_replay(self, room: str, since: Position) -> Replay:
        position, after = await self._read(room, "after", since.offset)
        return replay_from(position, after, since)

    async def history_last(self, room: str, limit: int) -> tuple[Position, list[bytes]]:
        position, newest_first = await self._read(room, "last", limit)
        return position, [payload for _, payload in reversed(newest_first)]

    async def _send_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = BACKOFF_START
        while not self._closed:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            while self._outgoing:
                batch = [self._outgoing.popleft() for _ in range(min(len(self._outgoing), PIPELINE_BATCH))]
                try:
                    refused = await self._send_batch(batch)
                    if refused:  # Redis ran the batch but refused these (never expected): count them, keep going
                        self._metrics.broker_dropped(len(refused))
                        self._metrics.broker_error()
                        for kept, _, payload in refused:
                            if kept is not None:
                                self._deliver_unkept(kept, payload)
                except (OSError, aioredis.RedisError) as exc:
                    self._metrics.broker_dropped(len(batch))
                    self._metrics.broker_error()
                    for kept, _, payload in batch:
                        if kept is not None:
                            self._deliver_unkept(kept, payload)
                    if self._sending:
                        log.warning("broker: publishing to Redis failed (%s); other nodes miss messages "
                                    "until it is back, local delivery goes on", _describe(exc))
                    self._sending = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if not self._sending:
                    log.info("broker: publishing to Redis works again")
                    self._sending = True
                backoff = BACKOFF_START

    async def _send_batch(self, batch: list[tuple[str | None, bytes, bytes]]) -> list[tuple[str | None, bytes, bytes]]:
        """One pipeline, in order. History scripts run by their SHA: redis-py would otherwise ask
        SCRIPT EXISTS before every pipeline, one more round trip per batch. If Redis lost the script
        (a restart), it is loaded again and just those messages are sent once more, still in order.
        Returns what Redis refused."""
        from redis.exceptions import NoScriptError

        async with self._redis.pipeline(transaction=False) as pipe:
            for kept, channel, payload in batch:
                if kept is None:
                    pipe.publish(channel, payload)
                else:
                    pipe.evalsha(self._publish_script.sha, 2, *self._history_keys(kept), new_epoch(), self._ttl_ms(),
                                 payload, self._history.size, channel, EVERY_NODE)
            results = await pipe.execute(raise_on_error=False)
        refused = [item for item, result in zip(batch, results) if isinstance(result, Exception)]
        if any(isinstance(result, NoScriptError) for result in results):
            await self._redis.script_load(PUBLISH_SCRIPT)
            again = [item for item, result in zip(batch, results) if isinstance(result, NoScriptError)]
            others = [item for item, result in zip(batch, results)
                      if isinstance(result, Exception) and not isinstance(result, NoScriptError)]
            return others + await self._send_batch(again)
        return refused

    # --- presence ---------------------------------------------------------------------

    def presence_join(self, room: str, client_id: str, member: bytes) -> None:
        self._present.setdefault(room, {})[client_id] = member
        self._presence_changes[(room, client_id)] = member
        self._presence_ready.set()

    def presence_leave(self, room: str, client_id: str) -> None:
        members = self._present.get(room)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._present[room]
        self._presence_changes[(room, client_id)] = None
        self._presence_ready.set()

    async def presence_members(self, room: str) -> list[bytes]:
        """Members of `room` on the other live nodes (entries of nodes that stopped are dropped)."""
        import redis.asyncio as aioredis

        try:
            async with asyncio.timeout(self._settings.connect_timeout):  # a client is waiting for the answer
                found: list[bytes] = await self._presence_script(
                    keys=[self._presence_prefix + room], args=[f"{self._settings.prefix}:node:", self.node_id]
                )
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            self._metrics.broker_error()
            raise BrokerError(f"reading the presence of {room!r} from Redis failed: {_describe(exc)}") from None
        return found

    async def _presence_loop(self) -> None:
        """Write joins and leaves; every node_ttl / 3 prove this node alive and keep its rooms' keys.

        Local membership is the truth: after a failure everything is written again.
        """
        import redis.asyncio as aioredis

        beat = self._node_ttl / 3
        ttl_ms = round(self._node_ttl * 1000)
        rewrite = True
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._presence_ready.wait()
            self._presence_ready.clear()
            changes, self._presence_changes = self._presence_changes, {}
            beating = loop.time() >= next_beat
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    if rewrite:  # the whole local truth; the changes below still remove those who left
                        for room, members in self._present.items():
                            pipe.hset(self._presence_prefix + room, mapping={
                                client: self.node_id + member for client, member in members.items()
                            })
                    for (room, client), member in changes.items():
                        if member is None:
                            pipe.hdel(self._presence_prefix + room, client)
                        else:
                            pipe.hset(self._presence_prefix + room, client, self.node_id + member)
                    if beating or rewrite:
                        pipe.set(self._node_key, b"1", px=ttl_ms)
                        for room in self._present:
                            pipe.pexpire(self._presence_prefix + room, 2 * ttl_ms)
                    await pipe.execute()
                rewrite = False
                if beating:
                    next_beat = loop.time() + beat
            except (OSError, aioredis.RedisError):
                rewrite = True  # write the whole local truth once Redis is back
                for key, member in changes.items():  # and keep the leaves: newer changes win
                    self._presence_changes.setdefault(key, member)
                next_beat = loop.time() + min(beat, BACKOFF_MAX)

    # --- dashboard ----------------------------------------------------------------------

    async def share_stats(self, stats: bytes) -> list[bytes]:
        """Every node keeps its figures in one hash, <prefix>:stats, stamped with the time; stale ones are dropped."""
        key, now = f"{self._settings.prefix}:stats", time.time()
        await self._redis.hset(key, self.node_id, b"%.3f " % now + stats)
        found: dict[bytes, bytes] = await self._redis.hgetall(key)
        fresh: list[bytes] = []
        stale: list[bytes] = []
        for node, value in found.items():
            stamp, _, figures = value.partition(b" ")
            if now - float(stamp) < STATS_TTL:
                fresh.append(figures)
            else:
                stale.append(node)  # a node that stopped reporting
        if stale:
            await self._redis.hdel(key, *stale)
        return fresh

    # --- receiving --------------------------------------------------------------------

    def room_added(self, room: str) -> None:
        self._wanted.add(room)
        self._resync.set()

    def room_removed(self, room: str) -> None:
        self._wanted.discard(room)
        self._resync.set()

    async def wait_receiving(self, room: str) -> None:
        """Return once Redis confirmed the subscription for `room` (bounded; immediate when degraded)."""
        if not self._receiving:
            return
        event = self._confirmed.setdefault(self._room_prefix + room.encode(), asyncio.Event())
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT):
                await event.wait()
        except TimeoutError:
            pass  # answer the client anyway; messages from other nodes follow once Redis catches up

    async def _connect_pubsub(self) -> None:
        pubsub = self._redis.pubsub()
        rooms = set(self._wanted)
        try:
            await pubsub.subscribe(self._broadcast, *(self._room_prefix + r.encode() for r in rooms))
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # give its connection back to the pool, or retries drain the pool
            raise
        self._pubsub, self._subscribed = pubsub, rooms
        self._receiving = True
        self.receiving.set()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._receiving = False
        self.receiving.clear()
        self._subscribed = set()
        self._confirmed.clear()
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # the connection is already broken; nothing more to release
                log.debug("broker: closing the broken pub/sub connection failed", exc_info=True)

    async def _receive_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = BACKOFF_START
        received = 0
        while not self._closed:
            try:
                if self._pubsub is None:
                    await self._connect_pubsub()
                    self._sending = True  # Redis answers again: let the next publish prove otherwise
                    self._outgoing_ready.set()
                    self._metrics.broker_reconnected()
                    log.info("broker: reconnected to Redis; receiving %d rooms again", len(self._subscribed))
                    self._resync.set()
                message = await self._pubsub.get_message(timeout=None)
                backoff = BACKOFF_START
                if message is not None:
                    self._on_message(message)
                    received += 1
                    if received % RECEIVE_BATCH == 0:
                        # get_message does not yield while Redis has sent more: let the flusher write
                        # outboxes before a burst from Redis fills them (as the read loop does for clients)
                        await asyncio.sleep(0)
            except (OSError, aioredis.RedisError) as exc:
                if self._receiving:
                    log.warning("broker: lost the connection to Redis (%s); reconnecting, local delivery goes on",
                                _describe(exc))
                self._metrics.broker_error()
                await self._drop_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            self._confirmed.setdefault(channel, asyncio.Event()).set()
            return
        if kind == "unsubscribe":
            self._confirmed.pop(channel, None)
            return
        if kind != "message":
            return
        payload: bytes = message["data"]
        if payload[:NODE_ID_LENGTH] == self.node_id:
            return  # delivered locally when it was published
        room = None if channel == self._broadcast else channel[len(self._room_prefix):].decode()
        assert self._deliver is not None
        self._deliver(room, payload[NODE_ID_LENGTH:])

    async def _subscription_loop(self) -> None:
        """Bring Redis in line with the rooms that have local members (coalescing quick joins and leaves)."""
        import redis.asyncio as aioredis

        while not self._closed:
            await self._resync.wait()
            self._resync.clear()
            pubsub = self._pubsub
            if pubsub is None or self._closed:
                continue  # the receive loop subscribes everything when it reconnects
            add, remove = self._wanted - self._subscribed, self._subscribed - self._wanted
            try:
                if add:
                    await pubsub.subscribe(*(self._room_prefix + r.encode() for r in add))
                if remove:
                    await pubsub.unsubscribe(*(self._room_prefix + r.encode() for r in remove))
            except (OSError, aioredis.RedisError):
                continue  # the receive loop notices the broken connection and reconnects
            if pubsub is self._pubsub:
                self._subscribed = (self._subscribed | add) - remove


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
