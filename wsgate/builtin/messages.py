"""The spec's message types (subscribe, unsubscribe, publish, broadcast, ping) and wsgate's `history`.

`subscribe` to a room that keeps history reports the room's `offset` and `epoch`;
with `"since": {"offset": K, "epoch": E}` it first sends every message after K
that the client missed, then live ones, with no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping

from typing import Any

from .. import hookimpl, protocol
from ..broker import BrokerError
from ..connection import Connection
from ..history import Position, Replay, offset_of
from ..hookspecs import Handler
from ..protocol import ClientError, Message


def room_of(message: Message) -> str:
    """The message's room; `room name is required` when it has none."""
    if not message.room:
        raise ClientError(protocol.ROOM_REQUIRED)
    return message.room


async def _authorize(client: Connection, action: str, room: str | None) -> None:
    """The `[auth]` rules first, then `wsgate_authorize` plugins only when there are any or a rule needs them."""
    gateway = client.gateway
    plugin_decides = gateway.access.check(client, action, room)
    if plugin_decides or gateway.plugins.authorizes:
        await gateway.plugins.authorize(client, action, room, required=plugin_decides)


async def subscribe(client: Connection, message: Message) -> None:
    room = room_of(message)
    since = _since(message)
    await _authorize(client, protocol.SUBSCRIBE, room)
    gateway = client.gateway
    if gateway.history_rooms.match(room):
        await _subscribe_with_history(client, room, since)
        return
    count = gateway.hub.join(client, room)
    await gateway.broker.wait_receiving(room)  # `subscribed` means: messages from every node arrive
    data: dict[str, Any] = {"room": room, "client_count": count}
    if since is not None:
        data["recovered"] = False  # nothing is kept for this room: the client must reload its state
    client.enqueue(protocol.encode(protocol.SUBSCRIBED, room=room, data=data))


async def _subscribe_with_history(client: Connection, room: str, since: Position | None) -> None:
    """Join holding live messages back, read the history, then send: `subscribed`, what was missed, what was held."""
    gateway = client.gateway
    hub, broker = gateway.hub, gateway.broker
    already = room in client.rooms  # live already: it has missed nothing since it joined
    count = hub.join(client, room, hold=not already)
    replay: Replay | None = None
    try:
        await broker.wait_receiving(room)
        if since is None or already:
            replay = Replay(await broker.history_position(room), recovered=True)
        else:
            replay = await broker.history_replay(room, since)
    except BaseException as exc:  # nothing to recover from: leave, so the client is not half subscribed
        if not already and room in client.rooms:
            hub.leave(client, room)
        if isinstance(exc, BrokerError):
            raise ClientError(protocol.HISTORY_UNAVAILABLE, "the history store cannot be reached; try again") from None
        raise
    finally:
        held = [] if already else hub.release(client, room, replay.position.offset if replay else None)
    if room not in client.rooms or replay is None:
        return  # the client went away meanwhile
    position = replay.position
    data: dict[str, Any] = {"room": room, "client_count": count, "offset": position.offset, "epoch": position.epoch}
    if since is not None:
        data["recovered"] = replay.recovered
    client.enqueue(protocol.encode(protocol.SUBSCRIBED, room=room, data=data))
    client.enqueue_many(replay.messages + [p for p in held if _newer(p, position.offset)])  # missed, then held


def _newer(payload: bytes, read_up_to: int) -> bool:
    """Held while the history was read, and not in it (a message without an offset always is)."""
    offset = offset_of(payload)
    return offset is None or offset > read_up_to


MAX_OFFSET = 2**53  # exact in every client's numbers (and in Redis's Lua)


def _since(message: Message) -> Position | None:
    since = message.fields.get("since")
    if since is None:
        return None
    offset = since.get("offset") if isinstance(since, dict) else None
    epoch = since.get("epoch") if isinstance(since, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET or not isinstance(
        epoch, str
    ):
        raise ClientError(protocol.INVALID_JSON, "field 'since' must be {\"offset\": <integer >= 0>, \"epoch\": <string>}")
    return Position(offset, epoch)


async def history(client: Connection, message: Message) -> None:
    """`{"type":"history","room":R,"limit":N}` -> the last N kept messages, oldest first, and the position."""
    room = room_of(message)
    gateway = client.gateway
    size = gateway.settings.history.size
    limit = message.fields.get("limit", size)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ClientError(protocol.INVALID_JSON, "field 'limit' must be a positive integer")
    await _authorize(client, protocol.HISTORY, room)
    if not gateway.history_rooms.match(room):
        raise ClientError(protocol.NO_HISTORY, "history.rooms does not include this room")
    try:
        position, payloads = await gateway.broker.history_last(room, min(limit, size))
    except BrokerError:
        raise ClientError(protocol.HISTORY_UNAVAILABLE, "the history store cannot be reached; try again") from None
    client.enqueue(
        b'{"type":"history","room":%s,"data":{"offset":%d,"epoch":%s,"messages":[%s]},"timestamp":%d}'
        % (protocol.dumps(room), position.offset, protocol.dumps(position.epoch), b",".join(payloads),
           protocol.now_ms())
    )


async def unsubscribe(client: Connection, message: Message) -> None:
    room = room_of(message)
    client.gateway.hub.leave(client, room)
    client.enqueue(protocol.encode(protocol.UNSUBSCRIBED, room=room, data={"room": room}))


async def publish(client: Connection, message: Message) -> None:
    room = room_of(message)
    if room not in client.rooms:
        raise ClientError(protocol.NOT_SUBSCRIBED)
    await _authorize(client, protocol.PUBLISH, room)
    await client.gateway.publish(room, message.data, client_id=client.id)


async def broadcast(client: Connection, message: Message) -> None:
    await _authorize(client, protocol.BROADCAST, None)
    await client.gateway.broadcast(message.data, client_id=client.id)


async def ping(client: Connection, message: Message) -> None:
    client.enqueue(protocol.encode(protocol.PONG))


async def presence(client: Connection, message: Message) -> None:
    """`{"type":"presence","room":R}` -> the room's members on every node, and how many."""
    room = room_of(message)
    gateway = client.gateway
    await _authorize(client, protocol.PRESENCE, room)
    if not gateway.presence.rooms.match(room):
        raise ClientError(protocol.NO_PRESENCE, "presence.rooms does not include this room")
    try:
        members = await gateway.presence.members(room)
    except BrokerError:
        raise ClientError(protocol.PRESENCE_UNAVAILABLE, "the presence store cannot be reached; try again") from None
    client.enqueue(
        b'{"type":"presence","room":%s,"data":{"count":%d,"members":[%s]},"timestamp":%d}'
        % (protocol.dumps(room), len(members), b",".join(members), protocol.now_ms())
    )


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {
        protocol.SUBSCRIBE: subscribe,
        protocol.UNSUBSCRIBE: unsubscribe,
        protocol.PUBLISH: publish,
        protocol.BROADCAST: broadcast,
        protocol.PING: ping,
        protocol.HISTORY: history,
        protocol.PRESENCE: presence,
    }
