"""The interfaces plugins and application code program against: `Client`, `Gateway`, `Handler`.

These are `typing.Protocol`s: narrow views of the running objects, so a plugin
depends on what it may use and nothing else. Re-exported by `wsgate`. Built-in
plugins use exactly these, as third-party plugins do. This module imports only
the wire protocol and history positions, so every layer may name these types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from .errors import CloseReason
from .history import Position
from .protocol import MESSAGE, Message

__all__ = ["Client", "Gateway", "Handler", "Members", "Position", "eager", "is_eager"]


class Members(list[bytes]):
    """The encoded members a presence answer lists, and `total`: how many the room has (more than listed when
    the list was cut at `presence.max_answer_bytes`)."""

    __slots__ = ("total",)

    def __init__(self, listed: list[bytes], total: int) -> None:
        super().__init__(listed)
        self.total = total


@runtime_checkable
class Client(Protocol):
    """One connected client, as handlers and hooks receive it."""

    @property
    def id(self) -> str:
        """The client's id (a UUID), as sent in `connected` and stamped as `client_id` on its messages."""

    @property
    def identity(self) -> object:
        """What an authentication plugin returned (`wsgate_authenticate`); None when anonymous."""

    @property
    def rooms(self) -> Set[str]:
        """The rooms the client is in (read-only: join and leave through the gateway)."""

    @property
    def remote(self) -> str | None:
        """The peer address of the connection."""

    @property
    def gateway(self) -> Gateway:
        """The running gateway."""

    @property
    def protocol(self) -> int:
        """The protocol version the client speaks: 1, the module guide's (the default), or 2, asked for with
        `/ws?protocol=2` (docs/protocol.md, "Protocol versions")."""

    def send(self, payload: Mapping[str, Any]) -> Awaitable[None]:
        """Send one JSON object to this client alone (stamped with `timestamp` if it has none).

        Queued at once: awaiting the result is allowed and completes immediately.
        Raises `ClientError` (`invalid JSON format`) for data JSON cannot carry, ValueError for an object
        larger, encoded, than `websocket.send_queue_bytes` (it could never wait for a client). Sent while this
        client's message with an `id` is handled, it gets that `id` as its last key, unless it has an `id` of
        its own (docs/protocol.md, "Request ids").
        """

    def enqueue(self, message: bytes) -> None:
        """Send one message that is already encoded JSON (`wsgate.protocol.encode`) to this client alone.

        Raises ValueError when `message` is not valid UTF-8 (a text frame must be, RFC 6455 section 8.1), or
        larger than `websocket.send_queue_bytes`. Queued while this client's message with an `id` is handled, a
        JSON object gets that `id` as its last key (docs/protocol.md, "Request ids").
        """

    @overload
    def drop(self, code: CloseReason) -> None: ...
    @overload
    def drop(self, code: int, reason: str) -> None: ...
    def drop(self, code: CloseReason | int, reason: str = "") -> None:
        """Close the connection with `code` and `reason`, without waiting; idempotent.

        `drop(wsgate.errors.OPERATOR_DISCONNECT)` closes for one of wsgate's own reasons (its code, text and
        metric label); `drop(code, reason)` for the plugin's own, counted as `other` in
        `websocket_connections_closed_total`.

        `code` must be one an endpoint may send (RFC 6455 sections 7.4.1 and 7.4.2): 1000-1003, 1007-1014, or
        3000-4999 (4000-4999 are the application's). Any other (1004-1006, 1015, below 1000, 1016-2999, 5000 and
        up) raises ValueError, and nothing is sent. A `reason` over 123 bytes of UTF-8 is cut on a character
        boundary (a close frame carries at most 125 bytes, two of them the code). Under protocol 2 the reason
        ends with the reconnect advice of `code` (docs/protocol.md, "Reconnect advice"); pass a
        `wsgate.errors.CloseReason` to give advice of your own.

        What is queued for the client and not yet written is dropped with it: say why in the reason, not in a
        message sent just before.
        """


Handler = Callable[[Client, Message], Awaitable[Any]]
"""`async def handler(client, message)`: handles one message type for one client."""

_EAGER = "__wsgate_eager__"

_F = TypeVar("_F", bound=Callable[..., Any])


def eager(function: _F) -> _F:
    """Mark a message handler, or a `wsgate_authorize` implementation, safe to start outside any task.

    A message whose handler is eager (and every `wsgate_authorize` implementation too, when there are any) starts
    at once in the connection's read callback, and costs no task and no loop turn when it finishes without
    waiting. When it first suspends, a task is made for the rest. The rule it must keep: before its first `await`
    that suspends, it uses nothing that needs a current task: `asyncio.timeout`, `asyncio.TaskGroup`, an aiohttp
    client request with a timeout, a redis-py command (it reads under `asyncio.timeout`), or anything built on them
    (docs/plugins.md, "Eager handlers"). Unmarked handlers always start in a task. Returns `function`, marked.

    The mark names the function itself: a wrapper that `functools.wraps` copies it to is not eager unless marked
    too (it may add what needs a task). A bound method marks its function.
    """
    target = getattr(function, "__func__", function)
    setattr(target, _EAGER, target)
    return function


def is_eager(function: object) -> bool:
    """Whether `function` (or a bound method's function) was marked with `eager`, itself and not a function it
    wraps."""
    target = getattr(function, "__func__", function)
    return getattr(target, _EAGER, None) is target


@runtime_checkable
class Gateway(Protocol):
    """The running gateway: what handlers (`client.gateway`), hooks and application code may do.

    Reached as `client.gateway` in a handler, as the `gateway` argument of
    `wsgate_services`, `wsgate_startup` and `wsgate_shutdown`, and as
    `app[wsgate.keys.GATEWAY]` from aiohttp code. Everything published through it
    takes the one route (docs/architecture.md), so code written against it keeps
    working when the gateway scales out.
    """

    @property
    def services(self) -> Mapping[str, object]:
        """Services provided by plugins (`wsgate_services`), by name: the spec's service layer."""

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The `[plugins.<name>]` table of the settings file (empty when absent), read-only."""

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` as a supervised background task: an unexpected exception is logged, counted
        (`wsgate_task_restarts_total{task=name}`) and `run()` is started again after a backoff; while it
        waits, `/health` lists it and `/ready` answers 503. It stops when `run()` returns, when the
        returned task is cancelled, or at shutdown (after `wsgate_shutdown`)."""

    # --- messages ---------------------------------------------------------------------

    async def publish(
        self,
        room: str,
        data: Any,
        *,
        type: str = MESSAGE,
        client_id: str | None = None,
        skip: Client | None = None,
        idempotency_key: str | None = None,
        publisher: Client | str | None = None,
    ) -> int:
        """Send `{"type": type, "room": room, "data": data}` to every member of `room`, on every node.

        `idempotency_key` (a string of 1 to 64 characters, else `ClientError` `invalid JSON format`): within
        `publish.idempotency_window` (5 minutes), a second publish with the same key, by the same `publisher`, to
        the same room, on any node, is delivered nowhere and kept nowhere; it returns
        `wsgate.idempotency.Duplicate` (an int, 0) whose `first` holds the first publish's offset and epoch (in a
        room with history), and nobody is sent anything, the publishing client included (not refused either: the
        first one's delivery is what every member, the publisher too, gets). Retrying after `publish outcome
        unknown` with the same key is safe: the message is delivered at most once. `publisher` says whose keys
        they are: a client's (its user's when authenticated, else its connection's), a name of a server-side
        publisher (the HTTP API's is `"api"`), or None (the gateway's own code, one scope of its own). With a
        key, a room without history needs the broker to take it, as a room with history does (and raises the
        same errors); it is delivered here once the broker answered (one Redis round trip, for this publish
        alone). See docs/protocol.md, "idempotency_key".

        The spec's RoomBroadcast / NotifyRoom. `client_id` names the sender (absent for server
        messages). `skip`: one client of this node left out (a publish's `"skip_self": true`); the message
        is still kept and reaches every other member, the same user's other connections included.
        In a room with history the message gets the room's next `offset` and its `epoch`. Returns how many
        local clients it was queued for. Raises `ClientError`:
        `invalid JSON format` for data JSON cannot carry, `message is too large` when the message, encoded, would
        not fit in what may wait for one client (`websocket.send_queue_bytes`: nobody got it), `history is
        unavailable` when the room keeps history and the history store did not keep it (then nobody got it),
        `publish outcome unknown` when the store took it and did not answer within `broker.connect_timeout` (then, if it
        was kept, every member on every node gets it once; publishing it again may deliver it twice).
        """

    async def client_publish(
        self, client: Client, room: str, data: Any, *, skip: Client | None = None, idempotency_key: str | None = None
    ) -> None:
        """A client's own publish (the built-in `publish` message): as `publish` from `client` (its id stamped as
        `client_id`, its keys its own), but it returns once the message has its place in every order, and its
        errors are answered to `client` (with the message's request id) when its outcome is known. Meanwhile the
        client's next messages are read: its publishes to rooms with history on Redis overlap (at most
        `wsgate.connection.OVERLAP` at once), and any other message of its waits until they are answered. A
        publish with an `idempotency_key` to a room without history returns only once Redis took its claim (its
        place in the order is fixed then)."""

    async def broadcast(
        self, data: Any, *, type: str = MESSAGE, client_id: str | None = None, skip: Client | None = None
    ) -> int:
        """Send `{"type": type, "data": data}` to every connected client on every node (the spec's
        Broadcast / NotifyAllClients), but `skip` (one client of this node, as for `publish`). Returns how
        many local clients it was queued for. Raises `ClientError` `message is too large` as `publish` does."""

    # --- rooms ------------------------------------------------------------------------

    async def authorize(self, client: Client, action: str, room: str | None) -> None:
        """Raise `ClientError` (`not allowed`, or a plugin's text) unless `client` may do `action` in `room`.

        The `[auth]` rules first, then `wsgate_authorize` plugins. `action` is one of
        subscribe, publish, broadcast (room None), history, presence, or a plugin's own.
        """

    async def subscribe(self, client: Client, room: str, *, since: Position | None = None) -> None:
        """Join `room` and answer `subscribed` (the spec's message, with `offset` and `epoch` in a room
        with history). With `since`, first send what the client missed, then live messages, with no
        gap and no duplicate, or `recovered: false`. Raises `ClientError` (limits, `history is unavailable`),
        and `ClientGone` when the client left meanwhile. Call `authorize` first: this does not."""

    async def join(self, client: Client, room: str) -> int:
        """Add `client` to `room` without an answer; returns the room's member count once messages
        from every node arrive. Raises `ClientError` (limits), and `ClientGone` when the client left
        meanwhile (it is never joined then)."""

    def unsubscribe(self, client: Client, room: str) -> None:
        """Take `client` out of `room`; `ClientError` (`not subscribed to this room`) when it is not in it."""

    async def server_subscribe(self, client: Client, room: str) -> None:
        """Subscribe `client` to `room` on the server's initiative (docs/protocol.md, "Server-side subscriptions"):
        the checks of a client's own subscribe (the room name, `authorize`, the room limits), then `subscribed`
        with `"server": true` (and `offset`/`epoch` in a room with history), never carrying a request id.
        Nothing is sent when it is in the room already. Raises `ClientError` for a refusal, which is not sent to
        the client (report it: the HTTP API lists it, the connect path logs it), and `ClientGone` when the client
        has left."""

    def server_unsubscribe(self, client: Client, room: str) -> bool:
        """Take `client` out of `room` on the server's initiative, telling it with `unsubscribed` and
        `"server": true` (while a subscribe to `room` is in flight: once that is answered, so the client hears
        `subscribed` first); False (nothing sent) when it is not in the room or is closing."""

    async def reauthenticate(self, client: Client, identity: object) -> list[str]:
        """Give `client` a new identity (a refreshed token): its expiry moves to the new one's
        (`Identity.expires_at`), and it leaves, with `unsubscribed`, every room the new identity may no
        longer subscribe to (the `[auth]` rules, then `wsgate_authorize`); then it joins the rooms of the new
        identity's `subs` it is not in, as `server_subscribe` does (refusals logged and counted). Returns the
        rooms it left. Raises `ClientGone` when the client has left."""

    async def history(
        self, room: str, limit: int | None = None, *, before: int | None = None
    ) -> tuple[Position, list[bytes]]:
        """The room's position and its last `limit` kept messages (at most `history.size`) with an offset below
        `before` (None: the newest), oldest first, each already encoded: the newest that fit in
        `history.max_answer_bytes` (always at least one, if any). Page back with `before` = the first
        message's offset. Raises `ClientError`: `room has no history`, `history is unavailable`."""

    async def presence(self, room: str) -> Members:
        """The encoded members of `room` on every node: the first that fit in `presence.max_answer_bytes`, and
        how many there are (`Members.total`). Raises `ClientError`: `room has no presence`,
        `presence is unavailable`."""

    # --- clients and operations ---------------------------------------------------------

    def client(self, client_id: str) -> Client | None:
        """The client with this id on this node, if connected here."""

    def user_clients(self, user_id: str) -> list[Client]:
        """This node's clients whose identity has this user id (`Identity.user_id`), in no particular order."""

    def stats(self, *, top_rooms: int = 20, sample_clients: int = 50) -> dict[str, Any]:
        """This node's figures: `node`, `clients`, `rooms`, `top_rooms` ([room, members] by size),
        `received` and `delivered` (messages so far), `errors` (by reason), `broker` (ok or degraded)
        and `clients_sample` (the newest clients: id, address, rooms)."""

    async def share_figures(self, figures: Mapping[str, Any], *, others: bool = True) -> list[dict[str, Any]]:
        """Share this node's `figures` (any JSON object) and return every live node's, this one's
        included; only this node's when the others cannot be reached. `others=False`: share only, and
        return nothing (reading and decoding every node's figures costs each node more, the more nodes there are)."""
