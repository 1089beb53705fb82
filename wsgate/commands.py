"""Server-side commands: subscribe, unsubscribe or disconnect clients, by client id or user id, on every node.

A command comes from the HTTP API (`POST /api/subscribe`, `/api/unsubscribe`, `/api/disconnect`: `wsgate.api`).
`Commands.run` hands it to the other nodes (`Broker.command`; with Redis, the `<prefix>:control` channel) and
carries it out for this node's connections. Each other node carries out what arrives for its own connections,
one command after the other in the order they arrive (`Commands.consume`): a subscribe and the unsubscribe
sent after it are never swapped. The connection a command names may be on any node, so a node that holds none
of them answers with a count of 0, never "not found".

What arrives from another node is checked as strictly as an API body (`decode`, then `parse`): anything else
(garbled, too large, an unknown operation) is logged (throttled), counted
(`websocket_errors_total{reason="bad_command"}`) and ignored.

A subscribe runs the same checks as a client's own (`Gateway.server_subscribe`: the room name, the `[auth]`
rules and `wsgate_authorize`, the room limits); a refusal is not sent to the client: it is listed in the API's
answer (this node's) or logged (the other nodes'), and counted under its error's label.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import errors, protocol
from .broker import Broker, BrokerError
from .errors import ClientError, ClientGone
from .gateway import Gateway
from .metrics import Metrics
from .protocol import Decoder
from .supervision import Throttled
from .types import Client

log = logging.getLogger(__name__)

SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
DISCONNECT: Final = "disconnect"
OPERATIONS: Final = (SUBSCRIBE, UNSUBSCRIBE, DISCONNECT)

MAX_USER_ID_LENGTH: Final = 1024
"""The longest `user_id` a command may name, in characters (a JWT `sub` is far shorter in practice)."""
MAX_COMMAND_BYTES: Final = 16384
"""The largest command a node sends or takes from another, encoded (a room name and an id fit many times)."""
QUEUE_SIZE: Final = 1024
"""Commands from other nodes waiting to be carried out here; past it, one more is dropped and logged."""
MAX_LISTED: Final = 100
"""Refusals listed in one answer (the first ones); `local_clients` still counts every connection."""
BAD_COMMAND: Final = "bad_command"
"""The `websocket_errors_total` label of a command from another node that is not one."""
LOG_INTERVAL: Final = 10.0  # seconds between two lines about bad or dropped commands


@dataclass(frozen=True, slots=True)
class Command:
    """One command: `op` (subscribe, unsubscribe, disconnect), its `room` (None for disconnect), and whom it
    names: exactly one of `client_id` (one connection) and `user_id` (every connection of that user)."""

    op: str
    room: str | None
    client_id: str | None = None
    user_id: str | None = None

    def encode(self) -> bytes:
        """The command as JSON (`{"op":..,"room":..,"client_id"|"user_id":..}`), as `decode` reads it back."""
        obj: dict[str, Any] = {"op": self.op}
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


def parse(op: str, obj: Mapping[str, Any], check_room: Callable[[str], str]) -> Command:
    """The `op` command a JSON object asks for (an API body, or a command from another node).

    `room` (subscribe, unsubscribe: a non-empty string `check_room` accepts), and exactly one of `client_id`
    (a client id: a UUID, as sent in `connected`) and `user_id` (a non-empty string of at most
    MAX_USER_ID_LENGTH characters). Other fields are ignored. Raises ClientError: `invalid JSON format` with a
    detail that names the field, `room name is required`, or the room name's own error.
    """
    room = None
    if op != DISCONNECT:
        room = obj.get("room")
        if room is not None and not isinstance(room, str):
            raise ClientError(errors.INVALID_JSON, "field 'room' must be a string")
        if not room:
            raise ClientError(errors.ROOM_REQUIRED)
        check_room(room)
    client_id, user_id = obj.get("client_id"), obj.get("user_id")
    if (client_id is None) == (user_id is None):
        raise ClientError(
            errors.INVALID_JSON,
            f"give exactly one of 'client_id' and 'user_id' (got {'both' if client_id is not None else 'neither'})",
        )
    if client_id is not None:
        if not isinstance(client_id, str) or not _is_uuid(client_id):
            raise ClientError(errors.INVALID_JSON, "field 'client_id' must be a client id (a UUID, as in connected)")
        return Command(op, room, client_id=client_id)
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise ClientError(
            errors.INVALID_JSON,
            f"field 'user_id' must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters",
        )
    return Command(op, room, user_id=user_id)


def decode(payload: bytes, decoder: Decoder) -> Command:
    """The command another node sent (`Command.encode`); ClientError, with a detail, for anything else."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise ClientError(errors.INVALID_JSON, f"a command is at most {MAX_COMMAND_BYTES} bytes, got {len(payload)}")
    obj = decoder.loads(payload)
    if not isinstance(obj, dict):
        raise ClientError(errors.INVALID_JSON, "a command must be a JSON object")
    op = obj.get("op")
    if op not in OPERATIONS:
        raise ClientError(errors.INVALID_JSON, f"field 'op' must be one of {', '.join(OPERATIONS)}")
    return parse(op, obj, decoder.check_room)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36  # the canonical form only, as client ids are sent


@dataclass(slots=True)
class Outcome:
    """What a command did on one node: `local_clients`, how many of its connections the command named (found
    here), and `refused`, those a subscribe was refused for (`{"client_id", "error", "detail"?}`, the first
    MAX_LISTED; the others are still refused and counted)."""

    local_clients: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Reach:
    """What `Commands.run` did: this node's `outcome`, `nodes` (how many nodes got the command, this one
    included) and `unreached`: why the other nodes could not be reached (None: they were)."""

    outcome: Outcome
    nodes: int
    unreached: str | None = None


class Commands:
    """Carries commands out on this node and hands them to the others (see the module docstring)."""

    def __init__(self, gateway: Gateway, broker: Broker, decoder: Decoder, metrics: Metrics) -> None:
        self._gateway = gateway
        self._broker = broker
        self._decoder = decoder
        self._metrics = metrics
        self._queue: asyncio.Queue[Command] = asyncio.Queue(QUEUE_SIZE)
        self._bad = Throttled(log, LOG_INTERVAL)
        self._dropped = Throttled(log, LOG_INTERVAL)

    async def run(self, command: Command) -> Reach:
        """Hand `command` to the other nodes, then carry it out here. Never raises for the other nodes: when they
        cannot be reached, `Reach.unreached` says why (this node's part is done all the same)."""
        payload = command.encode()
        if len(payload) > MAX_COMMAND_BYTES:  # (parse bounds every field: only a huge room name limit gets here)
            raise ClientError(errors.INVALID_JSON, f"the command is over {MAX_COMMAND_BYTES} bytes")
        unreached = None
        others = 0
        try:
            others = await self._broker.command(payload)
        except BrokerError as exc:
            unreached = str(exc)
        return Reach(await self.apply(command), 1 + others, unreached)

    def received(self, payload: bytes) -> None:
        """The broker's callback for a command another node sent: checked, then queued for `consume`."""
        try:
            command = decode(payload, self._decoder)
        except ClientError as exc:
            self._metrics.error(BAD_COMMAND)
            self._bad("commands: ignored a command from Redis that is not one: %s (%.80r)", exc.detail or exc, payload)
            return
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            self._metrics.error(BAD_COMMAND)
            self._dropped("commands: %d commands from other nodes wait already; dropped one", QUEUE_SIZE)

    async def consume(self) -> None:
        """Carry out the commands other nodes sent, one after the other (a supervised task, `commands`)."""
        while True:
            command = await self._queue.get()
            try:
                await self.apply(command)
            except Exception:
                log.exception("commands: carrying out %s for %s failed", command.op, command.describe())

    async def apply(self, command: Command) -> Outcome:
        """Carry `command` out for this node's connections it names; refusals are logged and counted."""
        if command.client_id is not None:
            found = self._gateway.client(command.client_id)
            targets = [found] if found is not None else []
        else:
            assert command.user_id is not None
            targets = self._gateway.user_clients(command.user_id)  # (a list: the index changes as they await)
        outcome = Outcome(len(targets))
        for conn in targets:
            refusal = await self._apply_one(command, conn)
            if refusal is not None and len(outcome.refused) < MAX_LISTED:
                outcome.refused.append(refusal)
        return outcome

    async def _apply_one(self, command: Command, conn: Client) -> dict[str, str] | None:
        gateway = self._gateway
        try:
            if command.op == DISCONNECT:
                log.info("client %s disconnected by the server (HTTP API)", conn.id, extra={"client_id": conn.id})
                conn.drop(errors.SERVER_DISCONNECT)
            elif command.op == UNSUBSCRIBE:
                assert command.room is not None
                gateway.server_unsubscribe(conn, command.room)
            else:
                assert command.room is not None
                await gateway.server_subscribe(conn, command.room)
        except ClientGone:
            return None  # it left meanwhile: nothing to refuse
        except ClientError as err:
            assert command.room is not None
            gateway.refused(conn, command.room, err, "the HTTP API")
            refusal = {"client_id": conn.id, "error": err.text}
            if err.detail is not None:
                refusal["detail"] = err.detail
            return refusal
        return None
