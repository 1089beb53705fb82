"""The chaos run's plugin: `{"type": "chaos_publish", "room": R, "data": D}` publishes D through `gateway.publish`,
the path a backend plugin takes, and answers `chaos_published` (or the error) to the sender."""

from __future__ import annotations

from collections.abc import Mapping

from wsgate import Client, Handler, Message, hookimpl, protocol


async def chaos_publish(client: Client, message: Message) -> None:
    room = message.require_room()
    await client.gateway.publish(room, message.data)  # as a server message: no client_id
    client.enqueue(protocol.encode("chaos_published", room=room, data=message.data))


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"chaos_publish": chaos_publish}
