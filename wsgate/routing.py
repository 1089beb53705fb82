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

In a room with history, this node's own messages come back from the broker's
answer and the other nodes' from the relay: two paths with no order between
them. A room's offsets are contiguous, so each room with local members has a
sequence that sends offsets out one after another; a message whose predecessor
is still on its way waits for it, at most `gap_wait`. Then the missing offsets
are read from the room's history and sent in their place (a relayed message is
lost when the node's subscription drops, e.g. while Redis restarts); the same
catch-up runs for every room when the broker has subscribed again. Only what the
history no longer holds is skipped, counted as `history_gap`. When the history
is lost and begins again, the sequence follows the later epoch (epochs sort by
the time they began); a late message of an earlier epoch goes out once, as it
is, and never turns the sequence back.

A message for a room with history is delivered only once it has its offset. When
it cannot be kept (Redis away, or it refused), it is delivered nowhere and the
publisher gets BrokerError: a resuming client never meets a silent gap. When Redis
took it without answering in time, the publisher gets OutcomeUnknown (never "not
sent": Redis may run it when it wakes); if it was kept, the broker learns it later
and hands the stamped bytes to `receive`, so this node's members get it too, in
offset order, once (DESIGN "The fault model").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .broker import Broker, BrokerError
from .history import Position, epoch_order, later_epoch, stamp_of
from .hub import Hub
from .metrics import Metrics
from .rooms import RoomPatterns

log = logging.getLogger(__name__)

FILL_READS = 3  # history reads one catch-up may take: the epoch may begin again, or move on, while it reads

GAP_WAIT = 1.0  # seconds a kept message waits for an earlier offset still on its way, before reading it
LEFT_EPOCHS = 4  # earlier epochs a room's sequence remembers: their late messages go out once, as they are
LATE_OFFSETS = 1024  # late offsets remembered per earlier epoch (to send each once); past that, sent as they come


class _Waiting:
    """A message published here whose local delivery waits for its offset, or for an earlier message's."""

    __slots__ = ("room", "kept", "stamped", "delivered", "offered", "finished")

    def __init__(self, room: str | None, kept: bool, stamped: asyncio.Future[bytes]) -> None:
        self.room = room
        self.kept = kept
        self.stamped = stamped
        self.delivered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.offered = False  # handed to its room's sequence
        self.finished = False

    def finish(self, count: int | None, error: BaseException | None = None) -> None:
        self.finished = True
        if self.delivered.done():  # the publisher went away: the message still went out
            return
        if error is not None:
            self.delivered.set_exception(error)
        else:
            self.delivered.set_result(count or 0)


class _Earlier:
    """An earlier epoch of a room's history: offsets up to `last` went out in order, `late` ones after it."""

    __slots__ = ("last", "late")

    def __init__(self, last: int) -> None:
        self.last = last
        self.late: set[int] = set()


class _Sequence:
    """One room's delivery order on this node: `last` is the offset sent out last in `epoch`; `earlier`
    holds the room's earlier epochs seen here (the latest LEFT_EPOCHS of them)."""

    __slots__ = ("epoch", "last", "held", "timer", "earlier")

    def __init__(self, epoch: str, last: int) -> None:
        self.epoch = epoch
        self.last = last
        self.held: dict[int, tuple[bytes, _Waiting | None]] = {}  # offset -> message waiting for a predecessor
        self.timer: asyncio.TimerHandle | None = None
        self.earlier: dict[str, _Earlier] = {}


class Router:
    """Publishes messages (local fan-out plus relay, with history where the room keeps it) and receives relayed ones."""

    def __init__(
        self, hub: Hub, broker: Broker, history_rooms: RoomPatterns, metrics: Metrics, *, gap_wait: float = GAP_WAIT
    ) -> None:
        self._hub = hub
        self._broker = broker
        self._history_rooms = history_rooms
        self._metrics = metrics
        self._gap_wait = gap_wait
        self._waiting: deque[_Waiting] = deque()  # in publish order
        self._delivering = False  # _deliver_ready is running (releases inside it must not re-enter)
        self._sequences: dict[str, _Sequence] = {}  # rooms with history that have local members
        self._filling: dict[str, asyncio.Task[None]] = {}  # rooms whose missing offsets are being read

    def keeps_history(self, room: str | None) -> bool:
        """Whether messages to `room` get offsets (`history.rooms`)."""
        return self._history_rooms.match(room)

    async def publish(self, room: str | None, message: bytes, *, history: bool | None = None) -> int:
        """Send `message` (one encoded JSON object) to `room`'s members on every node (None: every client).

        `history`: keep it in the room's history; by default, when `history.rooms` matches the room
        (presence events pass False: they are not publications). Returns how many local clients it was
        queued for. Raises BrokerError when the room keeps history and the message was not kept (then
        nobody got it), OutcomeUnknown (a BrokerError) when the broker took it and did not answer in time
        (then it reaches every member once if it was kept, this node's through `receive`, or nobody).
        Plain rooms and broadcasts never raise: local delivery goes on, other nodes get it at most once.
        """
        kept = room is not None and (self._history_rooms.match(room) if history is None else history)
        if kept:
            assert room is not None
            stamped = self._broker.append(room, message[:-1])
            if not self._waiting and stamped.done():  # kept at once (the memory broker)
                count = self._sequenced(room, stamped.result(), None)
                if count is not None:
                    return count
                return 0  # held behind an earlier offset: it goes out with it
        else:
            self._broker.relay(room, message)
            if not self._waiting:  # the common case: no offset pending, deliver now
                return self._deliver(room, message)
            stamped = asyncio.get_running_loop().create_future()
            stamped.set_result(message)
        waiting = _Waiting(room, kept, stamped)
        self._waiting.append(waiting)
        if stamped.done():
            self._deliver_ready()
        else:
            stamped.add_done_callback(self._deliver_ready)
        return await waiting.delivered

    def receive(self, room: str | None, message: bytes) -> None:
        """A message another node published (the broker's callback): deliver it to this node's members."""
        if room is not None and self._history_rooms.match(room):
            self._sequenced(room, message, None)  # (a message without a stamp goes straight out there)
        else:
            self._deliver(room, message)

    def expect(self, room: str, position: Position) -> None:
        """A recovering client read `room`'s history up to `position`: this node's sequence of the room
        starts there, unless it already follows the room in that epoch."""
        sequence = self._sequences.get(room)
        if sequence is None:  # no member here follows the room yet: the order starts after what was read
            self._sequences[room] = _Sequence(position.epoch, position.offset)
        elif later_epoch(position.epoch, sequence.epoch):
            self._follow(room, sequence, position.epoch)  # the history began (or began again) since the members
        # joined: from its first offset, so that they get what the reader saw (the reader's own copies up to
        # its position are fenced off by the hub); a reader of an earlier epoch changes nothing

    def resynced(self) -> None:
        """The broker subscribed again after losing its connection: what was relayed meanwhile never came.
        Every followed room catches up from its history."""
        for room in list(self._sequences):
            self._fill(room)

    def forget(self, room: str) -> None:
        """`room` lost its last local member: stop following its offsets."""
        sequence = self._sequences.pop(room, None)
        if sequence is not None:
            self._release(room, sequence)

    # --- ordering ---------------------------------------------------------------------

    def _deliver_ready(self, _: object = None) -> None:
        """Deliver, in publish order, every waiting message whose offset (and every earlier one's) is known."""
        if self._delivering:
            return  # called back from inside the loop below, which goes on by itself
        self._delivering = True
        try:
            waiting = self._waiting
            while waiting:
                entry = waiting[0]
                if not entry.finished:
                    if entry.offered or not entry.stamped.done():
                        return  # its offset, or its room's earlier offsets, are still on their way
                    self._offer(entry)
                    if not entry.finished:
                        return
                waiting.popleft()
        finally:
            self._delivering = False

    def _offer(self, entry: _Waiting) -> None:
        entry.offered = True
        stamped = entry.stamped
        error = BrokerError("the gateway is shutting down") if stamped.cancelled() else stamped.exception()
        if error is not None:  # not kept: delivered nowhere, the publisher is told
            entry.finish(None, error)
        elif entry.kept and entry.room is not None:
            count = self._sequenced(entry.room, stamped.result(), entry)
            if count is not None:
                entry.finish(count)
        else:
            entry.finish(self._deliver(entry.room, stamped.result()))

    def _sequenced(self, room: str, message: bytes, entry: _Waiting | None) -> int | None:
        """Deliver a kept message in its room's offset order; None when it waits for an earlier offset
        (then `entry`, if any, is finished when it goes out). The stamp is read once, here."""
        stamp = stamp_of(message)
        if stamp is None:  # not kept (e.g. a presence event): no offset to order by
            return self._deliver(room, message)
        offset, epoch = stamp
        sequence = self._sequences.get(room)
        if sequence is None:
            if room not in self._hub.rooms and room not in self._hub.holding:
                return self._deliver(room, message)  # nobody here: nothing to order
            sequence = self._sequences[room] = _Sequence(epoch, offset - 1)  # first seen: the order starts here
        elif sequence.epoch != epoch:
            if not later_epoch(epoch, sequence.epoch):
                return self._late(room, sequence, epoch, offset, message)
            self._follow(room, sequence, epoch)
        if offset <= sequence.last:
            return 0  # already sent out (a recovering client read it from the history)
        if offset > sequence.last + 1:
            sequence.held[offset] = (message, entry)
            if sequence.timer is None:
                sequence.timer = asyncio.get_running_loop().call_later(self._gap_wait, self._gap_expired, room)
            return None
        count = self._deliver(room, message)
        sequence.last = offset
        if sequence.held:
            self._release_consecutive(room, sequence)
        return count

    def _release_consecutive(self, room: str, sequence: _Sequence) -> None:
        released = False
        while (held := sequence.held.pop(sequence.last + 1, None)) is not None:
            message, entry = held
            sequence.last += 1
            count = self._deliver(room, message)
            if entry is not None:
                entry.finish(count)
                released = True
        if not sequence.held and sequence.timer is not None:
            sequence.timer.cancel()
            sequence.timer = None
        if released:
            self._deliver_ready()

    def _gap_expired(self, room: str) -> None:
        sequence = self._sequences.get(room)
        if sequence is None:
            return
        sequence.timer = None
        if sequence.held:
            self._fill(room)

    def _fill(self, room: str) -> None:
        """Read what a room's sequence misses from its history (in a task); see the module docstring."""
        if room not in self._filling:
            task = asyncio.get_running_loop().create_task(self._read_missing(room), name=f"wsgate-fill-{room}")
            self._filling[room] = task
            task.add_done_callback(lambda _: self._filling.pop(room, None))

    async def _read_missing(self, room: str) -> None:
        sequence = self._sequences.get(room)
        if sequence is None:
            return
        replay = None
        for _ in range(FILL_READS):
            asked = Position(sequence.last, sequence.epoch)
            try:
                replay = await self._broker.history_replay(room, asked)
            except Exception:  # (BrokerError: Redis away; anything else is logged) held messages still go out below
                log.debug("room %r: reading missing offsets failed", room, exc_info=True)
                replay = None
                break
            if self._sequences.get(room) is not sequence:
                return  # the room lost its members meanwhile
            if sequence.epoch != asked.epoch:
                continue  # a relay of a later epoch came meanwhile, and the sequence follows it: read that one
            if not replay.recovered and later_epoch(replay.position.epoch, sequence.epoch):
                # The history was lost and began again (Redis restarted empty) while this node missed the new
                # epoch's relays too (its subscription was away): follow it, and read it from its offset 1.
                self._follow(room, sequence, replay.position.epoch)
                continue
            break
        if replay is not None and replay.recovered and replay.position.epoch == sequence.epoch:
            for message in replay.messages:
                self._sequenced(room, message, None)  # earlier offsets go out; held later ones follow
        if sequence.held:  # the history no longer holds them (or cannot be read): skip what is missing
            log.warning(
                "room %r: offsets %d to %d are lost (not relayed, no longer in the history); sending what came after",
                room,
                sequence.last + 1,
                min(sequence.held) - 1,
                extra={"room": room},
            )
            self._metrics.error("history_gap")
            self._release(room, sequence)

    def _follow(self, room: str, sequence: _Sequence, epoch: str) -> None:
        """The room's history began (after an empty read), or was lost and began again as `epoch`: send out
        what the old epoch held, then follow the new one from offset 1."""
        self._release(room, sequence)
        self._remember(sequence, sequence.epoch, sequence.last)
        sequence.epoch, sequence.last = epoch, 0

    def _late(self, room: str, sequence: _Sequence, epoch: str, offset: int, message: bytes) -> int:
        """A message of an earlier epoch, on its way when the history began again: it goes out once, as it
        is, and the order of the epoch followed now is kept."""
        earlier = sequence.earlier.get(epoch) or self._remember(sequence, epoch, 0)
        if offset <= earlier.last or offset in earlier.late:
            return 0  # already sent out
        if len(earlier.late) < LATE_OFFSETS:
            earlier.late.add(offset)
        return self._deliver(room, message)

    @staticmethod
    def _remember(sequence: _Sequence, epoch: str, last: int) -> _Earlier:
        earlier = sequence.earlier[epoch] = _Earlier(last)
        if len(sequence.earlier) > LEFT_EPOCHS:
            del sequence.earlier[min(sequence.earlier, key=epoch_order)]
        return earlier

    def _release(self, room: str, sequence: _Sequence) -> None:
        """Send out everything a sequence holds, in offset order, without waiting for what is missing."""
        if sequence.timer is not None:
            sequence.timer.cancel()
            sequence.timer = None
        held, sequence.held = sequence.held, {}
        released = False
        for offset in sorted(held):
            message, entry = held[offset]
            sequence.last = max(sequence.last, offset)
            count = self._deliver(room, message)
            if entry is not None:
                entry.finish(count)
                released = True
        if released:
            self._deliver_ready()

    def _deliver(self, room: str | None, message: bytes) -> int:
        count = self._hub.deliver(room, message)
        self._metrics.messages_delivered(count)
        return count
