"""decode -> look up the handler -> await it -> answer errors. One call per client message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any

from . import errors
from .clients import GatewayConnection
from .connection import DONE, REPLYING, Reply, State
from .errors import ClientError, ClientGone
from .metrics import Metrics
from .plugins import HookTimedOut
from .protocol import PROTOCOL, PUBLISH, Decoder, encode_id
from .ratelimit import Verdict
from .registry import HandlerRegistry
from .supervision import Throttled

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 10.0  # plugins.hook_timeout's default
TIMEOUT_LOG_INTERVAL = 10.0  # seconds between two lines about handlers that ran out of time (with a count)


def hook_timed_out(timeout: float) -> ClientError:
    """What a client is answered when a plugin's hook or handler ran past `plugins.hook_timeout`
    (`plugins.HookTimedOut`: the documented `internal error` text, with a detail that says it is temporary)."""
    return HookTimedOut(timeout)


class _Work:
    """Work in flight for one client: what runs it, when its time is up, and why it was cancelled.

    A message's handler that suspended is cancelled where it waits: through the task that runs it (`task`: the
    current task when it suspended, e.g. a reader's; else, when it was driven by hand outside a task, the task
    that drives its rest, known at its first resumption). Before that task is known, through the first awaitable
    it yielded (`first`: cancelling the future a task waits on wakes the task with CancelledError, as
    `Task.cancel` does, but uncounted: an `asyncio.timeout` inside the handler then takes it for its own), or,
    when that future was done already, at its first resumption (`_Rest`)."""

    __slots__ = ("task", "first", "deadline", "cancelled", "counted", "settled")

    def __init__(self, task: asyncio.Task[object] | None, deadline: float, first: object = None) -> None:
        self.task = task
        self.first = first
        self.deadline = deadline
        self.cancelled: str | None = None  # "timeout" or "gone" once the dispatcher cancelled it
        self.counted = False  # cancelled through Task.cancel (to be taken back with Task.uncancel)
        self.settled = False  # its cancellation was taken back

    def cancel(self, why: str) -> None:
        """Cancel the work (`why`: "timeout" or "gone"), once."""
        if self.cancelled is not None:
            return
        self.cancelled = why
        if self.task is not None:
            self.counted = True
            self.task.cancel()
        elif asyncio.isfuture(self.first):
            self.first.cancel()  # (False when done already: `_Rest` throws it in at the resumption)

    def take_back(self) -> bool:
        """Take this dispatcher's cancellation back, once; whether no other cancellation is pending."""
        if self.cancelled is None or self.settled:
            return False
        self.settled = True
        if self.counted:
            assert self.task is not None
            return self.task.uncancel() == 0
        return self.task is None or self.task.cancelling() == 0


class _Rest:
    """Awaits the rest of a handler that suspended (`first`: what it yielded, for the task that drives the rest
    to wait on). At the first resumption the work learns its task, and a cancellation asked for meanwhile that
    did not reach the task is thrown in; then the handler is delegated to as `await` would."""

    __slots__ = ("_step", "_first", "_work")

    def __init__(self, step: Coroutine[Any, Any, Any] | Generator[Any, None, Any], first: object, work: _Work) -> None:
        self._step = step
        self._first = first
        self._work = work

    def __await__(self) -> Generator[Any, None, Any]:
        step, work, value = self._step, self._work, self._first
        rest = step.__await__() if isinstance(step, Coroutine) else step
        while True:
            try:
                yield value
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:  # thrown in by the task (its cancellation)
                thrown: BaseException | None = exc
            else:
                thrown = None
            if work.task is None:
                work.task = asyncio.current_task()
                if thrown is None and work.cancelled is not None:  # asked before the task could be told
                    thrown = asyncio.CancelledError()
            if thrown is None:
                return (yield from rest)  # resumed as the task resumes it: send(None), then plain delegation
            try:
                value = step.throw(thrown)
            except StopIteration as stop:
                return stop.value
            # (it caught the exception and waits again: hand that up too)


async def _nothing() -> None:
    """What `dispatch` returns for a message that is not handled."""


class Dispatcher:
    """Routes each decoded message to its plugin handler; nothing a client sends escapes as an exception.

    Work started for a client ends with the client (docs/plugins.md, Hook reference): each message's handling
    (its handler and the hooks it awaits) runs within `hook_timeout` seconds (`plugins.hook_timeout`),
    and is cancelled on the next loop turn once the client goes (`client_gone`, called when it is
    dropped or closed by the server). Past the limit the client is answered `hook_timed_out` and the
    handler is cancelled, logged at most once per TIMEOUT_LOG_INTERVAL with plugin, hook and a count.
    `waiting_on(client)` names the plugin hook a client's handler awaited when it was cancelled, and forgets
    it (`Plugins.waiting_on`); None when it awaited none.

    A message whose handler finishes without suspending costs no bookkeeping at all, and `dispatch` then
    completes without suspending either: a reader may drive it by hand (`coroutine.send(None)`) and make a task
    only for a message that suspends. Driven by hand, only the handlers of the `eager` types start there
    (`wsgate.eager`: they need no current task before they first suspend); any other suspends first, with a
    bare yield, so that it starts in the task the reader makes for the rest. Such a message is noted as in flight
    when it suspends: messages in flight are kept in the order they began (all have the same limit), and one
    timer per dispatcher, armed only while some are in flight, cancels those past their deadline (`_sweep`).
    Cancelling is `Task.cancel` on the task that drives the rest, taken back with `Task.uncancel` once the
    message has ended (as `asyncio.timeout` does), or, before that task has resumed it once, the cancellation of
    the future it waits on (`_Work`).
    """

    def __init__(
        self,
        registry: HandlerRegistry,
        metrics: Metrics,
        decoder: Decoder,
        *,
        hook_timeout: float = HOOK_TIMEOUT,
        waiting_on: Callable[[GatewayConnection], str | None] = lambda client: None,
        eager: frozenset[str] = frozenset(),
    ) -> None:
        self.registry = registry
        self._eager = eager  # types whose handler may start outside a task (`wsgate.eager`)
        self._types = registry.types()  # (the registry is filled before the dispatcher is built)
        self._metrics = metrics
        self._decoder = decoder
        self._rate_limited = ClientError(errors.RATE_LIMITED, "the message was dropped; send less often")
        self.hook_timeout = hook_timeout
        self._waiting_on = waiting_on
        self._in_flight: dict[GatewayConnection, _Work] = {}  # messages being handled, oldest first
        self._hooks: dict[GatewayConnection, _Work] = {}  # work outside messages (`until_gone`): no deadline
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()  # (built in create_app, on the loop that serves)
        self._timed_out: dict[str, Throttled] = {}  # one throttled warning per plugin handler or hook

    @property
    def types(self) -> list[str]:
        """The message types handled, sorted (protocol 2's `connected.data.types`)."""
        return self._types

    def client_gone(self, client: GatewayConnection) -> None:
        """`client` is gone (dropped, closed, draining): the handling of its message in flight, if any, is
        cancelled now (a handler cancelled this way is not answered, only logged at debug)."""
        for work in (self._in_flight.get(client), self._hooks.get(client)):
            if work is not None:
                work.cancel("gone")

    def _sweep(self) -> None:
        """Cancel the messages in flight past their deadline (the oldest first); arm the timer for the next."""
        self._sweeper = None
        now = self._loop.time()
        for work in self._in_flight.values():
            if work.deadline > now:
                self._sweeper = self._loop.call_at(work.deadline, self._sweep)
                return
            work.cancel("timeout")

    def _begin(self, client: GatewayConnection, begun: float, first: object) -> _Work:
        """Note `client`'s message in flight, begun at `begun` (loop time): its handler suspended, yielding `first`."""
        work = self._in_flight[client] = _Work(asyncio.current_task(), begun + self.hook_timeout, first)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(work.deadline, self._sweep)
        return work

    async def until_gone(self, client: GatewayConnection, work: Awaitable[None]) -> None:
        """Await `work` done for `client` outside a message (e.g. `wsgate_client_connected`); it is cancelled
        once the client goes (`client_gone`). Its own time limit is its business."""
        task = asyncio.current_task()
        assert task is not None
        entry = self._hooks[client] = _Work(task, float("inf"))
        try:
            await work
        except asyncio.CancelledError:
            if not entry.take_back():  # (another cancellation spreads)
                raise
            log.debug("client %s left while a hook awaited; cancelled", client.id, extra={"client_id": client.id})
        finally:
            del self._hooks[client]
            entry.take_back()  # (cancelled, and the hook swallowed it: taken back all the same)

    def timed_out(self, what: str, timeout: float) -> None:
        """Log that `what` (a plugin's handler or hook) ran past `timeout` and was cancelled: throttled per `what`,
        so a storm of timeouts writes one line per interval with a count."""
        warn = self._timed_out.get(what)
        if warn is None:
            warn = self._timed_out[what] = Throttled(log, TIMEOUT_LOG_INTERVAL)
        self._metrics.error("hook_timeout")
        warn("%s did not finish within plugins.hook_timeout (%gs); cancelled", what, timeout)

    def within_rate(self, client: GatewayConnection, size: int) -> bool:
        """Account for a message of `size` characters; False (answered, or the client closed) when over its limits."""
        limiter = client.limiter
        if limiter is None:
            return True
        verdict = limiter.check(size, client.last_seen)
        if verdict is Verdict.ALLOW:
            return True
        self.reject(client, self._rate_limited)
        if verdict is Verdict.CLOSE and client.state is State.OPEN:
            log.warning("client %s stayed over its rate limit; closing", client.id, extra={"client_id": client.id})
            client.drop(errors.RATE_LIMIT_EXCEEDED)
        return False

    def dispatch(self, client: GatewayConnection, text: str) -> Coroutine[Any, Any, None]:
        """Handle one text message from `client`; every failure is answered, none escapes. Returns the coroutine
        that handles it (await it, or drive it by hand): without a rate limit, the handling itself, no
        coroutine around it.

        With a byte rate limit, what the answers hold beyond the message's own size (a `history` answer, a
        replay, a plugin's large reply) is charged to the client's byte bucket too: a 40-byte request must
        not fetch a megabyte per message the limit allows.
        """
        if client.state is not State.OPEN:
            return _nothing()  # read after the client was closed (a flood still buffered): nothing is handled
        if client.limiter is None:
            return self._handle(client, text)
        return self._limited(client, text)

    async def _limited(self, client: GatewayConnection, text: str) -> None:
        """`dispatch` for a client with rate limits."""
        limiter = client.limiter
        assert limiter is not None
        if not self.within_rate(client, len(text)):
            return
        replied = client.replied
        await self._handle(client, text)
        limiter.charge(client.replied - replied - len(text), client.last_seen)

    async def _handle(self, client: GatewayConnection, text: str) -> None:
        """Handle one message. One with an `id` (docs/protocol.md, "Request ids") is handled with a `Reply`
        on the client and in `REPLYING`, so that every answer to it carries the id, errors included; an
        invalid `id` is answered `invalid JSON format` without it. Without an id: one dict lookup.

        The handler is driven by hand: one that finishes without suspending (the common publish, subscribe,
        ping, with no hook that waits) completes here, and this coroutine with it, without a loop turn, and costs
        no bookkeeping. Only one that suspends is noted as in flight (`_begin`), with its deadline, and the
        rest awaited (`_Rest`): it is cancelled where it waits, by whichever task drives it, once past
        `hook_timeout` or once its client goes."""
        kind = None
        work = None
        replying = None
        try:
            obj = self._decoder.parse(text)
            request_id = obj.get("id")
            if request_id is not None:
                reply = client.replying = Reply(encode_id(request_id))
                replying = REPLYING.set(reply)
            message = self._decoder.message(obj, text)
            kind = message.type
            self._metrics.message_received(kind)
            if log.isEnabledFor(logging.DEBUG):  # per-message logging only at debug, and free otherwise
                log.debug("client %s sent %r", client.id, kind, extra={"client_id": client.id, "room": message.room})
            handler = self.registry.get(kind)
            if handler is None:
                if client.protocol >= PROTOCOL:  # the guide's clients get the guide's bytes: no detail
                    raise ClientError(errors.UNKNOWN_TYPE, self.registry.unknown(kind))
                raise ClientError(errors.UNKNOWN_TYPE)
            if client.overlapping and kind != PUBLISH:  # after the client's publishes still pending, as if awaited
                await client.settled()
            if kind not in self._eager and asyncio.current_task() is None:
                await asyncio.sleep(0)  # driven by hand: the handler starts in the task made for the rest
            begun = self._loop.time()  # (its deadline runs from here, after the waits above: `_sweep`'s order)
            awaitable = handler(client, message)
            step: Coroutine[Any, Any, Any] | Generator[Any, None, Any]
            if type(awaitable) is CoroutineType:
                step, steps = awaitable, awaitable.__await__()
            else:
                step = steps = awaitable.__await__()  # (any other awaitable: its iterator)
            first = next(steps, DONE)  # (`next` with a default: one done without suspending raises nothing)
            if first is DONE:
                return  # done without suspending (`finally` below still runs)
            work = self._begin(client, begun, first)
            await _Rest(step, first, work)
        except ClientError as err:
            self.reject(client, err)
        except ClientGone:
            log.debug("client %s left while its %r was handled", client.id, kind, extra={"client_id": client.id})
        except asyncio.CancelledError:
            if work is None or work.cancelled is None:  # not this dispatcher's
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the task driving it is cancelled (its client went, shutdown): it spreads
                # nobody cancelled it: a future the handler awaited was cancelled under it (by hand: a done one)
                self._failed(client, kind)
                return
            if not work.take_back():  # (another cancellation spreads)
                raise
            if work.cancelled == "gone" or client.state is not State.OPEN:
                log.debug(
                    "client %s left while its %r was handled; cancelled",
                    client.id,
                    kind,
                    extra={"client_id": client.id},
                )
            else:
                owner = self.registry.owners().get(kind or "", "?")
                awaited = self._waiting_on(client)
                self.timed_out(awaited or f"plugin {owner!r}: handler for {kind!r}", self.hook_timeout)
                client.send_error(hook_timed_out(self.hook_timeout))  # (counted as hook_timeout)
        except Exception:
            self._failed(client, kind)
        finally:
            if replying is not None:
                client.replying = None
                try:
                    REPLYING.reset(replying)
                except ValueError:  # it ended in another context than it began (a task made for its rest)
                    REPLYING.set(None)
            if work is not None:
                del self._in_flight[client]
                if work.cancelled is not None:
                    work.take_back()  # (cancelled, and the handler swallowed it: taken back all the same)
                self._waiting_on(client)  # forgets what it awaited, whoever cancelled it (else it holds the client)

    def _failed(self, client: GatewayConnection, kind: str | None) -> None:
        """A handler failed (raised, or met a cancellation nobody asked for): logged with the traceback, and the
        client answered `internal error`; its next message is handled as usual."""
        log.exception("handler for %r failed (client %s)", kind, client.id, extra={"client_id": client.id})
        self.reject(client, ClientError(errors.INTERNAL_ERROR))

    def reject(self, client: GatewayConnection, err: ClientError) -> None:
        """Count `err` and answer it to the client."""
        self._metrics.error(err.kind.label)
        client.send_error(err)
