"""The Redis broker: rooms that span processes and machines, over Redis pub/sub.

- The router hands every message to `relay` (or `append`, for rooms with history)
  in publish order. One sender task pipelines the PUBLISH commands (and history
  scripts) in that order, so each publisher's order is kept on every node. Other nodes deliver
  the bytes as they are; a node skips its own messages (the layout: `redis_schema`).
- A node subscribes only to rooms it has members in (plus the broadcast channel).
- If Redis goes away, local delivery goes on; the node reconnects with backoff and
  re-subscribes. Plain messages published meanwhile do not reach other nodes (at
  most once); messages for rooms with history are refused, never kept with a gap.
- A publisher of a room with history is told "not sent" only when Redis never saw the
  message or refused it. When Redis took it and did not answer within
  `broker.connect_timeout` (a stall), the publisher is told the outcome is unknown; the
  node still waits for the answer (ANSWER_WAIT), then sends it again with the same
  message id (PUBLISH_SCRIPT runs a message id once), and delivers a kept message to its
  own members through `receive` (`_exchange`).
- A publish with an idempotency claim goes in the same queue: in a room with history its
  claim rides in PUBLISH_SCRIPT, in a plain room ONCE_SCRIPT takes it and publishes (`relay_once`);
  only its publisher waits for the answer, and it is settled as a message of a room with history
  is (not sent, unknown, or AlreadyPublished when the claim was taken: nothing went out).
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
from ..idempotency import WINDOW, AlreadyPublished, First
from ..redaction import redact_url
from ..supervision import Supervisor, Throttled
from .base import BrokerError, Commanded, OutcomeUnknown, Receive
from .redis_schema import (
    NODE_ID_LENGTH,
    ONCE_SCRIPT,
    ONCE_SHA,
    OUTCOME_WINDOW,
    PUBLISH_SCRIPT,
    PUBLISH_SHA,
    READ_SCRIPT,
    Attempt,
    Reconnects,
    RedisNames,
    connect,
    describe,
    exchange,
    new_message_id,
    new_sender_id,
    once_args,
    publish_args,
)

if TYPE_CHECKING:
    from ..config import BrokerSettings
    from ..metrics import Metrics

log = logging.getLogger(__name__)

SUBSCRIBE_WAIT = 2.0  # longest a subscribe waits for Redis to confirm before answering anyway
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
PIPELINE_BATCH = 512
POOL_SIZE = 32  # Redis connections for commands (pub/sub has its own)
PUBSUB_POOL_SIZE = 2  # the pub/sub connection's own pool: one in use, one being released after a loss
RECONNECT_LOG_INTERVAL = 10.0  # seconds: reconnects of one kind are logged at most once per interval
RECEIVE_BATCH = 32  # messages from Redis delivered before other tasks (the flusher) get a turn
RECEIVE_POLL = 1.0  # seconds the receive loop waits for a message before looking at its state again
ANSWER_WAIT = 10.0  # seconds a batch Redis took goes on waiting for its answer after its publishers were told
RESEND_FOR = OUTCOME_WINDOW / 2  # seconds a message of unknown outcome is sent again (with its id) until answered


class _Outgoing:
    """One message waiting for the sender: relayed as it is, or (`kept`) appended to a room's history, or (`once`)
    relayed with its idempotency claim taken (ONCE_SCRIPT)."""

    __slots__ = ("room", "channel", "data", "kept", "claim", "once", "message_id", "first_sent", "in_doubt")

    def __init__(
        self,
        room: str | None,
        channel: bytes,
        data: bytes,
        kept: asyncio.Future[bytes] | None,
        claim: bytes | None = None,
        once: bool = False,
    ) -> None:
        self.room = room
        self.channel = channel
        self.data = data  # sender id + message (relay), the head to stamp (history), or the message (once)
        self.kept = kept  # history and once: resolved with the bytes that went out
        self.claim = claim  # an idempotency claim (`wsgate.idempotency.claim_id`), if any
        self.once = once
        self.message_id = "" if kept is None else new_message_id()  # PUBLISH_SCRIPT keeps each id once
        self.first_sent = 0.0  # loop time of its first attempt (0: none yet)
        self.in_doubt = False  # its publisher was told the outcome is unknown; Redis's answer is still wanted

    def fail(self, reason: str) -> None:
        """Certainly not kept (never written, or refused): the publisher is told "not sent"."""
        if self.kept is not None and not self.kept.done():
            self.kept.set_exception(BrokerError(reason))

    def doubt(self, reason: str) -> None:
        """Written, with no answer: the publisher is told the outcome is unknown, the answer still awaited."""
        if self.kept is not None:
            self.in_doubt = True
            if not self.kept.done():
                self.kept.set_exception(OutcomeUnknown(reason))


class RedisBroker:
    """See the module docstring; `state` is `ok` or `degraded`."""

    def __init__(
        self,
        settings: BrokerSettings,
        metrics: Metrics,
        node_id: bytes | None = None,
        history: HistorySettings | None = None,
        supervisor: Supervisor | None = None,
        idempotency_window: float = WINDOW,
        largest_message: int = 0,
    ) -> None:
        self._settings = settings
        self._idempotency_window = idempotency_window
        self._largest_message = largest_message  # (announced to RedisPublisher; 0: no bound)
        self._supervisor = supervisor or Supervisor(metrics)
        self._history = history or HistorySettings()
        self._metrics = metrics
        self.node_id = node_id or new_sender_id()
        assert len(self.node_id) == NODE_ID_LENGTH
        self._names = names = RedisNames(settings.prefix)
        self._room_prefix = names.room_prefix
        self._broadcast = names.broadcast
        self._control = names.control
        self._probe_channel = names.probe(self.node_id)
        self._probe_seen = asyncio.Event()
        self._deaf = False  # the probe found the subscription deaf: the receive loop reconnects
        self._receive: Receive | None = None
        self._commanded: Commanded = lambda _: None
        self._resynced: Callable[[], None] = lambda: None
        self._redis: Any = None  # commands (publish scripts, history reads, the probe)
        self._subscriber: Any = None  # the pub/sub connection's own client: its reconnects are told apart
        self._pubsub: Any = None
        self._subscribed_once = False  # a pub/sub connection after the first one is a reconnect
        self._hidden_reconnect = False  # redis-py reconnected the pub/sub connection on its own
        self._restore = asyncio.Event()  # a command connection reconnected: announce settings, load scripts
        self._warn_pubsub = Throttled(log, RECONNECT_LOG_INTERVAL)
        self._warn_commands = Throttled(log, RECONNECT_LOG_INTERVAL)
        self._garbled = Throttled(log, RECONNECT_LOG_INTERVAL)  # text from Redis that is not UTF-8
        self._writable = True  # the probe's write was taken (False: Redis refused it)
        self._outgoing: deque[_Outgoing] = deque()
        self._outgoing_ready = asyncio.Event()
        self._behind = 0  # messages queued while the batch in flight was sent, counted at its answer (`_linger`)
        self._overdue_since: float | None = None  # loop time a batch Redis took went without its answer
        self._wanted: set[str] = set()  # rooms with local members
        self._subscribed: set[str] = set()  # rooms Redis has been asked for on the current connection
        self._confirmed: dict[bytes, asyncio.Event] = {}  # channel -> set once Redis confirmed it
        self._resync = asyncio.Event()
        self._receiving = False
        self._sending = True
        self.receiving = asyncio.Event()  # set while subscribed to Redis (tests and health can wait on it)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._read_script: Any = None

    @property
    def state(self) -> str:
        """`degraded` while Redis is unreachable, the subscription is deaf, publishing fails, or Redis refuses
        writes (the probe's SET: a read-only replica, maxmemory, MISCONF); `ok` otherwise."""
        return "ok" if self._receiving and self._sending and self._writable else "degraded"

    # --- life cycle -------------------------------------------------------------------

    async def start(
        self, receive: Receive, resynced: Callable[[], None] = lambda: None, commanded: Commanded = lambda _: None
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise BrokerError("broker.url names Redis, but redis-py is missing: pip install 'wsgate[redis]'") from None
        self._receive = receive
        self._resynced = resynced
        self._commanded = commanded
        name = f"wsgate-{self.node_id.decode()[:8]}"
        try:
            self._redis = connect(
                self._settings.url,
                self._settings.connect_timeout,
                name,
                POOL_SIZE,
                Reconnects(self._commands_reconnected).watch,
            )
            self._subscriber = connect(
                self._settings.url,
                self._settings.connect_timeout,
                f"{name}-pubsub",
                PUBSUB_POOL_SIZE,
                self._pubsub_connected,
            )
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
                await self._subscriber.aclose()
                raise BrokerError(message) from None
            log.error("broker: %s; starting degraded (broker.required = false), retrying", message)
            self._metrics.broker_error()
        spawn = self._supervisor.spawn
        self._tasks = [
            spawn("redis-receive", self._receive_loop),
            spawn("redis-subscriptions", self._subscription_loop),
            spawn("redis-send", self._send_loop),
            spawn("redis-probe", self._probe_loop),
            spawn("redis-restore", self._restore_loop),
        ]

    async def _prepare(self) -> None:
        """Load the history script (sent by its SHA from now on) and announce the history settings, and the
        longest message a client can be sent (`overhead.largest_message`), to publishers outside the gateway
        (`RedisPublisher`). Run at start and on every reconnect."""
        await self._redis.script_load(PUBLISH_SCRIPT)
        history = self._history
        await self._redis.set(
            self._names.history_config,
            json.dumps(
                {
                    "rooms": list(history.rooms),
                    "size": history.size,
                    "ttl": history.ttl,
                    "idempotency_window": self._idempotency_window,
                    "largest_message": self._largest_message,
                }
            ),
        )

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
        if self._subscriber is not None:
            await self._subscriber.aclose()

    # --- reconnects redis-py makes on its own -------------------------------------------

    def _commands_reconnected(self, connection: object) -> None:
        """A connection of the command pool was lost and connected again (`Reconnects`). Redis may have
        restarted empty: the history settings are announced and the script loaded again (`_restore_loop`)."""
        self._metrics.connection_reconnected("commands")
        self._warn_commands(
            "broker: a Redis connection of the command pool was lost and connected again "
            "(commands connection); announcing the history settings again"
        )
        self._restore.set()

    def _pubsub_connected(self, connection: object) -> None:
        """Every connect of the pub/sub client's pool. The current subscription's own connection connecting
        again is redis-py reconnecting inside `get_message` or `subscribe` (and resubscribing right after):
        the receive loop treats it as the reconnect it is (`_pubsub_reconnected`)."""
        if self._pubsub is not None and connection is self._pubsub.connection:
            self._hidden_reconnect = True

    async def _restore_loop(self) -> None:
        """After a command connection reconnected, write again what this node keeps in Redis (`_prepare`),
        until it works; a pub/sub reconnect does it in the receive loop."""
        import redis.asyncio as aioredis

        backoff = BACKOFF_START
        while not self._closed:
            await self._restore.wait()
            self._restore.clear()
            if self._closed:
                return
            try:
                async with asyncio.timeout(self._settings.connect_timeout):
                    await self._prepare()
                backoff = BACKOFF_START
            except (OSError, TimeoutError, aioredis.RedisError):
                self._restore.set()  # Redis is away or refuses writes: the probe says so; try again later
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    # --- relay ------------------------------------------------------------------------

    def relay(self, room: str | None, message: bytes) -> None:
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)  # Redis cannot keep up (or is away): other nodes miss this one
            return
        self._outgoing.append(_Outgoing(room, self._names.channel(room), self.node_id + message, None))
        self._outgoing_ready.set()

    def append(self, room: str, head: bytes, claim: bytes | None = None) -> asyncio.Future[bytes]:
        """Queued like any relay, but sent as one script that gives out the offset, keeps the message
        and publishes it (marked as this node's: the router delivers it here), taking `claim` if any."""
        kept: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue_answered(_Outgoing(room, self._names.channel(room), head, kept, claim))
        return kept

    def relay_once(self, room: str, message: bytes, claim: bytes) -> asyncio.Future[bytes]:
        """Queued like any relay, sent as ONCE_SCRIPT: the claim taken and the message published in one step
        (marked as this node's: the router delivers it here once the future gives it)."""
        sent: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue_answered(_Outgoing(room, self._names.channel(room), message, sent, claim, once=True))
        return sent

    def _queue_answered(self, item: _Outgoing) -> None:
        """Queue a message whose publisher waits for Redis's answer, or fail it now when it cannot be sent."""
        if len(self._outgoing) >= self._settings.publish_queue:
            self._metrics.broker_dropped(1)
            item.fail(f"{len(self._outgoing)} messages are waiting for Redis (broker.publish_queue)")
        elif self._closed:
            item.fail("the gateway is shutting down")
        elif not (self._sending or self._receiving):  # Redis is away: say so now, not after the next backoff
            item.fail("Redis is unreachable")
        elif self._overdue_since is not None:  # never written: certain
            item.fail(f"Redis has not answered for {asyncio.get_running_loop().time() - self._overdue_since:.1f}s")
        else:
            self._outgoing.append(item)
            self._outgoing_ready.set()

    # --- commands ---------------------------------------------------------------------

    async def command(self, payload: bytes) -> int:
        """PUBLISH on the control channel (a command connection, within `broker.connect_timeout`): Redis's count
        of receivers, less this node's own subscription, which gets it back in Redis's order (`_on_message`).
        Not while this node's subscription is away: it would not get its own command back."""
        import redis.asyncio as aioredis

        if self._closed:
            raise BrokerError("the gateway is shutting down")
        if not self._receiving:
            raise BrokerError("Redis did not take the command: this node's subscription is away (reconnecting)")
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                receivers = await self._redis.publish(self._control, self.node_id + payload)
        except TimeoutError:  # handed over, no answer: Redis may have run it (then it comes back, in its order)
            self._metrics.broker_error()
            raise OutcomeUnknown(f"Redis did not answer within {self._settings.connect_timeout:g}s") from None
        except (OSError, aioredis.RedisError) as exc:
            self._metrics.broker_error()
            raise BrokerError(f"Redis did not take the command: {describe(exc)}") from None
        return max(0, int(receivers) - 1)

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
        """Send what is queued, one batch at a time. The batch after one that held several messages, or behind
        which messages were queued while it was in flight, may first wait for more (`_linger`); any other goes at
        once."""
        backoff = BACKOFF_START
        while not self._closed:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            expected = 0  # the batch answered, and what was queued while it was in flight (`_send_batch`)
            while self._outgoing and not self._closed:
                if expected > 1:  # (no more than the queue may hold: a full queue refuses the rest)
                    await self._linger(min(expected, PIPELINE_BATCH, self._settings.publish_queue))
                batch = [self._outgoing.popleft() for _ in range(min(len(self._outgoing), PIPELINE_BATCH))]
                self._behind = 0
                if not await self._exchange(batch):
                    expected = 0  # (what goes again goes as soon as the backoff is over)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if not self._sending:
                    log.info("broker: publishing to Redis works again")
                    self._sending = True
                backoff = BACKOFF_START
                expected = len(batch) + self._behind  # (1: a publisher that awaits each publish: no wait)

    async def _linger(self, expected: int) -> None:
        """Wait at most `broker.linger` until `expected` messages are queued: the answered batch's size plus what
        was queued while it was in flight. A publisher with many messages in flight answers each delivered batch
        with as many new ones; without the wait, its messages split into two batches that alternate, each
        delivered in a loop turn of its own (twice the socket writes per message on every node;
        benchmarks/RESULTS.md, 2026-12-06). A publisher that awaits each publish (batches of one, nothing queued
        behind) never waits, and a batch that starts after the queue was empty goes at once."""
        if self._settings.linger <= 0:
            return
        try:
            async with asyncio.timeout(self._settings.linger):
                while len(self._outgoing) < expected and not self._closed:
                    self._outgoing_ready.clear()
                    await self._outgoing_ready.wait()
        except TimeoutError:
            pass

    async def _exchange(self, batch: list[_Outgoing]) -> bool:
        """Send one batch and settle every message in it; returns whether Redis answered.

        What a publisher is told follows what Redis can have done (DESIGN "The fault model"):
        - nothing written (no connection within `broker.connect_timeout`, or it failed): "not sent";
        - an error answer (READONLY, OOM): that message was not kept, "not sent";
        - written and not answered within `broker.connect_timeout`: "outcome unknown" (OutcomeUnknown).
          The answer is still awaited on the same connection for ANSWER_WAIT (a stall ends), while new
          messages for rooms with history are refused before anything is written ("not sent");
        - written and the connection lost, or no answer within ANSWER_WAIT: messages for rooms with history
          are sent again first, with their message ids (a second run is answered as the first: nothing is
          kept twice), until Redis answers or RESEND_FOR has passed. Plain messages are dropped and counted
          (relay is at most once).
        A message of unknown outcome that Redis kept goes to `receive`, so this node's members get it too; so
        does one whose future was cancelled (nobody waits for the answer, which the router would deliver).
        """
        import redis.asyncio as aioredis

        attempt = Attempt()
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._send_batch(batch, attempt), name="wsgate-redis-send-batch")
        timeout = self._settings.connect_timeout
        try:
            await asyncio.wait({task}, timeout=timeout)
            if not task.done() and attempt.written:
                self._overdue_since = loop.time()
                unanswered = f"Redis did not answer within broker.connect_timeout ({timeout:g}s)"
                for item in batch:
                    item.doubt(unanswered)
                self._refuse_queued(unanswered)
                self._metrics.broker_error()
                if self._sending:
                    log.warning(
                        "broker: %s (stalled?); publishers of rooms with history are told the outcome is "
                        "unknown, new ones are refused until it answers",
                        unanswered,
                    )
                self._sending = False
                await asyncio.wait({task}, timeout=ANSWER_WAIT)
        except BaseException:  # the gateway is closing: nobody waits forever, and nobody is told a guess
            for item in batch:
                (item.doubt if attempt.written else item.fail)("the gateway is shutting down")
            raise
        finally:
            self._overdue_since = None
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        error = TimeoutError() if task.cancelled() else task.exception()
        if error is None:
            if refused := task.result():  # Redis ran the batch but refused these: count them, keep going
                self._metrics.broker_dropped(refused)
                self._metrics.broker_error()
            return True
        if not isinstance(error, (OSError, TimeoutError, aioredis.RedisError)):
            for item in batch:
                (item.doubt if attempt.written else item.fail)("the message was not sent")
            raise error
        self._metrics.broker_error()
        if attempt.written:
            reason = (
                f"Redis did not answer within broker.connect_timeout ({timeout:g}s)"
                if task.cancelled()
                else f"the connection to Redis was lost before it answered: {describe(error)}"
            )
            for item in batch:
                item.doubt(reason)
        else:
            for item in batch:
                item.fail(
                    f"Redis could not be reached within broker.connect_timeout ({timeout:g}s)"
                    if task.cancelled()
                    else f"Redis did not take the message: {describe(error)}"
                )
        again = [item for item in batch if item.in_doubt and loop.time() - item.first_sent < RESEND_FOR]
        lost = len(batch) - len(again)
        if lost:
            self._metrics.broker_dropped(lost)
        if any(item.in_doubt and loop.time() - item.first_sent >= RESEND_FOR for item in batch):
            log.warning(
                "broker: Redis did not answer messages sent %.0fs ago; their outcome stays unknown "
                "(kept or not: a later offset or a catch-up brings the kept ones here)",
                RESEND_FOR,
            )
        self._outgoing.extendleft(reversed(again))  # first, in order: their room's later messages follow them
        if self._sending:
            log.warning(
                "broker: publishing to Redis failed (%s); other nodes miss messages "
                "until it is back, local delivery goes on",
                describe(error),
            )
        self._sending = False
        return False

    def _refuse_queued(self, reason: str) -> None:
        """Messages for rooms with history still queued behind an overdue batch were never written: "not sent"."""
        queued, self._outgoing = self._outgoing, deque()
        for item in queued:
            if item.kept is None or item.in_doubt:
                self._outgoing.append(item)  # relays, and messages of unknown outcome that are sent again
            else:
                item.fail(f"{reason}; it was not written")

    async def _send_batch(self, batch: list[_Outgoing], attempt: Attempt) -> int:
        """One write of the batch, in order (`exchange`); returns how many messages Redis refused (their
        futures have failed). A message whose publisher was told the outcome is unknown and that Redis kept
        (now, or at an earlier run of its id) goes to `receive`: this node's members get it in offset order.

        A batch with history messages begins with SCRIPT LOAD, so a Redis that restarted (and lost the
        script) still runs every message in this one write, in order; the scripts then run by SHA.
        """
        size, ttl, window = self._history.size, self._history.ttl, self._idempotency_window
        commands: list[tuple[Any, ...]] = []
        if any(item.kept is not None and not item.once for item in batch):
            commands.append(("SCRIPT", "LOAD", PUBLISH_SCRIPT))
        if any(item.once for item in batch):
            commands.append(("SCRIPT", "LOAD", ONCE_SCRIPT))
        loads = len(commands)
        now = asyncio.get_running_loop().time()
        for item in batch:
            item.first_sent = item.first_sent or now
            if item.kept is None:
                commands.append(("PUBLISH", item.channel, item.data))
            elif item.once:
                assert item.room is not None and item.claim is not None
                keys = self._names.once_keys(item.room, item.message_id, item.claim)
                args = once_args(item.data, item.channel, self.node_id, claim_window=window)
                commands.append(("EVALSHA", ONCE_SHA, len(keys), *keys, *args))
            else:
                assert item.room is not None
                keys = self._names.publish_keys(item.room, item.message_id, item.claim)
                commands.append(
                    (
                        "EVALSHA",
                        PUBLISH_SHA,
                        len(keys),
                        *keys,
                        *publish_args(item.data, size, ttl, item.channel, self.node_id, claim_window=window),
                    )
                )
        results = await exchange(self._redis, commands, attempt)
        self._behind = len(self._outgoing)  # queued while in flight (before anyone learns of these answers)
        refused = 0
        for item, result in zip(batch, results[loads:], strict=False):
            if isinstance(result, Exception):
                item.fail(f"Redis refused the message: {describe(result)}")
                refused += 1
            elif item.kept is not None:
                if (result[0] if item.once else result[3]) == 2:  # the claim was taken: nothing went out
                    if not item.kept.done():
                        position = None if item.once or not result[1] else Position(int(result[0]), result[1].decode())
                        item.kept.set_exception(AlreadyPublished(First(position)))
                    continue
                stamped = item.data if item.once else stamp(item.data, int(result[0]), result[1].decode())
                if not item.kept.done():
                    item.kept.set_result(stamped)
                elif (item.in_doubt or item.kept.cancelled()) and self._receive is not None:
                    assert item.room is not None
                    self._receive(item.room, stamped)  # told "unknown", or nobody waits any more: it went out
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

    async def _connect_pubsub(self) -> bool:
        """Subscribe on a new pub/sub connection; returns whether an earlier one was lost (a reconnect)."""
        pubsub = self._subscriber.pubsub()
        rooms = set(self._wanted)
        try:
            await pubsub.subscribe(
                self._broadcast,
                self._control,
                self._probe_channel,
                *(self._room_prefix + r.encode() for r in rooms),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # give its connection back to the pool, or retries drain the pool
            raise
        self._pubsub, self._subscribed = pubsub, rooms
        self._hidden_reconnect = False
        self._receiving = True
        self.receiving.set()
        reconnect, self._subscribed_once = self._subscribed_once, True
        return reconnect

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
                        reconnect = await self._connect_pubsub()
                        try:
                            await self._prepare()  # Redis may have restarted: scripts and settings are gone
                        except aioredis.ResponseError:  # refused (a read-only replica): subscribed all the
                            self._restore.set()  # same; the restore loop tries again, the probe says degraded
                    self._sending = True  # Redis answers again: let the next publish prove otherwise
                    self._outgoing_ready.set()
                    self._metrics.broker_reconnected()
                    if reconnect:
                        self._metrics.connection_reconnected("pubsub")
                    log.info(
                        "broker: reconnected to Redis (pubsub connection); receiving %d rooms again",
                        len(self._subscribed),
                    )
                    self._resync.set()
                    self._resynced()  # what was relayed while away never came: rooms with history catch up
                message = await self._pubsub.get_message(timeout=RECEIVE_POLL)
                if self._hidden_reconnect:
                    self._pubsub_reconnected()
                if message is not None:
                    self._deaf = False  # it hears: whatever the probe thought
                if self._deaf:
                    self._deaf = False
                    self._metrics.broker_error()
                    log.warning(
                        "broker: the probe did not come back through pub/sub within %ss: the subscription "
                        "is deaf (Redis dropped it, or the network holds it); subscribing again",
                        self._settings.connect_timeout,
                    )
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
                    log.warning(
                        "broker: lost the connection to Redis (%s); reconnecting, local delivery goes on", describe(exc)
                    )
                self._metrics.broker_error()
                self._hidden_reconnect = False  # whatever redis-py did: the reconnect below is this loop's
                await self._drop_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _pubsub_reconnected(self) -> None:
        """redis-py lost the pub/sub connection and connected it again on its own (a CLIENT KILL, the output
        buffer limit, a reset): it has resubscribed, but whatever was relayed meanwhile never came. Counted,
        logged, and followed by what a reconnect of this loop does: the rooms with history catch up from it,
        the subscriptions are brought in line, and the settings announced again (Redis may be a new one)."""
        self._hidden_reconnect = False
        self._metrics.broker_reconnected()
        self._metrics.connection_reconnected("pubsub")
        self._warn_pubsub(
            "broker: Redis dropped this node's subscription and redis-py connected it again "
            "(pubsub connection); subscribed again, rooms with history catch up, messages of "
            "plain rooms relayed meanwhile are lost"
        )
        self._resync.set()
        self._restore.set()
        self._resynced()

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
        if channel == self._control:  # every node's, this one's too: all carried out in the order Redis gives
            self._commanded(payload[NODE_ID_LENGTH:])
            return
        if payload[:NODE_ID_LENGTH] == self.node_id:
            return  # delivered locally when it was published
        assert self._receive is not None
        try:
            room = None if channel == self._broadcast else channel[len(self._room_prefix) :].decode()
            self._receive(room, payload[NODE_ID_LENGTH:])
        except ValueError as exc:  # not UTF-8 (another publisher on our channels): it never reaches a client
            self._metrics.broker_error()
            self._garbled("broker: a message on %r was not valid text (%s); dropped", channel, exc)

    async def _probe_write(self, key: str, expiry_ms: int) -> None:
        """The probe's write (see `_probe_loop`); sets `_writable`, logging each change once.
        Raises what redis-py raises for a connection that fails (not for a refusal)."""
        from redis.exceptions import ResponseError

        try:
            await self._redis.set(key, b"1", px=expiry_ms)
        except ResponseError as exc:  # ReadOnlyError, OutOfMemoryError, NoPermissionError, MISCONF...
            if self._writable:
                self._metrics.broker_error()
                log.error(
                    "broker: Redis refuses writes (%s); messages for rooms with history are refused and "
                    "the broker is degraded (/ready answers 503) until it takes them again",
                    describe(exc),
                )
            self._writable = False
            return
        if not self._writable:
            log.info("broker: Redis takes writes again")
            self._restore.set()  # what was refused meanwhile (the announced settings) is written again
        self._writable = True

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
        """Every `broker.probe_interval`:

        - write: SET a key of this node's (`<prefix>:probe:<node id>`, expiring). Redis that refuses it (a
          read-only replica after a failover, `maxmemory` with noeviction, MISCONF, an ACL) refuses the
          history scripts too, which PUBLISH alone never shows (a replica takes it): the broker is degraded
          and the fault logged once, until a write is taken again. A write shows what works, where ROLE
          would show only one of the causes.
        - hear: publish to this node's own probe channel and expect it back through pub/sub within
          `broker.connect_timeout`. If it does not come (Redis dropped the subscriber with CLIENT KILL or
          for its output buffer, and the connection still looks open), the receive loop subscribes again:
          a node never stays deaf to the others while /health says ok.
        """
        import redis.asyncio as aioredis

        key = self._probe_channel.decode()
        expiry_ms = max(1, round((2 * self._settings.probe_interval + self._settings.connect_timeout) * 1000))
        while not self._closed:
            await asyncio.sleep(self._settings.probe_interval)
            pubsub = self._pubsub
            if pubsub is None or self._closed:
                continue  # not subscribed: the receive loop is reconnecting anyway
            self._probe_seen.clear()
            try:
                async with asyncio.timeout(self._settings.connect_timeout):  # there and back again
                    await self._probe_write(key, expiry_ms)
                    await self._redis.publish(self._probe_channel, b"probe")
                    await self._probe_seen.wait()
            except (OSError, TimeoutError, aioredis.RedisError):
                # Not heard, or Redis did not even take it (a network that holds packets without closing
                # anything): subscribe again. If Redis is really away, that fails and the node is degraded.
                if pubsub is self._pubsub:
                    self._deaf = True
