"""The delivery-order core (`wsgate.ordering`) against its invariants, over random interleavings (hypothesis).

No sockets, no asyncio: a `World` plays this node's hub and router (members,
holds, fences, timers, history reads) and the rest of the system (other nodes
publishing, relays on their way or lost, Redis answering late or refusing, the
history trimmed or lost and begun again), and feeds the core one event at a
time. The history is a list of the current epoch's entries the test controls.
After every step and after a final drain (every relay arrives, every answer and
read comes, time passes every deadline) it checks what each member received.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from wsgate.history import NO_HISTORY, Position, Replay, epoch_order, replay_from, stamp, stamp_of
from wsgate.ordering import (
    Action,
    CancelWake,
    Deliver,
    Done,
    Fail,
    Gap,
    Ordering,
    Pending,
    Read,
    Wake,
)

ROOM, PLAIN = "r", "p"  # a room with history, and a plain room (publish order across rooms)
MEMBERS = ("m0", "m1", "m2")
GAP_WAIT = 1.0


@dataclass
class Member:
    """What one member saw: `start` (epoch, offset) its read began after, then every message, in order."""

    start: Position
    since: Position | None
    recovered: bool
    received: list[bytes] = field(default_factory=list)


@dataclass
class Own:
    """A publish of this node: its waiter's finishes, and whether the broker kept it."""

    id: int
    finishes: list[object] = field(default_factory=list)


class World:
    def __init__(self) -> None:
        self.present: set[str] = set()
        self.core: Ordering[str, Own] = Ordering(self.present)
        self.now = 0.0
        # the history: the current epoch ("": none, lost) and its entries, trimmed from the front
        self.epoch = ""
        self.epochs = 0
        self.offset = 0
        self.entries: list[tuple[int, bytes]] = []
        self.positions: list[Position] = [NO_HISTORY]  # every position the history had (for `since`)
        self.next_id = 0
        self.relays: list[bytes] = []  # other nodes' messages on their way here
        self.answers: list[tuple[Pending[Own], bytes, BaseException | None]] = []  # the broker's answers on the way
        self.reads: list[Read] = []
        self.wakes: dict[str, float] = {}
        self.members: dict[str, Member] = {}  # in the room (released)
        self.joining: dict[str, Position | None] = {}  # holding, reading the history since
        self.gone: list[Member] = []
        self.own: list[Own] = []
        # ids of this node's publishes, in the order they went out through the publish queue (one that a history
        # read sent before its answer came goes out then, out of line: noted in the report, left as it was)
        self.own_delivered: list[int] = []
        self.gaps: dict[str, set[int]] = {}  # epoch -> offsets reported lost
        self.lost_epochs: set[str] = set()
        self.unknown: set[int] = set()  # publishes whose outcome is unknown: their relay copy has no place in line
        self.late_sent: set[bytes] = set()
        self.fenced_off = self.late = 0  # (how often each case came up: hypothesis statistics)
        self.resync_due = False  # a relay was lost: the subscription dropped, and the broker subscribes again

    # --- the rest of the system -----------------------------------------------------------------

    def append(self, data: int) -> bytes:
        if self.epoch == "":
            self.epochs += 1
            self.epoch, self.offset = f"{self.epochs:04x}", 0
        self.offset += 1
        message = stamp(b'{"type":"message","room":"r","data":%d' % data, self.offset, self.epoch)
        self.entries.append((self.offset, message))
        self.positions.append(Position(self.offset, self.epoch))
        return message

    def position(self) -> Position:
        return Position(self.offset, self.epoch) if self.epoch else NO_HISTORY

    def replay(self, since: Position) -> Replay:
        return replay_from(self.position(), [e for e in self.entries if e[0] > since.offset], since)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def deadline(self) -> float:
        return self.now + GAP_WAIT

    # --- the driver: carrying out actions -------------------------------------------------------

    def carry_out(self, actions: Iterable[Action[Own]]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                count = self.deliver(action.room, action.message)
                if action.waiter is not None:
                    action.waiter.finishes.append(count)
                    self.own_delivered.append(action.waiter.id)
            elif isinstance(action, Done):
                action.waiter.finishes.append(action.clients)
            elif isinstance(action, Fail):
                action.waiter.finishes.append(action.error)
            elif isinstance(action, Read):
                self.reads.append(action)
            elif isinstance(action, Wake):
                self.wakes[action.room] = action.at
            elif isinstance(action, CancelWake):
                self.wakes.pop(action.room, None)
            else:
                assert isinstance(action, Gap)
                assert action.first <= action.last
                epoch = self.core.sequences[action.room].epoch
                self.gaps.setdefault(epoch, set()).update(range(action.first, action.last + 1))

    def deliver(self, room: str | None, message: bytes) -> int:
        """What `Hub.deliver` does: held members' buffers, then the members not fenced off."""
        if room != ROOM:
            return 0
        sequence, found = self.core.sequences.get(room), stamp_of(message)
        if sequence is not None and found is not None and epoch_order(sequence.epoch) > epoch_order(found[1]):
            self.late_sent.add(message)  # the sequence follows a later epoch: sent late, as it is
        for held in self.core.holding.get(room, {}).values():
            held.append(message)
        fenced = self.core.fences.get(room)
        skip = self.core.fenced_off(room, fenced, message) if fenced else set()
        self.fenced_off += len(skip)
        count = 0
        for name, member in self.members.items():
            if name not in skip:
                member.received.append(message)
                count += 1
        return count

    # --- events ---------------------------------------------------------------------------------

    def publish_own(self, choice: int) -> None:
        """This node publishes to ROOM: kept and answered at once (the memory broker), or answered later,
        refused (not kept), or kept with no answer in time (OutcomeUnknown: its relay copy comes here)."""
        own = Own(self.new_id())
        self.own.append(own)
        outcome = choice % 4
        if outcome == 0:
            self.answers.append((self.core.queue(ROOM, True, own), b"", ConnectionError("not kept")))
            return
        message = self.append(-own.id)
        if outcome == 1:
            self.answers.append((self.core.queue(ROOM, True, own), b"", TimeoutError("outcome unknown")))
            self.relays.append(message)
            self.unknown.add(own.id)
        elif outcome == 2:  # answered at once
            self.carry_out(self.core.answered(self.core.queue(ROOM, True, own), message, None, self.deadline()))
        else:
            self.answers.append((self.core.queue(ROOM, True, own), message, None))

    def publish_plain(self) -> None:
        own = Own(self.new_id())
        self.own.append(own)
        message = b'{"type":"message","room":"p","data":%d}' % -own.id
        if not self.core.pending:
            own.finishes.append(self.deliver(PLAIN, message))
            self.own_delivered.append(own.id)
        else:
            self.carry_out(self.core.answered(self.core.queue(PLAIN, False, own), message, None, self.deadline()))

    def publish_other(self) -> None:
        self.relays.append(self.append(self.new_id()))

    def answer(self, index: int) -> None:
        if self.answers:
            entry, message, error = self.answers.pop(index % len(self.answers))
            self.carry_out(self.core.answered(entry, message, error, self.deadline()))

    def relay(self, index: int) -> None:
        if self.relays:
            self.carry_out(self.core.relayed(ROOM, self.relays.pop(index % len(self.relays)), self.deadline()))

    def lose_relay(self, index: int) -> None:
        if self.relays:
            self.relays.pop(index % len(self.relays))
            self.resync_due = True

    def answer_read(self, index: int, fails: bool) -> None:
        if self.reads:
            read = self.reads.pop(index % len(self.reads))
            replay = None if fails else self.replay(read.since)
            before = {epoch: set(offsets) for epoch, offsets in self.gaps.items()}
            self.carry_out(self.core.read(read.ticket, read.since, replay, self.deadline()))
            if replay is not None:  # a read that answered skips only what the history no longer holds
                skipped = self.gaps.get(self.epoch, set()) - before.get(self.epoch, set())
                held = {offset for offset, _ in self.entries}
                assert not skipped & held, f"offsets {sorted(skipped & held)} skipped while the history holds them"

    def lose_history(self) -> None:
        if self.epoch:
            self.lost_epochs.add(self.epoch)
        self.epoch, self.offset, self.entries = "", 0, []

    def trim(self, count: int) -> None:
        del self.entries[:count]

    def join(self, name: str, choice: int) -> None:
        if name in self.members or name in self.joining:
            return
        since = None if choice == 0 else self.positions[-min(choice, len(self.positions))]  # a recent position
        self.joining[name] = since
        self.present.add(ROOM)
        self.core.hold(ROOM, name)

    def finish_join(self, name: str) -> None:
        """What `Gateway._subscribe_with_history` does once its read is answered."""
        if name not in self.joining:
            return
        since = self.joining.pop(name)
        replay = Replay(self.position(), recovered=True) if since is None else self.replay(since)
        start = Position(replay.position.offset - len(replay.messages), replay.position.epoch)
        member = Member(start, since, replay.recovered)
        if replay.messages:  # a recovered replay is whole from `since` on
            assert stamp_of(replay.messages[0]) == (member.start.offset + 1, member.start.epoch)
        self.members[name] = member
        held = self.core.release(ROOM, name, replay.position, True)
        self.carry_out(self.core.expect(ROOM, replay.position, self.deadline()))
        member.received.extend(replay.messages + held)

    def leave(self, name: str) -> None:
        if name in self.joining:
            del self.joining[name]
        elif name in self.members:
            self.gone.append(self.members.pop(name))
        else:
            return
        self.core.left(ROOM, name)
        if not self.members and ROOM not in self.core.holding:
            self.present.discard(ROOM)
            self.carry_out(self.core.forget(ROOM, self.deadline()))

    def pass_time(self, seconds: float) -> None:
        self.now += seconds
        for room, at in list(self.wakes.items()):
            if at <= self.now and self.wakes.get(room) == at:
                del self.wakes[room]
                self.carry_out(self.core.woke(room, self.now))

    def resync(self) -> None:
        self.resync_due = False
        self.carry_out(self.core.resynced())

    def step(self, kind: str, choice: int) -> None:
        name = MEMBERS[choice % len(MEMBERS)]
        {
            "own": lambda: self.publish_own(choice),
            "plain": self.publish_plain,
            "other": self.publish_other,
            "answer": lambda: self.answer(choice),
            "relay": lambda: self.relay(choice),
            "lose": lambda: self.lose_relay(choice),
            "read": lambda: self.answer_read(choice, fails=False),
            "read_fails": lambda: self.answer_read(choice, fails=True),
            "lose_history": self.lose_history,
            "trim": lambda: self.trim(choice + 1),
            "join": lambda: self.join(name, choice // 3),
            "finish": lambda: self.finish_join(name),
            "leave": lambda: self.leave(name),
            "time": lambda: self.pass_time(0.4 * (choice + 1)),
            "resync": self.resync,
        }[kind]()

    def drain(self) -> None:
        """Every join finishes, every relay, answer and read comes, and time passes every deadline."""
        for _ in range(100):
            if self.joining:
                self.finish_join(next(iter(self.joining)))
            elif self.relays:
                self.relay(0)
            elif self.answers:
                self.answer(0)
            elif self.reads:
                self.answer_read(0, fails=False)
            elif self.wakes:
                self.pass_time(GAP_WAIT * 2)
            elif self.resync_due:
                self.resync()
            else:
                return
        raise AssertionError("the core never settles")

    # --- invariants -----------------------------------------------------------------------------

    def check(self, settled: bool = False) -> None:
        for member in list(self.members.values()) + self.gone:
            self.check_member(member)
        for own in self.own:
            assert len(own.finishes) <= 1, f"publish {own.id} finished {own.finishes}"
        in_line = [n for n in self.own_delivered if n not in self.unknown]
        assert in_line == sorted(in_line), "this node's publishes went out out of order"
        if not settled:
            return
        assert not self.core.pending and not self.core.holding and not self.wakes and not self.reads
        assert all(not sequence.held for sequence in self.core.sequences.values()), "something stays held"
        for own in self.own:
            assert len(own.finishes) == 1, f"publish {own.id} finished {own.finishes}"
        for member in self.members.values():  # a member here now has everything the history holds
            got = {stamp_of(m) for m in member.received}
            for offset, _ in self.entries:
                if member.start.epoch == self.epoch and offset <= member.start.offset:
                    continue
                assert (offset, self.epoch) in got or offset in self.gaps.get(self.epoch, ()), (offset, member)

    def check_member(self, member: Member) -> None:
        seen: set[tuple[int, str]] = set()
        latest = member.start.epoch  # the latest epoch this member has received (or read)
        last: dict[str, int] = {member.start.epoch: member.start.offset}  # epoch -> last offset received in order
        for message in member.received:
            found = stamp_of(message)
            assert found is not None
            offset, epoch = found
            assert found not in seen, f"{found} received twice: {member}"
            seen.add(found)
            if message in self.late_sent or epoch_order(epoch) < epoch_order(latest):
                self.late += 1
                continue  # a late message of an earlier epoch: once, as it is
            if member.recovered and epoch == member.start.epoch:
                assert offset > member.start.offset, f"{found} is older than the position read: {member}"
            previous = last.get(epoch, 0)
            assert offset > previous, f"{found} after {previous}: {member}"
            skipped = set(range(previous + 1, offset))
            allowed = self.gaps.get(epoch, set())
            assert epoch in self.lost_epochs or skipped <= allowed, f"{epoch} {sorted(skipped - allowed)} skipped"
            last[epoch] = offset
            latest = epoch


KINDS = [
    "own",
    "plain",
    "other",
    "answer",
    "relay",
    "lose",
    "read",
    "read_fails",
    "lose_history",
    "trim",
    "join",
    "finish",
    "leave",
    "time",
    "resync",
]
# Publishing and arriving are the common steps; faults are rarer.
WEIGHTED = ["own", "other", "other", "relay", "relay", "relay", "answer", "answer", "time", "join", "finish"] + KINDS
steps = st.lists(st.tuples(st.sampled_from(WEIGHTED), st.integers(0, 8)), min_size=10, max_size=80)


def run(scenario: list[tuple[str, int]]) -> World:
    """Play `scenario` after a first member joined, checking the invariants after each step and at the end."""
    world = World()
    for kind, choice in [("join", 0), ("finish", 0), *scenario]:
        world.step(kind, choice)
        world.check()
    world.drain()
    world.check(settled=True)
    return world


@settings(max_examples=1000, derandomize=True, database=None)
@given(steps)
# Found by this test, each a bug of the logic routing.py had before the core:
# a failed catch-up read skipped two holes (1, and 3 behind 2) but reported only the first as lost;
@example([("own", 0), ("own", 0), ("own", 2), ("own", 1), ("own", 2), ("own", 1), ("relay", 0), ("relay", 0)])
@example(
    [("own", 0), ("own", 0), ("own", 2), ("own", 1), ("own", 2), ("own", 1), ("relay", 0), ("relay", 0)]
    + [("time", 2), ("read_fails", 0)]
)
# this node's own message, answered at once but held behind an earlier offset, was overtaken by the next publish;
@example([("other", 0)] * 8 + [("own", 2), ("plain", 0)])
# a catch-up read from "no history yet" (epoch "") that found the history begun was dropped, and with it offset 1.
@example([("own", 0)] * 8 + [("own", 1), ("lose", 0)])
# Found once the test asked that a read that answered skip only what the history no longer holds:
# a catch-up read of a history trimmed past the sequence's position skipped it all, offsets still kept included;
@example([("own", 0)] * 4 + [("own", 1)] * 3 + [("lose", 0), ("lose", 0), ("trim", 0)])
# and reading those kept offsets must not displace a held publish of the same offset (its publisher waited on).
@example([("own", 0)] * 6 + [("own", 1), ("own", 2), ("lose", 0), ("trim", 0)])
def test_every_interleaving_keeps_the_delivery_invariants(scenario: list[tuple[str, int]]) -> None:
    world = run(scenario)
    event(f"gaps reported: {bool(world.gaps)}")
    event(f"epochs: {min(world.epochs, 3)}")
    event(f"members at the end: {len(world.members)}")
    event(f"fenced off: {world.fenced_off > 0}")
    event(f"late: {world.late > 0}")


def test_offsets_go_out_in_order_after_a_missing_one_is_read() -> None:
    world = run([("join", 0), ("finish", 0), ("other", 0), ("other", 0), ("relay", 1), ("time", 3), ("read", 0)])
    assert [stamp_of(m) for m in world.members["m0"].received] == [(1, "0001"), (2, "0001")]
    assert not world.gaps
