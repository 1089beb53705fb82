"""Delivery order of rooms with history on one node: a sans-I/O core, events in, actions out.

The core holds no sockets, tasks or timers, reads no clock and imports no asyncio
(python-websockets `protocol.py`). Its drivers feed it events and carry out what
it returns: `routing.Router` (publishes, relays, history reads, timers) and
`hub.Hub` (fan-out, holds and fences of recovering members). A member is any
hashable key (the hub's connections); a waiter is the driver's token for one
publisher awaiting its count.

Offsets. A message published to a room with history gets the room's next offset
in its epoch (`wsgate.history`). This node's own messages come back in the
broker's answer to append (`Ordering.queue`, then `Ordering.answered`), the other
nodes' through the relay (`Ordering.relayed`): two paths with no order
between them. A room's offsets are contiguous, so each room with local members
has a sequence that sends offsets out one after another; a message whose
predecessor is still on its way is held, at most until the deadline the driver
gives (`gap_wait` past its arrival: `Wake`, then `Ordering.woke`). Then the
missing offsets are read from the room's history (`Read`, answered by
`Ordering.read`) and sent in their place (a relayed message is lost when the
node's subscription drops, e.g. while Redis restarts); the same catch-up runs
for every followed room when the broker has subscribed again
(`Ordering.resynced`). Only what the history no longer holds (or cannot be read)
is skipped, reported as a `Gap` (metric `history_gap`). A room without local
members has no sequence: its messages go straight out (to nobody here).

Epochs. When the history is lost and begins again, the sequence follows the
later epoch (epochs sort by the time they began, `history.epoch_order`): what
the old epoch held goes out first, then the new one from offset 1. A late
message of an earlier epoch goes out once, as it is, and never turns the
sequence back (the latest LEFT_EPOCHS earlier epochs are remembered, with up to
LATE_OFFSETS late offsets each; past that, late ones go out as they come).

Publish order. A message published here whose room keeps history is delivered
only once it has its offset, and every message published here afterwards, to
any room, waits behind it (`Ordering.queue`, then `Ordering.answered`): so one
publisher's messages reach every member in the order sent. A message the broker
could not keep is delivered nowhere and its waiter fails (`Fail`); a kept one
finishes its waiter with the count the driver's delivery returned (`Deliver`
with the waiter), or 0 when it was already sent (`Done`).

Recovering members (`Ordering.hold`, `Ordering.release`, `Ordering.expect`). A
member subscribing with history reads it while live messages for it are held
(the hub appends them to its `Held` buffer, bounded there in bytes). Its
release returns the held messages its read did not include (`history.comes_after`)
and fences it at the position read: copies of what it read, still on their way
through pub/sub, are not sent to it again (`Ordering.fenced_off`); a fence
ends once a later message passes (a later offset, or a later epoch). The room's
sequence starts at the position read when nobody here followed the room yet, or
follows the read's epoch when it is later than the sequence's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Hashable
from typing import Generic, NamedTuple, TypeVar

from .history import Position, Replay, comes_after, epoch_order, later_epoch, stamp_of

FILL_READS = 3  # history reads one catch-up may take: the epoch may begin again, or move on, while it reads
GAP_WAIT = 1.0  # seconds a kept message waits for an earlier offset still on its way, before reading it
LEFT_EPOCHS = 4  # earlier epochs a room's sequence remembers: their late messages go out once, as they are
LATE_OFFSETS = 1024  # late offsets remembered per earlier epoch (to send each once); past that, sent as they come

M = TypeVar("M", bound=Hashable)  # a member: the hub's connection
W = TypeVar("W")  # a publisher's waiter: the router's token


# --- actions ------------------------------------------------------------------------------------


class Deliver(NamedTuple, Generic[W]):
    """Deliver `message` to `room`'s members here (None: every client), through the hub: held members get it
    in their buffer, fenced ones are skipped (`Ordering.fenced_off`). `waiter`: finish it with the count."""

    room: str | None
    message: bytes
    waiter: W | None


class Done(NamedTuple, Generic[W]):
    """Finish `waiter` with a count of `clients`, delivering nothing (its message already went out)."""

    waiter: W
    clients: int


class Fail(NamedTuple, Generic[W]):
    """Finish `waiter` with `error`: its message was not kept and went nowhere."""

    waiter: W
    error: BaseException


class Read(NamedTuple):
    """Read `room`'s history after `since`, then answer `Ordering.read(ticket, since, replay or None, deadline)`,
    also when the read fails or is cancelled (None): until then the room's catch-up counts as under way."""

    room: str
    since: Position
    ticket: object


class Wake(NamedTuple):
    """Call `Ordering.woke(room, now)` at time `at` (the driver's clock); replaces the room's earlier wake-up."""

    room: str
    at: float


class CancelWake(NamedTuple):
    """The room's wake-up is no longer needed."""

    room: str


class Gap(NamedTuple):
    """Offsets `first` to `last` of `room` are lost (not relayed, no longer in the history, or it cannot be read):
    count `history_gap` and log it; what came after them goes out now. One per hole."""

    room: str
    first: int
    last: int


Action = Deliver[W] | Done[W] | Fail[W] | Read | Wake | CancelWake | Gap


# --- state --------------------------------------------------------------------------------------


class Held(list[bytes]):
    """Live messages held for one recovering member, in order, and their `size` in bytes; `reserve`: the bytes
    kept free for the replay they will go out with (0 without one)."""

    __slots__ = ("reserve", "size")

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        self.size = 0
        self.reserve = reserve


class Pending(Generic[W]):
    """A message published here whose local delivery waits for its offset, or for an earlier message's."""

    __slots__ = ("room", "kept", "waiter", "message", "error", "answered", "offered", "finished")

    def __init__(self, room: str | None, kept: bool, waiter: W) -> None:
        self.room = room
        self.kept = kept
        self.waiter = waiter
        self.message = b""
        self.error: BaseException | None = None
        self.answered = False  # the broker answered (or the message needs no answer)
        self.offered = False  # handed to its room's sequence
        self.finished = False  # an action finishing its waiter was given out


class _Earlier:
    """An earlier epoch of a room's history: offsets up to `last` went out in order, `late` ones after it."""

    __slots__ = ("last", "late")

    def __init__(self, last: int) -> None:
        self.last = last
        self.late: set[int] = set()


class Sequence(Generic[W]):
    """One room's delivery order on this node: `last` is the offset sent out last in `epoch`; `held` the
    messages waiting for a predecessor (offset -> message, its publish); `deadline` when the wait ends (None:
    no wake-up asked); `reads` the history reads of the catch-up under way (0: none); `earlier` the room's
    earlier epochs seen here (the latest LEFT_EPOCHS of them)."""

    __slots__ = ("room", "epoch", "last", "held", "deadline", "reads", "earlier")

    def __init__(self, room: str, epoch: str, last: int) -> None:
        self.room = room
        self.epoch = epoch
        self.last = last
        self.held: dict[int, tuple[bytes, Pending[W] | None]] = {}
        self.deadline: float | None = None
        self.reads = 0
        self.earlier: dict[str, _Earlier] = {}


class Ordering(Generic[M, W]):
    """The delivery order of this node's rooms with history (see the module docstring for the rules).

    `present`: the rooms with local members or holders (the hub's room index, read, never written). Every
    event method returns the actions to carry out, in order; the state changes at once, so the driver carries
    them out before feeding the next event. `holding`, `fences` and `pending` are read by the drivers on their
    fast paths (an empty one means nothing to do).
    """

    def __init__(self, present: Container[str]) -> None:
        self._present = present
        self.sequences: dict[str, Sequence[W]] = {}  # rooms with history that have local members
        self.pending: deque[Pending[W]] = deque()  # publishes waiting, in publish order
        self.holding: dict[str, dict[M, Held]] = {}  # room -> recovering member -> held messages
        self.fences: dict[str, dict[M, Position]] = {}  # room -> recovered member -> what it has read
        self._delivering = False  # _deliver_ready is running (releases inside it must not re-enter)

    # --- events: publishing and receiving -----------------------------------------------------

    def queue(self, room: str | None, kept: bool, waiter: W) -> Pending[W]:
        """A message published here must wait for its offset (`kept`) or behind earlier ones still waiting: it
        goes out, and `waiter` finishes, after `answered`."""
        entry = Pending(room, kept, waiter)
        self.pending.append(entry)
        return entry

    def answered(
        self, entry: Pending[W], message: bytes, error: BaseException | None, deadline: float
    ) -> list[Action[W]]:
        """The broker answered a queued publish: `message` (stamped when kept), or `error` (not kept). Delivers,
        in publish order, every queued message whose offset (and every earlier one's) is known. `deadline`: now
        plus `gap_wait`, how long a message held behind a missing offset waits (as for every event below)."""
        entry.message, entry.error, entry.answered = message, error, True
        out: list[Action[W]] = []
        self._deliver_ready(out, deadline)
        return out

    def relayed(self, room: str, message: bytes, deadline: float) -> list[Action[W]]:
        """A message of `room` relayed from another node arrived: it goes out in the room's offset order (at
        once when it has no stamp)."""
        out: list[Action[W]] = []
        self._sequenced(room, message, None, out, deadline)
        return out

    # --- events: time, reads, the broker ----------------------------------------------------

    def woke(self, room: str, now: float) -> list[Action[W]]:
        """Time `now` came (a `Wake`): past the room's deadline, what its held messages miss is read."""
        sequence = self.sequences.get(room)
        if sequence is None or sequence.deadline is None or now < sequence.deadline:
            return []
        sequence.deadline = None
        out: list[Action[W]] = []
        if sequence.held:
            self._fill(sequence, out)
        return out

    def read(self, ticket: object, since: Position, replay: Replay | None, deadline: float) -> list[Action[W]]:
        """A `Read` was answered: `replay` of the history after `since`, or None (the read failed). Sends what
        it holds in offset order and the held messages after it; skips, as a `Gap`, only what the history no
        longer holds. The history may have begun again: then the later epoch is read (FILL_READS at most)."""
        sequence = ticket
        if not isinstance(sequence, Sequence) or self.sequences.get(sequence.room) is not sequence:
            return []  # the room lost its members meanwhile
        out: list[Action[W]] = []
        if replay is not None and sequence.reads < FILL_READS:
            if sequence.epoch != since.epoch:  # a relay of a later epoch came meanwhile, and the sequence follows
                return self._read_again(sequence, out)  # it: read that one
            if later_epoch(replay.position.epoch, sequence.epoch):
                # The history was lost and began again (Redis restarted empty), or began (the sequence had none
                # yet), while this node missed the new epoch's relays too (its subscription was away): follow it,
                # and read it from its offset 1, unless this read has it whole (a read from "no history yet": the
                # old logic dropped it, which tests/test_ordering.py found).
                self._follow(sequence, replay.position.epoch, out, deadline)
                if not replay.recovered:
                    return self._read_again(sequence, out)
        sequence.reads = 0
        room = sequence.room
        if replay is not None and replay.position.epoch == sequence.epoch:
            # (trimmed past the sequence's position: what the history still holds goes out, only the rest is lost)
            for message in replay.messages if replay.recovered else replay.kept:
                self._sequenced(room, message, None, out, deadline)  # earlier offsets go out; held later follow
        if sequence.held:  # the history no longer holds them (or cannot be read): skip what is missing
            last = sequence.last
            for offset in sorted(sequence.held):  # every hole is reported (hypothesis found the second one was
                if offset > last + 1:  # skipped silently: tests/test_ordering.py)
                    out.append(Gap(room, last + 1, offset - 1))
                last = offset
            self._release(sequence, out, deadline)
        return out

    def resynced(self) -> list[Action[W]]:
        """The broker subscribed again after losing its connection: what was relayed meanwhile never came.
        Every followed room catches up from its history."""
        out: list[Action[W]] = []
        for sequence in list(self.sequences.values()):
            self._fill(sequence, out)
        return out

    def forget(self, room: str, deadline: float) -> list[Action[W]]:
        """`room` lost its last local member: stop following its offsets (what it held goes out, to nobody
        here, and its publishers' waits finish)."""
        sequence = self.sequences.pop(room, None)
        out: list[Action[W]] = []
        if sequence is not None:
            self._release(sequence, out, deadline)
        return out

    # --- events: recovering members ------------------------------------------------------------

    def hold(self, room: str, member: M, reserve: int = 0) -> None:
        """`member` joins `room` and reads its history: live messages for it are held until `release`
        (`reserve`: see `Held`)."""
        self.holding.setdefault(room, {})[member] = Held(reserve)

    def release(self, room: str, member: M, read_up_to: Position | None, stays: bool) -> list[bytes]:
        """End `member`'s hold: returns what was held for it that its read up to `read_up_to` did not include,
        in order (everything when None). `stays`: it is still in the room, fenced at `read_up_to` (messages up
        to it may still be on their way from Redis: pub/sub can trail the script that read the history)."""
        held = self.holding.get(room)
        messages: list[bytes] = held.pop(member, []) if held is not None else []
        if held is not None and not held:
            del self.holding[room]
        if read_up_to is None:
            return messages
        if stays:
            self.fences.setdefault(room, {})[member] = read_up_to
        return [message for message in messages if comes_after(message, read_up_to)]

    def expect(self, room: str, position: Position, deadline: float) -> list[Action[W]]:
        """A recovering member read `room`'s history up to `position`: this node's sequence of the room
        starts there, unless it already follows the room in that epoch."""
        sequence = self.sequences.get(room)
        out: list[Action[W]] = []
        if sequence is None:  # no member here follows the room yet: the order starts after what was read
            self.sequences[room] = Sequence(room, position.epoch, position.offset)
        elif later_epoch(position.epoch, sequence.epoch):
            self._follow(sequence, position.epoch, out, deadline)  # the history began (or began again) since
        # the members joined: from its first offset, so that they get what the reader saw (the reader's own
        # copies up to its position are fenced off); a reader of an earlier epoch changes nothing
        return out

    def left(self, room: str, member: M) -> None:
        """`member` left `room`: its hold and fence there end."""
        for table in (self.holding, self.fences):
            entry = table.get(room)
            if entry is not None:
                entry.pop(member, None)
                if not entry:
                    del table[room]

    def fenced_off(self, room: str, fenced: dict[M, Position], message: bytes) -> set[M]:
        """The members of `fenced` (this room's fences) that were already sent `message`; a fence ends once a
        message passes that follows what its member read (a later offset, or a later epoch). A late message of
        an earlier epoch goes to everyone and leaves the fences as they are. A message without a stamp (a
        presence event) goes to everyone."""
        stamp = stamp_of(message)
        if stamp is None:
            return set()
        offset, epoch = stamp
        skip = set()
        for member, up_to in list(fenced.items()):
            if epoch == up_to.epoch:
                if offset <= up_to.offset:
                    skip.add(member)
                else:
                    del fenced[member]
            elif later_epoch(epoch, up_to.epoch):
                del fenced[member]
        if not fenced:
            self.fences.pop(room, None)
        return skip

    # --- rules ----------------------------------------------------------------------------------

    def _deliver_ready(self, out: list[Action[W]], deadline: float) -> None:
        """Deliver, in publish order, every queued message whose offset (and every earlier one's) is known."""
        if self._delivering:
            return  # called from inside the loop below, which goes on by itself
        self._delivering = True
        try:
            pending = self.pending
            while pending:
                entry = pending[0]
                if not entry.finished:
                    if entry.offered or not entry.answered:
                        return  # its offset, or its room's earlier offsets, are still on their way
                    self._offer(entry, out, deadline)
                    if not entry.finished:
                        return
                pending.popleft()
        finally:
            self._delivering = False

    def _offer(self, entry: Pending[W], out: list[Action[W]], deadline: float) -> None:
        entry.offered = True
        if entry.error is not None:  # not kept: delivered nowhere, the publisher is told
            entry.finished = True
            out.append(Fail(entry.waiter, entry.error))
        elif entry.kept and entry.room is not None:
            self._sequenced(entry.room, entry.message, entry, out, deadline)
        else:
            entry.finished = True
            out.append(Deliver(entry.room, entry.message, entry.waiter))

    def _sequenced(
        self, room: str, message: bytes, entry: Pending[W] | None, out: list[Action[W]], deadline: float
    ) -> None:
        """Deliver a kept message in its room's offset order, or hold it behind an earlier offset (then
        `entry`, if any, finishes when it goes out). The stamp is read once, here."""
        stamp = stamp_of(message)
        if stamp is None:  # not kept (e.g. a presence event): no offset to order by
            return self._send(room, message, entry, out)
        offset, epoch = stamp
        sequence = self.sequences.get(room)
        if sequence is None:
            if room not in self._present:
                return self._send(room, message, entry, out)  # nobody here: nothing to order
            sequence = self.sequences[room] = Sequence(room, epoch, offset - 1)  # first seen: the order starts here
        elif sequence.epoch != epoch:
            if not later_epoch(epoch, sequence.epoch):
                return self._late(sequence, epoch, offset, message, entry, out)
            self._follow(sequence, epoch, out, deadline)
        if offset <= sequence.last:  # already sent out (a recovering member read it from the history)
            if entry is not None:
                entry.finished = True
                out.append(Done(entry.waiter, 0))
            return None
        if offset > sequence.last + 1:
            held = sequence.held.get(offset)
            if held is None or held[1] is None:  # (a copy read from the history never displaces a publish's)
                sequence.held[offset] = (message, entry)
            elif entry is not None:  # one publish per offset: never; its copy held already goes out for it
                entry.finished = True
                out.append(Done(entry.waiter, 0))
            if sequence.deadline is None:
                sequence.deadline = deadline
                out.append(Wake(room, deadline))
            return None
        self._send(room, message, entry, out)
        sequence.last = offset
        if sequence.held:
            self._release_consecutive(sequence, out, deadline)
        return None

    @staticmethod
    def _send(room: str, message: bytes, entry: Pending[W] | None, out: list[Action[W]]) -> None:
        if entry is None:
            out.append(Deliver(room, message, None))
        else:
            entry.finished = True
            out.append(Deliver(room, message, entry.waiter))

    def _release_consecutive(self, sequence: Sequence[W], out: list[Action[W]], deadline: float) -> None:
        released = False
        while (held := sequence.held.pop(sequence.last + 1, None)) is not None:
            message, entry = held
            sequence.last += 1
            self._send(sequence.room, message, entry, out)
            released = released or entry is not None
        if not sequence.held and sequence.deadline is not None:
            sequence.deadline = None
            out.append(CancelWake(sequence.room))
        if released:
            self._deliver_ready(out, deadline)

    def _fill(self, sequence: Sequence[W], out: list[Action[W]]) -> None:
        """Read what a room's sequence misses from its history (one catch-up at a time)."""
        if not sequence.reads:
            self._read_again(sequence, out)

    def _read_again(self, sequence: Sequence[W], out: list[Action[W]]) -> list[Action[W]]:
        sequence.reads += 1
        out.append(Read(sequence.room, Position(sequence.last, sequence.epoch), sequence))
        return out

    def _follow(self, sequence: Sequence[W], epoch: str, out: list[Action[W]], deadline: float) -> None:
        """The room's history began (after an empty read), or was lost and began again as `epoch`: send out
        what the old epoch held, then follow the new one from offset 1."""
        self._release(sequence, out, deadline)
        self._remember(sequence, sequence.epoch, sequence.last)
        sequence.epoch, sequence.last = epoch, 0

    def _late(
        self,
        sequence: Sequence[W],
        epoch: str,
        offset: int,
        message: bytes,
        entry: Pending[W] | None,
        out: list[Action[W]],
    ) -> None:
        """A message of an earlier epoch, on its way when the history began again: it goes out once, as it
        is, and the order of the epoch followed now is kept."""
        earlier = sequence.earlier.get(epoch) or self._remember(sequence, epoch, 0)
        if offset <= earlier.last or offset in earlier.late:
            if entry is not None:  # already sent out
                entry.finished = True
                out.append(Done(entry.waiter, 0))
            return
        if len(earlier.late) < LATE_OFFSETS:
            earlier.late.add(offset)
        self._send(sequence.room, message, entry, out)

    @staticmethod
    def _remember(sequence: Sequence[W], epoch: str, last: int) -> _Earlier:
        earlier = sequence.earlier[epoch] = _Earlier(last)
        if len(sequence.earlier) > LEFT_EPOCHS:
            del sequence.earlier[min(sequence.earlier, key=epoch_order)]
        return earlier

    def _release(self, sequence: Sequence[W], out: list[Action[W]], deadline: float) -> None:
        """Send out everything a sequence holds, in offset order, without waiting for what is missing."""
        if sequence.deadline is not None:
            sequence.deadline = None
            out.append(CancelWake(sequence.room))
        held, sequence.held = sequence.held, {}
        released = False
        for offset in sorted(held):
            message, entry = held[offset]
            sequence.last = max(sequence.last, offset)
            self._send(sequence.room, message, entry, out)
            released = released or entry is not None
        if released:
            self._deliver_ready(out, deadline)
