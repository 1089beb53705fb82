"""A client that leaves while a handler or hook awaits is never joined, counted or written to presence.

The field report: an async `wsgate_authorize` took 2.5 s; meanwhile the client was dropped as a slow
consumer. `/health` then showed `clients: 0, rooms: 1` for good, and the next member got `client_count: 2`.
Here the hook waits on an event the test controls instead of a clock.
"""

from __future__ import annotations

import asyncio

import pytest

from wsgate import Client, hookimpl
from wsgate.testing import Server, StartServer, eventually


class SlowAuthorizer:
    """`wsgate_authorize` that holds every subscribe until `release` is set."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    @hookimpl
    async def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool | None:
        if action == "subscribe" and room != "free":
            self.waiting.set()
            await self.release.wait()
        return None


async def drop_while_authorizing(server: Server, authorizer: SlowAuthorizer, room: str) -> None:
    leaving = await server.connect()
    await leaving.send({"type": "subscribe", "room": room})
    await asyncio.wait_for(authorizer.waiting.wait(), 5)
    server.hub.connections[leaving.id].drop(1008, "slow consumer")  # as the outbox limit does
    await leaving.closed()
    await eventually(lambda: leaving.id not in server.hub.connections)
    authorizer.release.set()


@pytest.mark.parametrize("room", ["plain", "chat:kept", "lobby:present"])  # each path through subscribe
async def test_a_client_dropped_during_an_async_hook_is_never_joined(wsgate_server: StartServer, room: str) -> None:
    authorizer = SlowAuthorizer()
    server = await wsgate_server(authorizer, history={"rooms": ["chat:*"]}, presence={"rooms": ["lobby:*"]})
    await drop_while_authorizing(server, authorizer, room)
    watcher = await server.connect()
    await watcher.subscribe("free")  # handled after the dropped client's subscribe finished
    assert (await server.counts())[1] == {"status": "healthy", "clients": 1, "rooms": 1}
    authorizer.release.set()
    joined = await watcher.subscribe(room)
    assert joined["data"]["client_count"] == 1
    if room.startswith("lobby:"):
        answer = await watcher.request({"type": "presence", "room": room})
        assert answer["data"]["count"] == 1


class JoinOnConnect:
    """`wsgate_client_connected` that waits, then joins the client to a room through the gateway."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.outcome: list[str] = []

    @hookimpl
    async def wsgate_client_connected(self, client: Client) -> None:
        self.waiting.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            raise
        try:
            await client.gateway.join(client, "welcome")
            self.outcome.append("joined")
        except Exception as exc:  # noqa: BLE001 - the test records what the hook saw
            self.outcome.append(type(exc).__name__)


async def test_a_hook_joining_a_client_that_left_is_refused(wsgate_server: StartServer) -> None:
    hook = JoinOnConnect()
    server = await wsgate_server(hook)
    await server.raw()  # the client that leaves
    await asyncio.wait_for(hook.waiting.wait(), 5)
    next(iter(server.hub.connections.values())).drop(1008, "slow consumer")  # its read loop has not begun
    await eventually(lambda: not server.hub.connections)
    await eventually(lambda: bool(hook.outcome))
    assert hook.outcome == ["cancelled"]  # work started for a client ends with it (issue 21 item 5)
    assert (await server.counts())[1] == {"status": "healthy", "clients": 0, "rooms": 0}
