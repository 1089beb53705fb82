"""The one route every message takes, whoever sends it and whatever the room.

    encoded once ─► (room keeps history) broker.append: offset and epoch stamped, kept, relayed
                 └► (any other room, broadcasts) broker.relay, queued in the same order
                 ─► local fan-out (hub.deliver), in the order messages were published on this node,
                    and, in a room with history, in offset order

A client's publish and broadcast, `gateway.publish`/`broadcast`, the HTTP API,
the dashboard and presence events all come here. Messages from other nodes
arrive through `receive` and go to the same fan-out. Because the broker sends
what it is handed in order and local delivery follows publish order too, one
publisher's messages reach every subscriber in the order sent, on every node,
whatever the mix of plain rooms, rooms with history and broadcasts
(python-socketio `AsyncPubSubManager.emit`: local first, the backend only transports).

In a room with history, messages go out in offset order: the rules (offsets,
epochs, held messages, gap waits, catch-up reads, late messages, recovering
members' fences) are `wsgate.ordering`'s, a core without I/O. The router is its
driver: it feeds it publishes, the broker's answers, relays, history reads and
the passing of time (asyncio timers), and carries out what it returns
(`hub.deliver`, finishing a publisher's wait, history reads in tasks, the
`history_gap` metric and warning).

A message for a room with history is delivered only once it has its offset. When
it cannot be kept (Redis away, or it refused), it is delivered nowhere and the
publisher gets BrokerError: a resuming client never meets a silent gap. When Redis
took it without answering in time, the publisher gets OutcomeUnknown (never "not
sent": Redis may run it when it wakes); if it was kept, the broker learns it later
and hands the stamped bytes to `receive`, so this node's members get it too, in
offset order, once (DESIGN "The fault model").

A publish with an idempotency claim (`wsgate.idempotency`) takes the same route,
and the broker takes the claim in the step that keeps or relays the message. In a
room with history that is `append`, as for any kept message. In a room without,
`relay_once` goes in order with the node's relays, and only this publish waits
for its answer (one Redis round trip): it is not queued in the ordering, so no
other publish waits behind it; its local delivery follows the answer. A retry
whose claim was taken raises AlreadyPublished and is delivered nowhere.

A publisher waits on a future of the router's own, never on the broker's: when
it is cancelled (its client went, its handler timed out), what the broker does
with the message still reaches this node's members, from the broker future's
callback, as it reaches the other nodes'.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys

from . import errors
from .broker import Broker
from .broker.base import OutcomeUnknown
from .connection import Connection
from .errors import ClientError
from .history import Position
from .hub import Hub
from .metrics import Metrics
from .ordering import GAP_WAIT, Action, CancelWake, Deliver, Done, Fail, Gap, Pending, Read, Wake
from .overhead import too_large
from .rooms import RoomPatterns

log = logging.getLogger(__name__)

Waiter = asyncio.Future[int]
"""A publisher's wait for its message's local count (the core's waiter token)."""


class Router:
    """Publishes messages (local fan-out plus relay, with history where the room keeps it) and receives relayed
    ones; drives the hub's `Ordering` (`wsgate.ordering`) for rooms with history."""

    def __init__(
        self,
        hub: Hub,
        broker: Broker,
        history_rooms: RoomPatterns,
        metrics: Metrics,
        *,
        gap_wait: float = GAP_WAIT,
        largest: int = 0,
    ) -> None:
        """`largest`: the longest encoded message a client may be sent (`overhead.largest_message`; 0: no bound);
        a longer one is refused (`begin`)."""
        self._hub = hub
        self._largest = largest or sys.maxsize
        self._order = hub.ordering
        self._pending = self._order.pending  # (never rebound: read on the fast path)
        self._broker = broker
        self._history_rooms = history_rooms
        self._metrics = metrics
        self._gap_wait = gap_wait
        self._skips: dict[Waiter, Connection] = {}  # a queued publish's connection left out ("skip_self")
        self._wakes: dict[str, asyncio.TimerHandle] = {}  # room -> its wake-up (Wake)
        self._reads: set[asyncio.Task[None]] = set()  # history reads under way (Read)
        self._closed = False

    def keeps_history(self, room: str | None) -> bool:
        """Whether messages to `room` get offsets (`history.rooms`)."""
        return self._history_rooms.match(room)

    def begin(
        self,
        room: str | None,
        message: bytes,
        *,
        history: bool | None = None,
        skip: Connection | None = None,
        claim: bytes | None = None,
    ) -> int | Waiter:
        """`publish` up to its first wait: on return the message has its place in every order (the room's, its
        publisher's), and what is left is the answer; except with a `claim` in a room without history, ordered
        only once the broker took the claim (its publisher must await the answer before publishing again). An
        int: delivered now (the local clients it was queued for); else the future of that int, or of the errors
        below.

        Send `message` (one encoded JSON object) to `room`'s members on every node (None: every client).

        `history`: keep it in the room's history; by default, when `history.rooms` matches the room
        (presence events pass False: they are not publications). `skip`: a local connection left out of this
        node's delivery (`"skip_self": true`); the message is kept and relayed all the same. Returns how many
        local clients it was queued for. Raises BrokerError when the room keeps history and the message was not
        kept (then nobody got it), OutcomeUnknown (a BrokerError) when the broker took it and did not answer in time
        (then it reaches every member once if it was kept, this node's through `receive`, or nobody).
        Plain rooms and broadcasts never raise: local delivery goes on, other nodes get it at most once.

        `claim`: an idempotency claim (`wsgate.idempotency.claim_id`; a room, never a broadcast). Raises
        AlreadyPublished when a publish with it went out within the window, on any node (nothing is delivered or
        kept). In a room without history it makes the publish raise as one with history does (BrokerError,
        OutcomeUnknown): the claim needs the broker.

        Raises ClientError(`message is too large`) before anything happens when `message` is longer than
        `largest`: it would not fit in what may wait for one client, as delivered or in a `history` answer.
        """
        if len(message) > self._largest:
            raise ClientError(errors.MESSAGE_TOO_LARGE, too_large(len(message), self._largest))
        kept = room is not None and (self._history_rooms.match(room) if history is None else history)
        if kept:
            assert room is not None
            # (answered at once by the memory broker, and still queued: held behind an earlier offset, it holds
            # later publishes back, as tests/test_ordering found; a broker without claims is called as before)
            head = message[:-1]
            stamped = self._broker.append(room, head) if claim is None else self._broker.append(room, head, claim)
        elif claim is not None:
            assert room is not None
            return self._begin_once(room, message, skip, claim)
        else:
            self._broker.relay(room, message)
            if not self._pending:  # the common case: no offset pending, deliver now
                return self._deliver(room, message, skip)
        waiter = self._waiter(skip)
        entry = self._order.queue(room, kept, waiter)
        if not kept:
            self._carry_out(self._order.answered(entry, message, None, self._deadline()))
        elif stamped.done():
            self._answer(entry, stamped)
        else:
            stamped.add_done_callback(lambda done: self._answer(entry, done))
        return waiter

    async def publish(
        self,
        room: str | None,
        message: bytes,
        *,
        history: bool | None = None,
        skip: Connection | None = None,
        claim: bytes | None = None,
    ) -> int:
        """`begin`, then its answer: how many local clients the message was queued for (see `begin`)."""
        started = self.begin(room, message, history=history, skip=skip, claim=claim)
        return started if isinstance(started, int) else await started

    def _begin_once(self, room: str, message: bytes, skip: Connection | None, claim: bytes) -> Waiter:
        """`begin` with a claim in a room without history: relayed once the broker took the claim
        (`relay_once`), then delivered here (`_sent_once`)."""
        sent = self._broker.relay_once(room, message, claim)
        waiter = self._waiter(skip)
        if sent.done():  # (the memory broker: delivered now, as a plain publish is)
            self._sent_once(room, waiter, skip, sent)
        else:
            sent.add_done_callback(functools.partial(self._sent_once, room, waiter, skip))
        return waiter

    def _waiter(self, skip: Connection | None) -> Waiter:
        """What a publisher awaits: a future of the router's own, never the broker's, so that its cancellation (its
        client went, its handler timed out) cannot keep the broker's answer from this node's members (the
        broker future's callback delivers it). `skip` is remembered for it until the core delivers, finishes or
        fails it, cancelled or not: a publisher that went away still leaves its own connection out."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        if skip is not None:
            self._skips[waiter] = skip
        return waiter

    def receive(self, room: str | None, message: bytes) -> None:
        """A message another node published (the broker's callback): deliver it to this node's members."""
        if room is not None and self._history_rooms.match(room):
            self._carry_out(self._order.relayed(room, message, self._deadline()))  # (unstamped: straight out)
        else:
            self._deliver(room, message)

    def expect(self, room: str, position: Position) -> None:
        """A recovering client read `room`'s history up to `position` (`Ordering.expect`)."""
        self._carry_out(self._order.expect(room, position, self._deadline()))

    def resynced(self) -> None:
        """The broker subscribed again after losing its connection: what was relayed meanwhile never came.
        Every followed room catches up from its history."""
        self._carry_out(self._order.resynced())

    def forget(self, room: str) -> None:
        """`room` lost its last local member: stop following its offsets."""
        if room in self._order.sequences:
            self._carry_out(self._order.forget(room, self._deadline()))

    # --- carrying out the core's actions ----------------------------------------------------

    def _answer(self, entry: Pending[Waiter], stamped: asyncio.Future[bytes]) -> None:
        """The broker answered a queued publish (the future `append` returned)."""
        error = _error_of(stamped)
        message = stamped.result() if error is None else b""
        self._carry_out(self._order.answered(entry, message, error, self._deadline()))

    def _sent_once(self, room: str, waiter: Waiter, skip: Connection | None, sent: asyncio.Future[bytes]) -> None:
        """The broker answered a claimed publish to a room without history (the future `relay_once` returned):
        it went out, so this node's members get it, whether or not its publisher still waits (in publish order
        behind offsets still pending: queued as answered); or its publisher is told why not."""
        error = _error_of(sent)
        if error is not None:
            self._skips.pop(waiter, None)
            if not waiter.done():  # (the publisher went away)
                waiter.set_exception(error)
        elif not self._pending:
            self._skips.pop(waiter, None)
            _finish(waiter, self._deliver(room, sent.result(), skip))
        else:
            entry = self._order.queue(room, False, waiter)
            self._carry_out(self._order.answered(entry, sent.result(), None, self._deadline()))

    def _carry_out(self, actions: list[Action[Waiter]]) -> None:
        """Do what the core asked, in order. The core's state has already moved on: an action that fails is
        logged, its publisher gets the exception (answered `internal error`), and the rest still run, so no
        publisher is left waiting."""
        for action in actions:
            try:
                self._carry_out_one(action)
            except Exception as exc:
                log.exception("routing: carrying out %s failed", type(action).__name__)
                waiter = getattr(action, "waiter", None)
                if waiter is not None and not waiter.done():
                    self._skips.pop(waiter, None)
                    waiter.set_exception(exc)

    def _carry_out_one(self, action: Action[Waiter]) -> None:
        if isinstance(action, Deliver):
            skip = self._skips.pop(action.waiter, None) if self._skips and action.waiter is not None else None
            delivered = self._deliver(action.room, action.message, skip)
            if action.waiter is not None:
                _finish(action.waiter, delivered)
        elif isinstance(action, Done):
            self._skips.pop(action.waiter, None)
            _finish(action.waiter, action.clients)
        elif isinstance(action, Fail):
            self._skips.pop(action.waiter, None)
            if not action.waiter.done():  # (the publisher went away)
                action.waiter.set_exception(action.error)
        elif isinstance(action, Wake):
            self._cancel_wake(action.room)
            loop = asyncio.get_running_loop()
            self._wakes[action.room] = loop.call_at(action.at, self._woke, action.room, action.at)
        elif isinstance(action, CancelWake):
            self._cancel_wake(action.room)
        elif isinstance(action, Read):
            self._read(action)
        elif isinstance(action, Gap):
            log.warning(
                "room %r: offsets %d to %d are lost (not relayed, no longer in the history); sending what came after",
                action.room,
                action.first,
                action.last,
                extra={"room": action.room},
            )
            self._metrics.error("history_gap")

    def _deliver(self, room: str | None, message: bytes, skip: Connection | None = None) -> int:
        count = self._hub.deliver(room, message, skip)
        self._metrics.messages_delivered(count)
        return count

    def _deadline(self) -> float:
        """When a message held now stops waiting for an earlier offset."""
        return asyncio.get_running_loop().time() + self._gap_wait

    def _cancel_wake(self, room: str) -> None:
        handle = self._wakes.pop(room, None)
        if handle is not None:
            handle.cancel()

    def _woke(self, room: str, at: float) -> None:
        self._wakes.pop(room, None)  # (the loop runs a timer up to its clock's resolution early)
        self._carry_out(self._order.woke(room, max(at, asyncio.get_running_loop().time())))

    def _read(self, read: Read) -> None:
        if self._closed:
            return  # shutting down: nothing will be delivered
        task = asyncio.get_running_loop().create_task(self._read_history(read), name=f"wsgate-fill-{read.room}")
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_history(self, read: Read) -> None:
        replay = None
        try:
            replay = await self._broker.history_replay(read.room, read.since)
        except Exception:  # (BrokerError: Redis away; anything else is logged) held messages still go out
            log.debug("room %r: reading missing offsets failed", read.room, exc_info=True)
        finally:  # answered whatever happened, cancellation included: else the room's catch-up never ends
            self._carry_out(self._order.read(read.ticket, read.since, replay, self._deadline()))

    def close(self) -> None:
        """Stop the timers and history reads the ordering asked for (at shutdown, after the broker closed)."""
        self._closed = True
        for handle in self._wakes.values():
            handle.cancel()
        self._wakes.clear()
        for task in self._reads:
            task.cancel()


def _error_of(answer: asyncio.Future[bytes]) -> BaseException | None:
    """What a broker's finished future says went wrong (None: it gave the message). A cancelled one was
    abandoned after it was handed over: its outcome is unknown (the broker passes the message to `receive`
    if it went out, as after OutcomeUnknown)."""
    if answer.cancelled():
        return OutcomeUnknown("the broker's answer was abandoned")
    return answer.exception()


def _finish(waiter: Waiter, count: int) -> None:
    if not waiter.done():  # the publisher went away: the message still went out
        waiter.set_result(count)
