"""The Redis broker: rooms that span processes and machines, over Redis pub/sub.

- The router hands every message to `relay` (or `append`, for rooms with history)
  in publish order. One sender task pipelines the PUBLISH commands (and history
  scripts) in that order, so each publisher's order is kept on every node. Other nodes deliver the bytes as they are; a node
  skips its own messages (the layout: `redis_schema`).
- A node subscribes only to rooms it has members in (plus the broadcast channel).
- If Redis goes away, local delivery goes on; the node reconnects with backoff and
  re-subscribes. Plain messages published meanwhile do not reach other nodes (at
  most once); messages for rooms with history are refused, never kept with a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import HistorySettings
from ..history import Position, Replay, replay_from, stamp
from ..redaction import redact_url
from ..supervision import Supervisor
from .base import BrokerError, Receive
from .redis_schema import (
    NODE_ID_LENGTH, PUBLISH_SCRIPT, READ_SCRIPT, RedisNames, connect, describe, new_sender_id, publish_args,
)

if TYPE_CHECKING:
    from ..config import BrokerSettings
    from ..metrics import Metrics

log = logging.getLogger(__name__)

SUBSCRIBE_WAIT = 2.0  # longest a subscribe waits for Redis to confirm before answering anyway
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
PIPELINE_BATCH = 512
POOL_SIZE = 32  # Redis connections for commands (pub/sub has its own)
RECEIVE_BATCH = 32  # messages from Redis delivered before other tasks (the flusher) get a turn
RECEIVE_POLL = 1.0  # seconds the receive loop waits for a message before looking at its state again


class _Outgoing:
    """One message waiting for the sender: relayed as it is, or (`kept`) appended to a room's history."""

    __slots__ = ("room", "channel", "data", "kept")

    def __init__(self, room: str | None, channel: bytes, data: bytes, kept: asyncio.Future[bytes] | None) -> None:
        self.room = room
        self.channel = channel
        self.data = data  # sender id + message (relay), or the head to stamp (history)
        self.kept = kept  # history only: resolved with the stamped bytes

    def fail(self, reason: str) -> None:
        if self.kept is not None and not self.kept.done():
            self.kept.set_exception(BrokerError(reason))


class RedisBroker:
    """See the module docstring; `state` is `ok` or `degraded`."""

    def __init__(
        self, settings: BrokerSettings, metrics: Metrics, node_id: bytes | None = None,
        history: HistorySettings | None = None, supervisor: Supervisor | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor or Supervisor(metrics)
        self._history = history or HistorySettings()
        self._metrics = metrics
        self.node_id = node_id or new_sender_id()
        assert len(self.node_id) == NODE_ID_LENGTH
        self._names = names = RedisNames(settings.prefix)
        self._room_prefix = names.room_prefix
        self._broadcast = names.broadcast
        self._probe_channel = names.probe(self.node_id)
        self._probe_seen = asyncio.Event()
        self._deaf = False  # the probe found the subscription deaf: the receive loop reconnects
        self._receive: Receive | None = None
        self._resynced: Callable[[], None] = lambda: None
        self._redis: Any = None
        self._pubsub: Any = None
        self._outgoing: deque[_Outgoing] = deque()
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
        self._publish_sha = ""
        self._read_script: Any = None

    @property
    def state(self) -> str:
        return "ok" if self._receiving and self._sending else "degraded"

    # --- life cycle -------------------------------------------------------------------

    async def start(self, receive: Receive, resynced: Callable[[], None] = lambda: None) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise BrokerError("broker.url names Redis, but redis-py is missing: pip install 'wsgate[redis]'") from None
        self._receive = receive
        self._resynced = resynced
        try:
            self._redis = connect(self._settings.url, self._settings.connect_timeout,
                                  f"wsgate-{self.node_id.decode()[:8]}", POOL_SIZE)
        except ValueError as exc:
            raise BrokerError(f"invalid setting broker.url = {redact_url(self._settings.url)!r}: {exc}") from None
        self._read_script = self._redis.register_script(READ_SCRIPT)
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await self._redis.ping()
                await self._prepare()
                await self._connect_pubsub()
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            message = f"cannot reach Redis at {redact_url(self._settings.url)}: {describe(exc)}"
            if self._settings.required:
                await self._redis.aclose()
                raise BrokerError(message) from None
            log.error("broker: %s; starting degraded (broker.required = false), retrying", message)
            self._metrics.broker_error()
        spawn = self._supervisor.spawn
        self._tasks = [
            spawn("redis-receive", self._receive_loop),
            spawn("redis-subscriptions", self._subscription_loop),
            spawn("redis-send", self._send_loop),
            spawn("redis-probe", self._probe_loop),
        ]

    async def _prepare(self) -> None:
        """Load the history script (sent by its SHA from now on) and announce the history settings
        to publishers outside the gateway (`RedisPublisher`). Run at start and on every reconnect."""
        self._publish_sha = await self._redis.script_load(PUBLISH_SCRIPT)
        history = self._history
        await self._redis.set(self._names.history_config, json.dumps(
            {"rooms": list(history.rooms), "size": history.size, "ttl": history.ttl}
        ))

    async def close(self) -> None:
        self._closed = True  # loops also stop by themselves: redis-py can swallow a cancellation
        self._resync.set()
        self._outgoing_ready.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.connect_timeout)
        for item in self._outgoing:
            item.fail("the gateway is shutting down")
        self._outgoing.clear()
        await self._drop_pubsub()
        if self._redis is not None:
            await self._redis.aclose()

    # --- relay ------------------------------------------------------------------------

    def relay(self, room: str | None, message: bytes) -> None:
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)  # Redis cannot keep up (or is away): other nodes miss this one
            return
        self._outgoing.append(_Outgoing(room, self._names.channel(room), self.node_id + message, None))
        self._outgoing_ready.set()

    def append(self, room: str, head: bytes) -> asyncio.Future[bytes]:
        """Queued like any relay, but sent as one script that gives out the offset, keeps the message
        and publishes it (marked as this node's: the router delivers it here)."""
        kept: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        item = _Outgoing(room, self._names.channel(room), head, kept)
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)
            item.fail(f"{len(self._outgoing)} messages are waiting for Redis (broker.publish_queue)")
        elif self._closed:
            item.fail("the gateway is shutting down")
        elif not (self._sending or self._receiving):  # Redis is away: say so now, not after the next backoff
            item.fail("Redis is unreachable")
        else:
            self._outgoing.append(item)
            self._outgoing_ready.set()
        return kept

    # --- history ----------------------------------------------------------------------

    async def _read(
        self, room: str, mode: str, count: int, max_bytes: int = 0, before: int = 0
    ) -> tuple[Position, list[tuple[int, bytes]], bool]:
        import redis.asyncio as aioredis

        try:
            async with asyncio.timeout(self._settings.connect_timeout):  # a recovering client is waiting
                epoch, offset, entries, over = await self._read_script(
                    keys=self._names.history_keys(room), args=[mode, count, max_bytes, before]
                )
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            self._metrics.broker_error()
            raise BrokerError(f"reading the history of {room!r} from Redis failed: {describe(exc)}") from None
        kept = [(int(entry_id.split(b"-")[0]), fields[1]) for entry_id, fields in entries]
        return Position(int(offset), epoch.decode()), kept, bool(over)

    async def history_position(self, room: str) -> Position:
        position, _, _ = await self._read(room, "none", 0)
        return position

    async def history_replay(self, room: str, since: Position, *, max_bytes: int = 0) -> Replay:
        position, after, over = await self._read(room, "after", since.offset, max_bytes)
        return Replay(position, recovered=False) if over else replay_from(position, after, since)

    async def history_last(
        self, room: str, limit: int, *, before: int = 0, max_bytes: int = 0
    ) -> tuple[Position, list[bytes]]:
        position, newest_first, _ = await self._read(room, "last", limit, max_bytes, before)
        return position, [payload for _, payload in reversed(newest_first)]

    # --- sending ----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = BACKOFF_START
        while not self._closed:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            while self._outgoing and not self._closed:
                batch = [self._outgoing.popleft() for _ in range(min(len(self._outgoing), PIPELINE_BATCH))]
                try:
                    async with asyncio.timeout(self._settings.connect_timeout):
                        refused = await self._send_batch(batch)
                    if refused:  # Redis ran the batch but refused these (never expected): count them, keep going
                        self._metrics.broker_dropped(refused)
                        self._metrics.broker_error()
                except (OSError, TimeoutError, aioredis.RedisError) as exc:
                    self._metrics.broker_dropped(len(batch))
                    self._metrics.broker_error()
                    reason = (f"Redis did not answer within broker.connect_timeout ({self._settings.connect_timeout:g}s);"
                              " the message may have been kept" if isinstance(exc, TimeoutError)
                              else f"Redis did not take the message: {describe(exc)}")
                    for item in batch:
                        item.fail(reason)
                    if self._sending:
                        log.warning("broker: publishing to Redis failed (%s); other nodes miss messages "
                                    "until it is back, local delivery goes on", describe(exc))
                    self._sending = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                finally:  # cancelled, or anything unexpected: no publisher waits forever
                    for item in batch:
                        item.fail("the gateway is shutting down" if self._closed else "the message was not sent")
                if not self._sending:
                    log.info("broker: publishing to Redis works again")
                    self._sending = True
                backoff = BACKOFF_START

    async def _send_batch(self, batch: list[_Outgoing]) -> int:
        """One pipeline, in order; returns how many messages Redis refused (their futures have failed).

        A batch with history messages begins with SCRIPT LOAD, so a Redis that restarted (and lost the
        script) still runs every message in this one pipeline, in order; the scripts then run by SHA
        (redis-py would otherwise ask SCRIPT EXISTS before every pipeline: a round trip per batch).
        """
        size, ttl = self._history.size, self._history.ttl
        with_history = any(item.kept is not None for item in batch)
        async with self._redis.pipeline(transaction=False) as pipe:
            if with_history:
                pipe.script_load(PUBLISH_SCRIPT)
            for item in batch:
                if item.kept is None:
                    pipe.publish(item.channel, item.data)
                else:
                    assert item.room is not None
                    pipe.evalsha(self._publish_sha, 2, *self._names.history_keys(item.room),
                                 *publish_args(item.data, size, ttl, item.channel, self.node_id))
            results = await pipe.execute(raise_on_error=False)
        refused = 0
        for item, result in zip(batch, results[1:] if with_history else results):
            if isinstance(result, Exception):
                item.fail(f"Redis refused the message: {describe(result)}")
                refused += 1
            elif item.kept is not None and not item.kept.done():
                offset, epoch, _ = result
                item.kept.set_result(stamp(item.data, int(offset), epoch.decode()))
        return refused

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
            await pubsub.subscribe(self._broadcast, self._probe_channel,
                                   *(self._room_prefix + r.encode() for r in rooms))
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
                    async with asyncio.timeout(self._settings.connect_timeout):
                        await self._connect_pubsub()
                        await self._prepare()  # Redis may have restarted: scripts and settings are gone
                    self._sending = True  # Redis answers again: let the next publish prove otherwise
                    self._outgoing_ready.set()
                    self._metrics.broker_reconnected()
                    log.info("broker: reconnected to Redis; receiving %d rooms again", len(self._subscribed))
                    self._resync.set()
                    self._resynced()  # what was relayed while away never came: rooms with history catch up
                message = await self._pubsub.get_message(timeout=RECEIVE_POLL)
                if message is not None:
                    self._deaf = False  # it hears: whatever the probe thought
                if self._deaf:
                    self._deaf = False
                    self._metrics.broker_error()
                    log.warning("broker: the probe did not come back through pub/sub within %ss: the subscription "
                                "is deaf (Redis dropped it, or the network holds it); subscribing again",
                                self._settings.connect_timeout)
                    await self._drop_pubsub()
                    continue
                backoff = BACKOFF_START
                if message is not None:
                    self._on_message(message)
                    received += 1
                    if received % RECEIVE_BATCH == 0:
                        # get_message does not yield while Redis has sent more: let the flusher write
                        # outboxes before a burst from Redis fills them (as the read loop does for clients)
                        await asyncio.sleep(0)
            except (OSError, TimeoutError, aioredis.RedisError) as exc:
                if self._receiving:
                    log.warning("broker: lost the connection to Redis (%s); reconnecting, local delivery goes on",
                                describe(exc))
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
        if channel == self._probe_channel:
            self._probe_seen.set()
            return
        payload: bytes = message["data"]
        if payload[:NODE_ID_LENGTH] == self.node_id:
            return  # delivered locally when it was published
        room = None if channel == self._broadcast else channel[len(self._room_prefix):].decode()
        assert self._receive is not None
        self._receive(room, payload[NODE_ID_LENGTH:])

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

    async def _probe_loop(self) -> None:
        """Every `broker.probe_interval`, publish to this node's own probe channel and expect it back through
        pub/sub within `broker.connect_timeout`. If it does not come (Redis dropped the subscriber with
        CLIENT KILL or for its output buffer, and the connection still looks open), the receive loop
        subscribes again: a node never stays deaf to the others while /health says ok."""
        import redis.asyncio as aioredis

        while not self._closed:
            await asyncio.sleep(self._settings.probe_interval)
            pubsub = self._pubsub
            if pubsub is None or self._closed:
                continue  # not subscribed: the receive loop is reconnecting anyway
            self._probe_seen.clear()
            try:
                async with asyncio.timeout(self._settings.connect_timeout):  # there and back again
                    await self._redis.publish(self._probe_channel, b"probe")
                    await self._probe_seen.wait()
            except (OSError, TimeoutError, aioredis.RedisError):
                # Not heard, or Redis did not even take it (a network that holds packets without closing
                # anything): subscribe again. If Redis is really away, that fails and the node is degraded.
                if pubsub is self._pubsub:
                    self._deaf = True
