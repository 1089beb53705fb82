"""Presence in Redis: a hash per room of `client id -> node id + member`, and a liveness key per node.

Every node writes its own members and proves it is alive every `node_ttl / 3`
(`<prefix>:node:<id>`, expiring after `node_ttl`). Reading a room merges the
members of the other live nodes and skips those of nodes that stopped, so the
members of a node that crashed vanish within `node_ttl`. Local membership is
the truth: after a failure everything is written again.

A dead node's members leave as events too (Phoenix.Presence on nodedown): each
node lists itself in `<prefix>:presence-nodes` and its rooms in
`<prefix>:presence-rooms:<id>`, and on every beat runs REAP_SCRIPT, which
removes the entries of every listed node whose liveness key expired and hands
them to exactly one surviving node; that node reports them as leaves
(`watch_departures`). So within `node_ttl + node_ttl / 3` of a node's last beat
its members are reaped, and their leaves go out one `presence.interval` later.
A node whose own key expired while it lived (a stall longer than `node_ttl`)
finds out on its next beat and writes its members again (`on_revived`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..broker.redis_schema import PRESENCE_SCRIPT, REAP_SCRIPT, Reconnects, RedisNames, connect, describe
from ..supervision import Supervisor, Throttled
from .base import PresenceError

if TYPE_CHECKING:
    from ..config import BrokerSettings
    from ..metrics import Metrics

log = logging.getLogger(__name__)

POOL_SIZE = 4
BACKOFF_MAX = 5.0
STATS_TTL = 5.0  # seconds a node's dashboard figures outlive its last report
RECONNECT_LOG_INTERVAL = 10.0  # seconds: reconnects are logged at most once per interval


class RedisPresenceStore:
    """See the module docstring."""

    def __init__(
        self,
        settings: BrokerSettings,
        metrics: Metrics,
        node_id: bytes,
        node_ttl: float,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor or Supervisor(metrics)
        self._metrics = metrics
        self._node_id = node_id
        self._node_ttl = node_ttl
        self._names = RedisNames(settings.prefix)
        self._node_key = self._names.node_prefix + node_id.decode()
        self._nodes_key = f"{settings.prefix}:presence-nodes"  # nodes whose entries a survivor reaps when they die
        self._rooms_prefix = f"{settings.prefix}:presence-rooms:"  # + node id: the rooms it has members in
        self._rooms_key = self._rooms_prefix + node_id.decode()
        self._reaped_prefix = f"{settings.prefix}:presence-reaped:"  # + node id: a survivor reaped its members
        self._reaped_key = self._reaped_prefix + node_id.decode()
        self._listed: set[str] = set()  # rooms written to this node's rooms set
        self._redis: Any = None
        self._script: Any = None
        self._reap: Any = None
        self._departed: Callable[[str, bytes], None] = lambda room, member: None
        self._revived: Callable[[], None] = lambda: None
        self._present: dict[str, dict[str, bytes]] = {}  # room -> local client id -> member (the truth)
        self._changes: dict[tuple[str, str], bytes | None] = {}  # (room, client) -> member, None: left
        self._ready = asyncio.Event()
        self._lost = False  # a connection reconnected: Redis may have lost what this node wrote there
        self._warn_reconnect = Throttled(log, RECONNECT_LOG_INTERVAL)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._redis = connect(
            self._settings.url,
            self._settings.connect_timeout,
            f"wsgate-{self._node_id.decode()[:8]}-presence",
            POOL_SIZE,
            Reconnects(self._reconnected).watch,
        )
        self._script = self._redis.register_script(PRESENCE_SCRIPT)
        self._reap = self._redis.register_script(REAP_SCRIPT)
        self._task = self._supervisor.spawn("redis-presence", self._write_loop)

    async def close(self) -> None:
        self._closed = True
        self._ready.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=self._settings.connect_timeout)
            self._task.cancel()
        if self._redis is not None:
            with contextlib.suppress(Exception):  # best effort: the key expires by itself otherwise
                async with asyncio.timeout(self._settings.connect_timeout):
                    await self._redis.delete(self._node_key)  # our members vanish from presence at once
            await self._redis.aclose()

    def _reconnected(self, connection: object) -> None:
        """A connection of this store's pool was lost and connected again (redis-py's retry or the pool's
        check, see `Reconnects`): Redis may be a new, empty one. The write loop writes the whole local truth
        and this node's liveness key again at once (the node's figures are written on every report anyway)."""
        self._metrics.connection_reconnected("presence")
        self._warn_reconnect(
            "presence: a Redis connection was lost and connected again (presence connection); "
            "writing this node's members and liveness key again"
        )
        self._lost = True
        self._ready.set()

    def watch_departures(self, departed: Callable[[str, bytes], None], revived: Callable[[], None]) -> None:
        """`departed(room, member)` is called for each member of a dead node this node reaped (each reaped by
        exactly one surviving node); `revived()` when this node finds it was taken for dead (its liveness key
        had expired) and writes its members again."""
        self._departed, self._revived = departed, revived

    def join(self, room: str, client_id: str, member: bytes) -> None:
        self._present.setdefault(room, {})[client_id] = member
        self._changes[(room, client_id)] = member
        self._ready.set()

    def leave(self, room: str, client_id: str) -> None:
        members = self._present.get(room)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._present[room]
        self._changes[(room, client_id)] = None
        self._ready.set()

    async def members(self, room: str) -> list[bytes]:
        """Members of `room` on the other live nodes (entries of nodes that stopped are dropped)."""
        import redis.asyncio as aioredis

        try:
            async with asyncio.timeout(self._settings.connect_timeout):  # a client is waiting for the answer
                found: list[bytes] = await self._script(
                    keys=[self._names.presence(room)], args=[self._names.node_prefix, self._node_id, self._nodes_key]
                )
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            self._metrics.broker_error()
            raise PresenceError(f"reading the presence of {room!r} from Redis failed: {describe(exc)}") from None
        return found

    async def share_figures(self, figures: bytes, *, others: bool = True) -> list[bytes]:
        """Every node keeps its figures in one hash, <prefix>:stats, stamped with the time; stale ones are dropped
        when the hash is read (`others`), and the hash itself expires STATS_TTL after the last report of any node."""
        import redis.asyncio as aioredis

        key, now = self._names.stats, time.time()
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await self._redis.hset(key, self._node_id, b"%.3f " % now + figures)
                await self._redis.pexpire(key, int(STATS_TTL * 1000))  # gone too once every node stopped reporting
                if not others:
                    return []
                found: dict[bytes, bytes] = await self._redis.hgetall(key)
                fresh: list[bytes] = []
                stale: list[bytes] = []
                for node, value in found.items():
                    stamp, _, node_figures = value.partition(b" ")
                    if stamp.replace(b".", b"", 1).isdigit() and now - float(stamp) < STATS_TTL:
                        fresh.append(node_figures)
                    else:
                        stale.append(node)  # a node that stopped reporting (or garbled)
                if stale:
                    await self._redis.hdel(key, *stale)
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            raise PresenceError(f"sharing figures through Redis failed: {describe(exc)}") from None
        return fresh

    async def _write_loop(self) -> None:
        """Write joins and leaves; every node_ttl / 3 prove this node alive and keep its rooms' keys."""
        import redis.asyncio as aioredis

        beat = self._node_ttl / 3
        ttl_ms = round(self._node_ttl * 1000)
        rewrite = True
        failing = False  # the last write failed: logged once, until one works again
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._ready.wait()
            self._ready.clear()
            if self._closed:
                return
            changes, self._changes = self._changes, {}
            if self._lost:
                self._lost, rewrite = False, True
            beating = loop.time() >= next_beat
            try:
                async with (
                    asyncio.timeout(self._settings.connect_timeout),
                    self._redis.pipeline(transaction=False) as pipe,
                ):
                    if beating or rewrite:  # first: its answer says whether a survivor reaped this node's members
                        pipe.get(self._reaped_key)  # (read, not taken: a request stuck in a partition may
                        # reach Redis after it heals, and must not take the mark away unseen)
                        pipe.set(self._node_key, b"1", px=ttl_ms)
                    if rewrite:  # the whole local truth; the changes below still remove those who left
                        for room, members in self._present.items():
                            pipe.hset(
                                self._names.presence(room),
                                mapping={client: self._node_id + member for client, member in members.items()},
                            )
                    for (room, client), member in changes.items():
                        if member is None:
                            pipe.hdel(self._names.presence(room), client)
                        else:
                            pipe.hset(self._names.presence(room), client, self._node_id + member)
                    joined = {room for (room, _), member in changes.items() if member is not None}
                    if beating or rewrite:
                        for room in self._present:
                            pipe.pexpire(self._names.presence(room), 2 * ttl_ms)
                        pipe.sadd(self._nodes_key, self._node_id)
                        unlisted = self._listed - self._present.keys()  # (their entries were removed above)
                        if unlisted:
                            pipe.srem(self._rooms_key, *unlisted)
                        joined |= self._present.keys()
                        self._listed -= unlisted
                    if joined and (beating or rewrite or joined - self._listed):
                        pipe.sadd(self._rooms_key, *joined)
                        self._listed |= joined
                    if beating or rewrite:
                        pipe.pexpire(self._rooms_key, 3 * ttl_ms)  # (outlives the liveness key: reaped in time)
                    answers = await pipe.execute()
                    if (beating or rewrite) and answers[0] is not None:  # (after a failed write too)
                        log.warning(
                            "presence: other nodes took this node for dead and reported its members' "
                            "leaves (a stall or a partition longer than presence.node_ttl): writing its "
                            "members again, as joins"
                        )
                        await self._redis.delete(self._reaped_key)
                        self._lost = True  # others reaped its members: they are written again at once
                        self._ready.set()
                        self._revived()
                    if beating:
                        reaped: list[bytes] = await self._reap(
                            args=[
                                self._nodes_key,
                                self._names.node_prefix,
                                self._rooms_prefix,
                                self._names.presence(""),
                                self._reaped_prefix,
                                3 * ttl_ms,
                            ]
                        )
                        for i in range(0, len(reaped) - 1, 2):
                            self._departed(reaped[i].decode(), reaped[i + 1])
                rewrite = False
                if beating:
                    next_beat = loop.time() + beat
                if failing:
                    log.info("presence: writing to Redis works again; this node's members are written")
                    failing = False
            except (OSError, TimeoutError, aioredis.RedisError) as exc:
                if not failing:  # Redis away, or refusing writes (a read-only replica, maxmemory)
                    log.warning(
                        "presence: writing to Redis failed (%s); other nodes may miss this node's "
                        "members until it works again",
                        describe(exc),
                    )
                    failing = True
                rewrite = True  # write the whole local truth once Redis is back
                for key, member in changes.items():  # and keep the leaves: newer changes win
                    self._changes.setdefault(key, member)
                next_beat = loop.time() + min(beat, BACKOFF_MAX)
