"""Server-side commands: subscribe, unsubscribe or disconnect clients, by client id or user id, on every node.

A command comes from the HTTP API (`POST /api/subscribe`, `/api/unsubscribe`, `/api/disconnect`: `wsgate.api`).
`Commands.run` tags it with an id and hands it to every node through the broker (`Broker.command`; with Redis,
the `<prefix>:control` channel), this node included. Every node carries out what arrives for its own
connections, one command after the other, in the one order the broker delivers them (`Commands.consume`): a
subscribe and the unsubscribe sent after it are never swapped, whichever nodes they were sent to. The API
request waits, at most `answer_wait` seconds, until this node's consumer has carried its own command out, and
answers what happened here: the request's task never carries a command out itself, so cancelling it (a client
that hangs up, a shutdown) never leaves this node out of what the others do. When the other nodes cannot be
reached, the command goes through the same queue, on this node only.

The connection a command names may be on any node, so a node that holds none of them answers with a count of 0,
never "not found". Each named connection is handled on its own (at once, each within `plugins.hook_timeout`:
`Gateway.try_server_subscribe`), so one slow `wsgate_authorize` holds the commands behind it up for that long
at most.

What arrives is checked as strictly as an API body (`decode`, then `parse`): anything else (garbled, too
large, an unknown operation) is logged (throttled), counted (`websocket_errors_total{reason="bad_command"}`)
and ignored. A command that finds QUEUE_SIZE others waiting is dropped, logged (throttled) and counted
(`command_dropped`); the API request that sent it is answered so (`Reach.missed`).

A subscribe runs the same checks as a client's own (`Gateway.server_subscribe`: the room name, the `[auth]`
rules and `wsgate_authorize`, the room limits); a refusal, or a plugin hook that raised or ran out of time
(`internal error`), is not sent to the client: it is listed in the API's answer (this node's) or logged (the
other nodes'), and counted under its error's label.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from . import errors, protocol
from .broker import Broker, BrokerError
from .broker.base import OutcomeUnknown
from .errors import ClientError
from .gateway import Gateway
from .metrics import Metrics
from .protocol import Decoder
from .supervision import Throttled

log = logging.getLogger(__name__)

SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
DISCONNECT: Final = "disconnect"
OPERATIONS: Final = (SUBSCRIBE, UNSUBSCRIBE, DISCONNECT)

MAX_USER_ID_LENGTH: Final = 1024
"""The longest `user_id` a command may name, in characters (a JWT `sub` is far shorter in practice)."""
MAX_ID_LENGTH: Final = 64
"""The longest command id (`Command.id`) taken from the broker; `Commands.run` gives 32 hex digits."""
MAX_COMMAND_BYTES: Final = 16384
"""The largest command a node sends or takes from another, encoded (a room name and an id fit many times)."""
QUEUE_SIZE: Final = 1024
"""Commands waiting to be carried out here; past it, one more is dropped, logged and counted (COMMAND_DROPPED)."""
MAX_LISTED: Final = 100
"""Refusals listed in one answer (the first ones); `local_clients` still counts every connection."""
BAD_COMMAND: Final = "bad_command"
"""The `websocket_errors_total` label of a command from the broker that is not one."""
COMMAND_DROPPED: Final = "command_dropped"
"""The `websocket_errors_total` label of a command dropped because QUEUE_SIZE others waited already."""
DROPPED: Final = "dropped"
"""`Reach.missed`: this node had QUEUE_SIZE commands waiting: the command was not carried out here."""
PENDING: Final = "pending"
"""`Reach.missed`: this node did not carry the command out within `answer_wait` (it still may)."""
LOG_INTERVAL: Final = 10.0  # seconds between two lines about bad or dropped commands


@dataclass(frozen=True, slots=True)
class Command:
    """One command: `op` (subscribe, unsubscribe, disconnect), its `room` (None for disconnect), and whom it
    names: exactly one of `client_id` (one connection) and `user_id` (every connection of that user)."""

    op: str
    room: str | None
    client_id: str | None = None
    user_id: str | None = None
    id: str | None = None
    """Given by `Commands.run` (a random hex): its sender knows it when it comes back (None: not sent yet)."""

    def encode(self) -> bytes:
        """The command as JSON (`{"op":..,"room":..,"client_id"|"user_id":..,"id":..}`), as `decode` reads it
        back."""
        obj: dict[str, Any] = {"op": self.op}
        if self.id is not None:
            obj["id"] = self.id
        if self.room is not None:
            obj["room"] = self.room
        if self.client_id is not None:
            obj["client_id"] = self.client_id
        else:
            obj["user_id"] = self.user_id
        return protocol.dumps(obj)

    def describe(self) -> str:
        """`client <id>` or `user <id>`, for log lines."""
        return f"client {self.client_id}" if self.client_id is not None else f"user {self.user_id!r}"


def parse(op: str, obj: Mapping[str, Any], decoder: Decoder) -> Command:
    """The `op` command a JSON object asks for (an API body, or a command from the broker).

    `room` (subscribe, unsubscribe: `Decoder.required_room`), and exactly one of `client_id` (a client id: a
    UUID, as sent in `connected`) and `user_id` (a non-empty string of at most MAX_USER_ID_LENGTH characters).
    Other fields are ignored (`id` too: `decode` reads it). Raises ClientError: `invalid JSON format` with a
    detail that names the field, `room name is required`, or the room name's own error.
    """
    room = None if op == DISCONNECT else decoder.required_room(obj)
    client_id, user_id = obj.get("client_id"), obj.get("user_id")
    if (client_id is None) == (user_id is None):
        raise ClientError(
            errors.INVALID_JSON,
            f"give exactly one of 'client_id' and 'user_id' (got {'both' if client_id is not None else 'neither'})",
        )
    if client_id is not None:
        if not isinstance(client_id, str) or not _is_uuid(client_id):
            raise ClientError(
                errors.INVALID_JSON, "field 'client_id' must be a client id (a lower-case UUID, as in connected)"
            )
        return Command(op, room, client_id=client_id)
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise ClientError(
            errors.INVALID_JSON,
            f"field 'user_id' must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters",
        )
    return Command(op, room, user_id=user_id)


def decode(payload: bytes, decoder: Decoder) -> Command:
    """The command a node sent (`Command.encode`); ClientError, with a detail, for anything else."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise ClientError(errors.INVALID_JSON, f"a command is at most {MAX_COMMAND_BYTES} bytes, got {len(payload)}")
    obj = decoder.loads(payload)
    if not isinstance(obj, dict):
        raise ClientError(errors.INVALID_JSON, "a command must be a JSON object")
    op = obj.get("op")
    if op not in OPERATIONS:
        raise ClientError(errors.INVALID_JSON, f"field 'op' must be one of {', '.join(OPERATIONS)}")
    command_id = obj.get("id")
    if command_id is not None and (not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH):
        raise ClientError(errors.INVALID_JSON, f"field 'id' must be a non-empty string of at most {MAX_ID_LENGTH}")
    return replace(parse(op, obj, decoder), id=command_id)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36 and text == text.lower()  # the canonical form only, as client ids are sent


@dataclass(slots=True)
class Outcome:
    """What a command did on one node: `local_clients`, how many of its connections the command named (found
    here), and `refused`, those a subscribe was refused for (`{"client_id", "error", "detail"?}`, the first
    MAX_LISTED; the others are still refused and counted)."""

    local_clients: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Reach:
    """What `Commands.run` did: this node's `outcome` (None: see `missed`), `nodes` (how many nodes got the
    command, this one included), `unreached`: why the other nodes could not be reached (None: they were), and
    `missed`: why there is no outcome of this node's (DROPPED or PENDING; None: there is one)."""

    outcome: Outcome | None
    nodes: int
    unreached: str | None = None
    missed: str | None = None


class Commands:
    """Hands commands to every node and carries out those that arrive here, in order (see the module docstring).

    `answer_wait`: how long `run` waits for this node to carry its own command out.
    """

    def __init__(
        self, gateway: Gateway, broker: Broker, decoder: Decoder, metrics: Metrics, *, answer_wait: float
    ) -> None:
        self._gateway = gateway
        self._broker = broker
        self._decoder = decoder
        self._metrics = metrics
        self._answer_wait = answer_wait
        self._queue: asyncio.Queue[Command] = asyncio.Queue(QUEUE_SIZE)
        self._waiting: dict[str, asyncio.Future[Outcome | None]] = {}  # id -> its sender's `run` (None: dropped)
        self._bad = Throttled(log, LOG_INTERVAL)
        self._dropped = Throttled(log, LOG_INTERVAL)

    async def run(self, command: Command) -> Reach:
        """Give `command` an id and hand it to every node (this one through the broker too, in the broker's
        order); wait, at most `answer_wait`, until this node has carried it out. Never raises for the other
        nodes: when they cannot be reached, `Reach.unreached` says why, and it is carried out here only."""
        command = replace(command, id=uuid.uuid4().hex)
        assert command.id is not None
        payload = command.encode()
        if len(payload) > MAX_COMMAND_BYTES:  # (parse bounds every field: only a huge room name limit gets here)
            raise ClientError(errors.INVALID_JSON, f"the command is over {MAX_COMMAND_BYTES} bytes")
        done = self._waiting[command.id] = asyncio.get_running_loop().create_future()
        try:
            unreached = None
            others = 0
            try:
                others = await self._broker.command(payload)
            except OutcomeUnknown:  # it may have gone out: if so it comes back here, in its order; else 504
                pass  # (how many other nodes got it is unknown: `nodes` counts this one)
            except BrokerError as exc:  # nobody got it: this node's queue, so it keeps its place after the others
                unreached = str(exc)
                self._enqueue(command)
            try:
                async with asyncio.timeout(self._answer_wait):
                    outcome = await done
            except TimeoutError:
                return Reach(None, 1 + others, unreached, PENDING)
            return Reach(outcome, 1 + others, unreached, None if outcome is not None else DROPPED)
        finally:
            del self._waiting[command.id]

    def received(self, payload: bytes) -> None:
        """The broker's callback for a command (another node's or this node's own): checked, then queued for
        `consume`."""
        try:
            command = decode(payload, self._decoder)
        except ClientError as exc:
            self._metrics.error(BAD_COMMAND)
            self._bad("commands: ignored a command from Redis that is not one: %s (%.80r)", exc.detail or exc, payload)
            return
        self._enqueue(command)

    def _enqueue(self, command: Command) -> None:
        """Queue `command` for `consume`; when QUEUE_SIZE wait already, drop it (logged, counted, and its sender
        told, when it is this node's)."""
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            self._metrics.error(COMMAND_DROPPED)
            self._dropped(
                "commands: %d commands wait already; dropped %s for %s (not carried out on this node)",
                QUEUE_SIZE,
                command.op,
                command.describe(),
            )
            self._settle(command, None)

    def _settle(self, command: Command, outcome: Outcome | Exception | None) -> None:
        """Tell `run` what became of its command on this node (None: dropped; an exception: it failed), if it
        is this node's and `run` still waits."""
        done = self._waiting.get(command.id) if command.id is not None else None
        if done is None or done.done():
            return
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)

    async def consume(self) -> None:
        """Carry out the commands the broker delivered, one after the other (a supervised task, `commands`)."""
        while True:
            command = await self._queue.get()
            try:
                outcome = await self.apply(command)
            except Exception as exc:  # (each connection's failure is caught: this is a bug)
                log.exception("commands: carrying out %s for %s failed", command.op, command.describe())
                self._settle(command, exc)
            else:
                self._settle(command, outcome)

    async def apply(self, command: Command) -> Outcome:
        """Carry `command` out for this node's connections it names, all at once (each within
        `plugins.hook_timeout`); refusals are logged and counted."""
        if command.client_id is not None:
            found = self._gateway.client(command.client_id)
            targets = [found] if found is not None else []
        else:
            assert command.user_id is not None
            targets = self._gateway.user_clients(command.user_id)  # (a list: the index changes as they await)
        outcome = Outcome(len(targets))
        if command.op == SUBSCRIBE:
            assert command.room is not None
            room = command.room
            refusals = await asyncio.gather(
                *(self._gateway.try_server_subscribe(conn, room, "the HTTP API") for conn in targets)
            )
            for conn, err in zip(targets, refusals, strict=True):
                if err is not None and len(outcome.refused) < MAX_LISTED:
                    refusal = {"client_id": conn.id, "error": err.text}
                    if err.detail is not None:
                        refusal["detail"] = err.detail
                    outcome.refused.append(refusal)
        elif command.op == UNSUBSCRIBE:
            assert command.room is not None
            for conn in targets:
                self._gateway.server_unsubscribe(conn, command.room)
        else:
            for conn in targets:
                log.info("client %s disconnected by the server (HTTP API)", conn.id, extra={"client_id": conn.id})
                conn.drop(errors.SERVER_DISCONNECT)
        return outcome
