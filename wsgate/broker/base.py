"""What every broker provides: relay, room interest, history and commands between nodes. Nothing else.

The broker is the backplane between gateway nodes. It never delivers to local
clients itself: the router (`wsgate.routing`) does that, in the order messages
were published, and hands the broker the same bytes to relay. Presence storage
is a separate interface (`wsgate.presence.base`), as centrifuge keeps
`broker.go` and `presence.go` apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ..errors import WsgateError
from ..history import Position, Replay

Receive = Callable[[str | None, bytes], None]
"""Called with a message another node published: its room (None: every client) and its encoded bytes."""


Commanded = Callable[[bytes], None]
"""Called with a command a node sent (`Broker.command`; this node's own too), as sent: the receiver checks it
(it may be anything another process published on the control channel)."""


class BrokerError(WsgateError):
    """The broker cannot do what was asked (bad URL, server unreachable, history not kept); one line."""


class OutcomeUnknown(BrokerError):
    """A message was handed to the backplane, which did not answer in time (a stalled or lost Redis): it may
    have been kept and relayed, or not. Not "not sent": the publisher is told the outcome is unknown, and the
    broker still learns it when it can, passing a kept message to `receive` (DESIGN "The fault model")."""


class Broker(Protocol):
    """Carries encoded messages between gateway nodes, and keeps the history of rooms that have one.

    Messages one node hands to `relay` and `append` reach every other node that
    receives their room, in that order, at most once (a node never receives its own
    messages back; while the backplane is away, relayed messages are dropped and
    appends fail).
    """

    @property
    def state(self) -> str:
        """`ok`, or `degraded` while other nodes cannot be reached (local delivery goes on)."""

    async def start(
        self, receive: Receive, resynced: Callable[[], None] = lambda: None, commanded: Commanded = lambda _: None
    ) -> None:
        """Connect; messages from other nodes are passed to `receive` from now on, commands from other nodes
        (`command`) to `commanded`, and `resynced` is called each time the broker has subscribed again after
        losing its connection (what was relayed meanwhile never arrived: rooms with history catch up from it).
        Raises BrokerError."""

    # --- commands -------------------------------------------------------------------

    async def command(self, payload: bytes) -> int:
        """Send `payload` (a command, `wsgate.commands`: JSON, at most `commands.MAX_COMMAND_BYTES`) to every
        node, this one included, whose `commanded` gets it: every node gets the commands of every node in one
        and the same order (each node's in the order sent), at most once. Returns how many other nodes it was
        handed to (0 with no other node). Raises OutcomeUnknown when it was handed over without an answer within
        `broker.connect_timeout` (it may have gone out: then it comes back here too, in its order), and
        BrokerError when the other nodes cannot be reached, or this node would not get it back: then none got it."""

    # --- relay ----------------------------------------------------------------------

    def relay(self, room: str | None, message: bytes) -> None:
        """Send `message` to `room` (None: everyone) on every other node, after what was handed over before.

        Never waits. When the other nodes cannot be reached the message is dropped and
        counted (`websocket_broker_dropped_messages_total`): delivery across nodes is at most once.
        """

    def append(self, room: str, head: bytes, claim: bytes | None = None) -> asyncio.Future[bytes]:
        """Keep a message in a room's history and relay it: the history path of `relay`.

        `claim`: an idempotency claim (`wsgate.idempotency.claim_id`). When a publish with it was kept within the
        idempotency window (on any node), nothing is kept or relayed and the future fails with AlreadyPublished,
        holding the first's offset and epoch; else the claim is taken with the message, in the same atomic step.

        `head` is the encoded message without its closing brace. The broker gives it the
        room's next offset and the room's epoch (`history.stamp`), keeps it, and relays the
        stamped bytes to the other nodes, in order with `relay`. The future gives the stamped
        bytes; it fails with BrokerError only when the message was certainly not kept (never
        handed to the backplane, or refused by it: then it was not relayed either), and with
        OutcomeUnknown when the backplane took it without answering in time. Then the broker
        keeps asking (the same message is never kept twice) and, if it was kept, passes the
        stamped bytes to `receive`, so this node's members get it too, in offset order.
        Cancelling the future withdraws nothing: a message that goes out all the same is passed
        to `receive`, as after OutcomeUnknown (the router never lets its callers cancel it).
        """

    def relay_once(self, room: str, message: bytes, claim: bytes) -> asyncio.Future[bytes]:
        """`relay` with an idempotency claim, for a room without history: the claim is taken and the message
        relayed in one atomic step, in order with `relay` and `append`. The future gives `message` once that is
        done; it fails with AlreadyPublished when a publish with `claim` went out within the window (nothing is
        relayed), and with BrokerError / OutcomeUnknown exactly as `append` does (after OutcomeUnknown, a run the
        broker learns of later passes the message to `receive`, so this node's members get it too; so does one
        whose future was cancelled, as for `append`). Unlike `relay`, it does not deliver without the backplane:
        a claim needs it."""

    # --- room interest --------------------------------------------------------------

    def room_added(self, room: str) -> None:
        """This node's first member joined `room`: start receiving it from other nodes."""

    def room_removed(self, room: str) -> None:
        """This node's last member left `room`: stop receiving it."""

    async def wait_receiving(self, room: str) -> None:
        """Return once messages for `room` from other nodes arrive here (so `subscribed` means it)."""

    # --- history --------------------------------------------------------------------

    async def history_position(self, room: str) -> Position:
        """The room's current offset and epoch (created, at offset 0, if the room has none yet)."""

    async def history_replay(self, room: str, since: Position, *, max_bytes: int = 0) -> Replay:
        """The messages after `since`, read together with the position they lead up to; `recovered=False`
        when they hold more than `max_bytes` bytes (0: no bound). Raises BrokerError."""

    async def history_last(
        self, room: str, limit: int, *, before: int = 0, max_bytes: int = 0
    ) -> tuple[Position, list[bytes]]:
        """The position and the last `limit` kept messages of a room with an offset below `before` (0: any),
        oldest first: the newest that fit in `max_bytes` bytes (0: no bound; always one when there is one).
        Raises BrokerError."""

    async def close(self) -> None:
        """Disconnect and release resources."""
