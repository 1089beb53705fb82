"""The fault model's plugin: message types and hooks that misbehave on request, loaded by every node it starts.

- `{"type": "stall", "data": S}` blocks the event loop for S seconds (a handler doing blocking work);
- `{"type": "slow", "data": S}` awaits S seconds before answering `slowed`;
- `{"type": "fail"}` raises (the handler has a bug);
- `wsgate_authorize` hangs for rooms `hang:*`, raises for `boom:*` and takes 0.3 s for `slow:*`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from wsgate import Client, Handler, Message, hookimpl, protocol


async def stall(client: Client, message: Message) -> None:
    time.sleep(float(message.data))  # the fault itself: the whole event loop stops
    client.enqueue(protocol.encode("stalled"))


async def slow(client: Client, message: Message) -> None:
    await asyncio.sleep(float(message.data))
    client.enqueue(protocol.encode("slowed"))


async def fail(client: Client, message: Message) -> None:
    raise RuntimeError("the fault model's handler failed on purpose")


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"stall": stall, "slow": slow, "fail": fail}


@hookimpl
async def wsgate_authorize(client: Client, action: str, room: str | None) -> bool | None:
    if room is None:
        return None
    if room.startswith("hang:"):
        await asyncio.Event().wait()  # never set: a hook that hangs
    if room.startswith("boom:"):
        raise RuntimeError("the fault model's authorize hook failed on purpose")
    if room.startswith("slow:"):
        await asyncio.sleep(0.3)
    return None
