"""The gateway façade: what application code and plugins may do, as `wsgate.Gateway` describes.

It holds no state of its own beyond references to the parts `create_app`
wired together; each method composes them. Messages go through the router
(the one route), room membership through the hub, history through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from . import errors, protocol
from .auth import AccessPolicy, expires_at_of, subs_of, user_id_of
from .broker import Broker, BrokerError
from .broker.base import OutcomeUnknown
from .clients import GatewayConnection
from .config import Settings
from .connection import State
from .errors import ClientError, ClientGone
from .history import Position, Replay
from .hub import Hub
from .idempotency import SERVER_SCOPE, AlreadyPublished, Duplicate, Scope, check_key, claim_id
from .metrics import Metrics
from .plugins import HookTimedOut, Plugins, within
from .presence import Presence, PresenceError, PresenceStore
from .protocol import Decoder
from .routing import Router
from .supervision import Supervisor, Throttled
from .types import Client, Members

log = logging.getLogger(__name__)


REFUSALS_LOG_INTERVAL = 10.0  # seconds between two lines about refused server-side subscriptions (with a count)
MAX_LOGGED_ROOM = 100  # characters of a room name a log line quotes


def _history_unavailable() -> ClientError:
    return ClientError(errors.HISTORY_UNAVAILABLE, "the history store cannot be reached; try again")


class Gateway:
    """Implements `wsgate.Gateway` (see there for every method's contract)."""

    def __init__(
        self,
        settings: Settings,
        *,
        plugins: Plugins,
        hub: Hub,
        router: Router,
        broker: Broker,
        presence: Presence,
        presence_store: PresenceStore,
        metrics: Metrics,
        supervisor: Supervisor,
        decoder: Decoder,
        node_id: str,
    ) -> None:
        self._settings = settings
        self._decoder = decoder
        self._plugins = plugins
        self._hub = hub
        self._router = router
        self._broker = broker
        self._presence = presence
        self._presence_store = presence_store
        self._metrics = metrics
        self._supervisor = supervisor
        self._access = AccessPolicy(settings.auth)
        self._node_id = node_id
        self._refusals = Throttled(log, REFUSALS_LOG_INTERVAL, level=logging.INFO)
        self.services: Mapping[str, object] = {}
        """Services provided by plugins (`wsgate_services`), by name: the spec's service layer."""

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        return self._plugins.options(name)

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return self._supervisor.spawn(name, run)

    # --- messages ---------------------------------------------------------------------

    async def publish(
        self,
        room: str,
        data: Any,
        *,
        type: str = protocol.MESSAGE,
        client_id: str | None = None,
        skip: Client | None = None,
        idempotency_key: str | None = None,
        publisher: Client | str | None = None,
    ) -> int:
        return await _outcome(self._begin_publish(room, data, type, client_id, skip, idempotency_key, publisher))

    async def client_publish(
        self, client: Client, room: str, data: Any, *, skip: Client | None = None, idempotency_key: str | None = None
    ) -> None:
        conn = _connection(client)
        publisher = None if idempotency_key is None else client
        started = self._begin_publish(room, data, protocol.MESSAGE, conn.id, skip, idempotency_key, publisher)
        if isinstance(started, int):
            return  # delivered: nothing is pending
        if idempotency_key is not None and not self._router.keeps_history(room):
            await _outcome(started)  # a claim in a room without history is ordered once Redis took it: the client waits
        else:
            # (its place in every order is fixed: the client's next message may be read)
            await conn.overlap(started, _publish_answer)

    def _begin_publish(
        self,
        room: str,
        data: Any,
        type: str,
        client_id: str | None,
        skip: Client | None,
        idempotency_key: str | None,
        publisher: Client | str | None,
    ) -> int | asyncio.Future[int]:
        """A publish up to its first wait (`Router.begin`: its place in every order is fixed on return, and bad
        input refused): the count of local clients it was queued for, or the future of that count
        (`_publish_answer`)."""
        message = protocol.encode(type, room=room, data=data, client_id=client_id)
        claim = None if idempotency_key is None else claim_id(_scope(publisher), room, check_key(idempotency_key))
        return self._router.begin(room, message, skip=None if skip is None else _connection(skip), claim=claim)

    async def broadcast(
        self, data: Any, *, type: str = protocol.MESSAGE, client_id: str | None = None, skip: Client | None = None
    ) -> int:
        message = protocol.encode(type, data=data, client_id=client_id)
        return await self._router.publish(None, message, skip=None if skip is None else _connection(skip))

    # --- rooms ------------------------------------------------------------------------

    async def authorize(self, client: Client, action: str, room: str | None) -> None:
        plugin_decides = self._access.check(client.identity, action, room)
        if plugin_decides or self._plugins.authorizes:
            await self._plugins.authorize(client, action, room, required=plugin_decides)

    async def join(self, client: Client, room: str) -> int:
        count = self._hub.join(_connection(client), room)
        await self._broker.wait_receiving(room)
        return count

    async def subscribe(self, client: Client, room: str, *, since: Position | None = None) -> None:
        await self._subscribe(_connection(client), room, since, server=False)

    async def _subscribe(self, conn: GatewayConnection, room: str, since: Position | None, *, server: bool) -> None:
        """Join and answer `subscribed`; `server`: the server's own subscription, whose `subscribed` says so
        (`"server": true`) and answers no request of the client's (never given a request id).

        While it runs, the room is in `conn.subscribing`: a `server_unsubscribe` meanwhile waits for it (it is
        carried out here, once the answer is queued), so the client hears `subscribed`, then `unsubscribed`."""
        with self._in_flight(conn, room):
            if self._router.keeps_history(room):
                await self._subscribe_with_history(conn, room, since, server)
                return
            already = room in conn.rooms
            try:
                count = await self.join(conn, room)  # `subscribed` means: messages from every node arrive
            except BaseException:  # cancelled (a deadline) or failed while waiting: not half subscribed, untold
                if not already and room in conn.rooms:
                    self._hub.leave(conn, room)
                raise
            data: dict[str, Any] = {"room": room, "client_count": count}
            if since is not None:
                data["recovered"] = False  # nothing is kept for this room: the client must reload its state
            _answer_joined(conn, room, data, server)

    @contextlib.contextmanager
    def _in_flight(self, conn: GatewayConnection, room: str) -> Iterator[None]:
        """`room` is in `conn.subscribing` while a subscribe to it runs: a `server_unsubscribe` meanwhile waits
        (`conn.leaving`) and is carried out when the last one ends, after its answer."""
        subscribing = conn.subscribing
        subscribing[room] = subscribing.get(room, 0) + 1
        try:
            yield
        finally:
            if subscribing[room] > 1:
                subscribing[room] -= 1
            else:
                del subscribing[room]
                leaving = conn.leaving
                if leaving is not None and room in leaving:  # a server_unsubscribe waited for this subscribe
                    leaving.discard(room)
                    self._server_leave(conn, room)

    async def _subscribe_with_history(
        self, conn: GatewayConnection, room: str, since: Position | None, server: bool
    ) -> None:
        """Join holding live messages back, read the history, then send: `subscribed`, what was missed,
        what was held."""
        hub = self._hub
        already = room in conn.rooms  # live already: it has missed nothing since it joined
        count = hub.join(conn, room, hold=not already, replay=since is not None)
        replay: Replay | None = None
        try:
            await self._broker.wait_receiving(room)
            if since is None or already:
                replay = Replay(await self._broker.history_position(room), recovered=True)
            else:
                replay = await self._broker.history_replay(
                    room, since, max_bytes=self._settings.history.max_answer_bytes
                )
        except BaseException as exc:  # nothing to recover from: leave, so the client is not half subscribed
            if not already and room in conn.rooms:
                hub.leave(conn, room)
            if isinstance(exc, BrokerError):
                raise _history_unavailable() from None
            raise
        finally:
            held = [] if already else hub.release(conn, room, replay.position if replay else None)
        assert replay is not None  # (else it raised)
        position = replay.position
        data: dict[str, Any] = {"room": room, "client_count": count, "offset": position.offset, "epoch": position.epoch}
        if since is not None:
            data["recovered"] = replay.recovered
        if not _answer_joined(conn, room, data, server):
            return  # it left the room, or went away, meanwhile: nothing to replay
        if not already:
            self._router.expect(room, position)  # live messages after the read go out in offset order
        conn.enqueue_many(replay.messages + held)  # missed, then what was held and the read did not include

    def unsubscribe(self, client: Client, room: str) -> None:
        self._hub.leave(_connection(client), room)

    async def server_subscribe(self, client: Client, room: str) -> None:
        conn = _connection(client)
        if conn.state is not State.OPEN:
            raise ClientGone(conn.id)
        self._decoder.check_room(room)
        if conn.leaving is not None:
            conn.leaving.discard(room)  # a later subscribe undoes a server unsubscribe still waiting for an answer
        if room in conn.rooms:
            return  # subscribed already (by itself or by the server): nothing to tell it
        with self._in_flight(conn, room):  # (from the authorization on: an unsubscribe meanwhile comes after)
            await self.authorize(conn, protocol.SUBSCRIBE, room)
            if room in conn.rooms:  # it subscribed meanwhile (its own subscribe): it was told already
                return
            await self._subscribe(conn, room, None, server=True)

    async def try_server_subscribe(self, client: Client, room: str, asked_by: str) -> ClientError | None:
        """`server_subscribe` within `plugins.hook_timeout`, every failure reported (`refused`) and returned:
        a refusal, a hook that raised (logged as the plugin's fault) or ran out of time (`internal error`).
        None: subscribed, in the room already, or the client left."""
        timeout = self._plugins.hook_timeout
        try:
            async with within(timeout):  # (in a message driven by hand: the message's own deadline)
                await self.server_subscribe(client, room)
            return None
        except ClientGone:
            return None
        except ClientError as refusal:
            err = refusal
        except TimeoutError:
            what = f"the server's subscription to {room!r} (asked by {asked_by})"
            self._plugins.fault(what, "%s did not finish within plugins.hook_timeout (%gs); cancelled", what, timeout)
            err = HookTimedOut(timeout)
        except Exception as exc:
            what = f"the server's subscription (asked by {asked_by})"
            self._plugins.fault(what, "%s failed (client %s, room %r)", what, client.id, room, exc_info=exc)
            err = ClientError(errors.INTERNAL_ERROR)
        self.refused(client, room, err, asked_by, label="hook_timeout" if isinstance(err, HookTimedOut) else None)
        return err

    def server_unsubscribe(self, client: Client, room: str) -> bool:
        conn = _connection(client)
        if conn.state is not State.OPEN:
            return False
        if room in conn.subscribing:  # carried out once that subscribe is answered (`_subscribe`)
            if conn.leaving is None:
                conn.leaving = set()
            conn.leaving.add(room)
            return True
        return self._server_leave(conn, room)

    def _server_leave(self, conn: GatewayConnection, room: str) -> bool:
        """Take `conn` out of `room`, telling it (`unsubscribed`, `"server": true`); False when it is not in."""
        if room not in conn.rooms or conn.state is not State.OPEN:
            return False
        self._hub.leave(conn, room)
        _answer(conn, protocol.UNSUBSCRIBED, room, {"room": room}, server=True)
        return True

    async def subscribe_identity(self, client: Client) -> None:
        """Subscribe `client` to the rooms its identity lists (`Identity.subs`), in order, as the server
        (`try_server_subscribe`); each failure is logged and counted, not sent. Returns early when the
        client leaves."""
        conn = _connection(client)
        subs = subs_of(conn.identity)
        limit = self._settings.websocket.limits.max_rooms_per_client
        for index, room in enumerate(subs):
            if conn.state is not State.OPEN:
                return
            if limit and len(conn.rooms) >= limit and room not in conn.rooms:  # the rest is refused at once:
                left = subs[index:]  # a token may list thousands of rooms, and a client refresh as often as it likes
                err = ClientError(errors.TOO_MANY_ROOMS, f"{len(left)} rooms over max_rooms_per_client ({limit})")
                self.refused(conn, left[0], err, "its identity")
                return
            await self.try_server_subscribe(conn, room, "its identity")

    def refused(self, client: Client, room: str, err: ClientError, asked_by: str, *, label: str | None = None) -> None:
        """Report a refused server-side subscription (`asked_by`: who asked for it, for the log line): one line
        at INFO, counted under the error's label or `label` (`websocket_errors_total`); the client is told
        nothing."""
        self._metrics.error(label or err.kind.label)
        self._refusals(  # (throttled: a client refreshes its token as often as it likes, each refusal again)
            "client %s: the server's subscription to %r (asked by %s) was refused: %s%s",
            client.id,
            room[:MAX_LOGGED_ROOM],
            asked_by,
            err.text,
            f" ({err.detail})" if err.detail else "",
        )

    async def reauthenticate(self, client: Client, identity: object) -> list[str]:
        conn = _connection(client)
        if conn.state is not State.OPEN:
            raise ClientGone(conn.id)
        conn.identity = identity
        self._hub.reindex_user(conn)
        conn.expire_at(expires_at_of(identity))
        left = []
        for room in sorted(conn.rooms):
            try:
                await self.authorize(conn, protocol.SUBSCRIBE, room)
            except Exception as exc:  # refused, or a hook that raised: fail closed (as for its own subscribe)
                if not isinstance(exc, ClientError):
                    what = "the re-authorization of a refreshed client's rooms"
                    self._plugins.fault(what, "%s failed (client %s, room %r)", what, conn.id, room, exc_info=exc)
                    self._metrics.error(errors.INTERNAL_ERROR.label)
                if room in conn.rooms:  # (it may have left meanwhile)
                    self._hub.leave(conn, room)
                    # not the answer to the refresh: never given its request id
                    conn.notify(protocol.encode(protocol.UNSUBSCRIBED, room=room, data={"room": room}))
                    left.append(room)
        await self.subscribe_identity(conn)  # rooms its new identity adds (none is left for leaving `subs`)
        return left

    async def history(
        self, room: str, limit: int | None = None, *, before: int | None = None
    ) -> tuple[Position, list[bytes]]:
        if not self._router.keeps_history(room):
            raise ClientError(errors.NO_HISTORY, "history.rooms does not include this room")
        settings = self._settings.history
        try:
            return await self._broker.history_last(
                room,
                settings.size if limit is None else min(limit, settings.size),
                before=before or 0,
                max_bytes=settings.max_answer_bytes,
            )
        except BrokerError:
            raise _history_unavailable() from None

    async def presence(self, room: str) -> Members:
        if not self._presence.rooms.match(room):
            raise ClientError(errors.NO_PRESENCE, "presence.rooms does not include this room")
        try:
            members = await self._presence.members(room)
        except PresenceError:
            raise ClientError(errors.PRESENCE_UNAVAILABLE, "the presence store cannot be reached; try again") from None
        room_left = self._settings.presence.max_answer_bytes
        listed = []
        for member in members:  # the first that fit: an answer is bounded like every other (docs/security.md)
            room_left -= len(member) + 1
            if room_left < 0:
                break
            listed.append(member)
        return Members(listed, len(members))

    # --- clients and operations ---------------------------------------------------------

    def client(self, client_id: str) -> Client | None:
        conn = self._hub.connections.get(client_id)
        return conn if isinstance(conn, GatewayConnection) else None

    def user_clients(self, user_id: str) -> list[Client]:
        return [conn for conn in self._hub.users.get(user_id, ()) if isinstance(conn, GatewayConnection)]

    def stats(self, *, top_rooms: int = 20, sample_clients: int = 50) -> dict[str, Any]:
        hub, totals = self._hub, self._metrics.totals()
        # once a second per node (the dashboard's figures): O(rooms) with a bounded heap, never a sort of every
        # room, and the latest clients without a copy of them all (100,000 idle clients: issue 25)
        rooms = heapq.nlargest(top_rooms, hub.rooms.items(), key=lambda item: len(item[1])) if top_rooms else []
        recent = list(itertools.islice(reversed(hub.connections.values()), sample_clients))[::-1]
        return {
            "node": self._node_id,
            "clients": len(hub.connections),
            "rooms": len(hub.rooms),
            "top_rooms": [[room, len(members)] for room, members in rooms],
            "received": totals["received"],
            "delivered": totals["delivered"],
            "errors": totals["errors"],
            "broker": self._broker.state,
            "clients_sample": [{"client_id": c.id, "remote": c.remote, "rooms": len(c.rooms)} for c in recent],
        }

    async def share_figures(self, figures: Mapping[str, Any], *, others: bool = True) -> list[dict[str, Any]]:
        encoded = protocol.dumps(dict(figures))
        try:
            return [protocol.loads(node) for node in await self._presence_store.share_figures(encoded, others=others)]
        except (PresenceError, ClientError):  # Redis away, or a node's figures garbled: show this node alone
            return [dict(figures)] if others else []


def _answer_joined(conn: GatewayConnection, room: str, data: dict[str, Any], server: bool) -> bool:
    """Answer a subscribe whose join is done: `subscribed`, and True. When the room was left meanwhile (by other
    means than `server_unsubscribe`, which waits; or the client went away), False: the server's own says nothing
    (the client never heard of it), a client's request is still answered, then `unsubscribed` (`"server": true`)
    follows, so its view ends where the server's is."""
    if room in conn.rooms:
        _answer(conn, protocol.SUBSCRIBED, room, data, server)
        return True
    if not server and conn.state is State.OPEN:
        _answer(conn, protocol.SUBSCRIBED, room, data, server)
        _answer(conn, protocol.UNSUBSCRIBED, room, {"room": room}, server=True)
    return False


def _answer(conn: GatewayConnection, kind: str, room: str, data: dict[str, Any], server: bool) -> None:
    """Queue `subscribed`/`unsubscribed` for `conn`: the answer to its request (with its request id), or the
    server's own (`server`: `"server": true` after `data`, and never a request id)."""
    if server:
        conn.notify(protocol.encode(kind, room=room, data=data, server=True))
    else:
        conn.enqueue(protocol.encode(kind, room=room, data=data))


def _scope(publisher: Client | str | None) -> Scope:
    """Whose idempotency keys a publish uses (`wsgate.idempotency.Scope`): a client's user's when it is
    authenticated, else its connection's; a server-side publisher's name; the gateway's own code's."""
    if publisher is None:
        return SERVER_SCOPE
    if isinstance(publisher, str):
        return Scope("server", publisher)
    user_id = user_id_of(publisher.identity)
    return Scope("client", publisher.id) if user_id is None else Scope("user", user_id)


async def _outcome(started: int | asyncio.Future[int]) -> int:
    """A publish's answer, as `publish` gives it (`wsgate.types.Gateway.publish`), once `Router.begin` started it."""
    if isinstance(started, int):
        return started
    try:
        return await started
    except Exception:
        return _publish_answer(started)


def _publish_answer(started: asyncio.Future[int]) -> int:
    """The answer of a publish whose future is done: the count of local clients it was queued for, a Duplicate
    for a retry, or the ClientError the client is told (PUBLISH_OUTCOME_UNKNOWN, HISTORY_UNAVAILABLE)."""
    try:
        return started.result()
    except AlreadyPublished as exc:  # a retry: delivered nowhere, not refused; the first's delivery is the answer
        return Duplicate(exc.first)
    except OutcomeUnknown as exc:  # Redis took it and did not answer: kept and delivered once, or not at all
        raise ClientError(
            errors.PUBLISH_OUTCOME_UNKNOWN,
            f"the message may have been kept and delivered: "
            f"{exc}; if Redis kept it, every member gets it once (publishing it again may "
            "deliver it twice, unless it carries the same idempotency_key)",
        ) from None
    except BrokerError as exc:  # certainly not kept: nobody got it
        raise ClientError(errors.HISTORY_UNAVAILABLE, f"the message was not sent: {exc}") from None


def _connection(client: Client) -> GatewayConnection:
    """The connection behind a `Client` this gateway handed out (TypeError for anything else)."""
    if not isinstance(client, GatewayConnection):
        raise TypeError(f"expected a client of this gateway, got {type(client).__name__}")
    return client
