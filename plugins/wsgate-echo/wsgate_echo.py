"""wsgate plugin: answers `{"type":"echo","data":X}` with `{"type":"echo","data":X}`."""

from __future__ import annotations

from collections.abc import Mapping

from wsgate import Client, ClientError, Handler, Message, hookimpl


async def echo(client: Client, message: Message) -> None:
    if message.data is None:
        raise ClientError("nothing to echo")  # answered as {"type":"error","error":"nothing to echo"}
    await client.send({"type": "echo", "data": message.data})


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"echo": echo}
