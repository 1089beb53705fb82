"""The spec's message types (subscribe, unsubscribe, publish, broadcast, ping) and wsgate's `history` and `presence`.

An ordinary plugin: it uses only the public plugin API (`wsgate`, `wsgate.protocol`),
as a third-party plugin would.

`subscribe` to a room that keeps history reports the room's `offset` and `epoch`;
with `"since": {"offset": K, "epoch": E}` it first sends every message after K
that the client missed, then live ones, with no gap and no duplicate.

`unsubscribe`, `publish`, `broadcast` and `ping` are `eager`: nothing they do before they first wait needs a
current task. `subscribe`, `history` and `presence` may read Redis first (redis-py reads under `asyncio.timeout`),
so they start in a task.
"""

from __future__ import annotations

from collections.abc import Mapping

from wsgate import Client, ClientError, Handler, Message, Position, eager, errors, hookimpl, protocol

MAX_OFFSET = 2**53  # exact in every client's numbers (and in Redis's Lua)


def _since(message: Message) -> Position | None:
    since = message.fields.get("since")
    if since is None:
        return None
    offset = since.get("offset") if isinstance(since, dict) else None
    epoch = since.get("epoch") if isinstance(since, dict) else None
    if (
        not isinstance(offset, int)
        or isinstance(offset, bool)
        or not 0 <= offset <= MAX_OFFSET
        or not isinstance(epoch, str)
    ):
        raise ClientError(errors.INVALID_JSON, 'field \'since\' must be {"offset": <integer >= 0>, "epoch": <string>}')
    return Position(offset, epoch)


async def subscribe(client: Client, message: Message) -> None:
    room = message.require_room()
    since = _since(message)
    await client.gateway.authorize(client, protocol.SUBSCRIBE, room)
    await client.gateway.subscribe(client, room, since=since)


@eager
async def unsubscribe(client: Client, message: Message) -> None:
    room = message.require_room()
    client.gateway.unsubscribe(client, room)
    client.enqueue(protocol.encode(protocol.UNSUBSCRIBED, room=room, data={"room": room}))


def _skip_self(client: Client, message: Message) -> Client | None:
    """`"skip_self": true` -> the sender, left out of the delivery (docs/protocol.md "skip_self")."""
    skip_self = message.fields.get("skip_self")
    if skip_self is None:  # absent or null: as for "id", null is the field's absence
        return None
    if not isinstance(skip_self, bool):
        raise ClientError(errors.INVALID_JSON, "field 'skip_self' must be true or false")
    return client if skip_self else None


@eager
async def publish(client: Client, message: Message) -> None:
    room = message.require_room()
    skip = _skip_self(client, message)
    if room not in client.rooms:
        raise ClientError(errors.NOT_SUBSCRIBED)
    await client.gateway.authorize(client, protocol.PUBLISH, room)
    key = message.fields.get("idempotency_key")  # absent or null: the guide's publish (else checked by the gateway)
    await client.gateway.client_publish(client, room, message.data, skip=skip, idempotency_key=key)


@eager
async def broadcast(client: Client, message: Message) -> None:
    skip = _skip_self(client, message)
    protocol.refuse_idempotency_key(message.fields)  # a publish's field only: never ignored
    await client.gateway.authorize(client, protocol.BROADCAST, None)
    await client.gateway.broadcast(message.data, client_id=client.id, skip=skip)


@eager
async def ping(client: Client, message: Message) -> None:
    client.enqueue(protocol.encode(protocol.PONG))


async def history(client: Client, message: Message) -> None:
    """`{"type":"history","room":R,"limit":N,"before":K}` -> the last N kept messages (below offset K, when given),
    oldest first, and the position; the answer holds at most `history.max_answer_bytes` of messages."""
    room = message.require_room()
    limit, before = message.fields.get("limit"), message.fields.get("before")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ClientError(errors.INVALID_JSON, "field 'limit' must be a positive integer")
    if before is not None and (
        not isinstance(before, int) or isinstance(before, bool) or not 1 <= before <= MAX_OFFSET
    ):
        raise ClientError(errors.INVALID_JSON, "field 'before' must be a positive integer (an offset)")
    await client.gateway.authorize(client, protocol.HISTORY, room)
    position, messages = await client.gateway.history(room, limit, before=before)
    client.enqueue(
        b'{"type":"history","room":%s,"data":{"offset":%d,"epoch":%s,"messages":[%s]},"timestamp":%d}'
        % (
            protocol.dumps(room),
            position.offset,
            protocol.dumps(position.epoch),
            b",".join(messages),
            protocol.now_ms(),
        )
    )


async def presence(client: Client, message: Message) -> None:
    """`{"type":"presence","room":R}` -> the room's members on every node, and how many; a list cut at
    `presence.max_answer_bytes` says so with `"truncated": true` (`count` is always the whole count)."""
    room = message.require_room()
    await client.gateway.authorize(client, protocol.PRESENCE, room)
    members = await client.gateway.presence(room)
    client.enqueue(
        b'{"type":"presence","room":%s,"data":{"count":%d,"members":[%s]%s},"timestamp":%d}'
        % (
            protocol.dumps(room),
            members.total,
            b",".join(members),
            b',"truncated":true' if members.total > len(members) else b"",
            protocol.now_ms(),
        )
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
