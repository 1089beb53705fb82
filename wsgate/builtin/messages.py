"""The spec's message types: subscribe, unsubscribe, publish, broadcast, ping."""

from __future__ import annotations

from collections.abc import Mapping

from .. import hookimpl, protocol
from ..connection import Connection
from ..hookspecs import Handler
from ..protocol import ClientError, Message


def _room(message: Message) -> str:
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
    room = _room(message)
    await _authorize(client, protocol.SUBSCRIBE, room)
    count = client.gateway.hub.join(client, room)
    await client.gateway.broker.wait_receiving(room)  # `subscribed` means: messages from every node arrive
    client.enqueue(
        protocol.encode(protocol.SUBSCRIBED, room=room, data={"room": room, "client_count": count})
    )


async def unsubscribe(client: Connection, message: Message) -> None:
    room = _room(message)
    client.gateway.hub.leave(client, room)
    client.enqueue(protocol.encode(protocol.UNSUBSCRIBED, room=room, data={"room": room}))


async def publish(client: Connection, message: Message) -> None:
    room = _room(message)
    if room not in client.rooms:
        raise ClientError(protocol.NOT_SUBSCRIBED)
    await _authorize(client, protocol.PUBLISH, room)
    await client.gateway.publish(room, message.data, client_id=client.id)


async def broadcast(client: Connection, message: Message) -> None:
    await _authorize(client, protocol.BROADCAST, None)
    await client.gateway.broadcast(message.data, client_id=client.id)


async def ping(client: Connection, message: Message) -> None:
    client.enqueue(protocol.encode(protocol.PONG))


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {
        protocol.SUBSCRIBE: subscribe,
        protocol.UNSUBSCRIBE: unsubscribe,
        protocol.PUBLISH: publish,
        protocol.BROADCAST: broadcast,
        protocol.PING: ping,
    }
