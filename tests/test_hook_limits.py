"""Work started for a client ends with the client (issue 21, part 2, item 5).

Every hook and message handler run for a client has a time limit, `plugins.hook_timeout`: past it,
it is cancelled, logged once per interval (plugin and hook named) and the client gets a temporary
`internal error`. A client that goes (closed by the server: dropped, drained) has its handling in flight
cancelled at once; one that closes its own socket while a hook awaits is read again, at the latest,
once the limit has passed, and `wsgate_client_disconnected` runs then.
The hooks here wait on events the test controls, and record their cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from wsgate import Client, Message, hookimpl
from wsgate.testing import Server, StartServer, eventually

LIMIT = 0.5  # plugins.hook_timeout in these tests
BOUND = 10.0  # what the tests wait for at most: an event, never a sleep


class Hangs:
    """Hooks and a handler that never return for the room or type `stuck`; each records its cancellation."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled: list[str] = []
        self.disconnected = asyncio.Event()

    async def _hang(self, where: str) -> None:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(where)
            raise

    @hookimpl
    async def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool | None:
        if room == "stuck":
            await self._hang("wsgate_authorize")
        return None

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        async def stuck(client: Client, message: Message) -> None:
            await self._hang("handler")

        return {"stuck": stuck}

    @hookimpl
    async def wsgate_client_disconnected(self, client: Client) -> None:
        self.disconnected.set()


async def start(wsgate_server: StartServer, plugin: object, limit: float = LIMIT) -> Server:
    return await wsgate_server(plugin, plugins={"hook_timeout": f"{limit * 1000:g}ms"})


async def test_a_client_that_closes_during_a_hanging_authorize_is_disconnected_within_the_limit(
    wsgate_server: StartServer,
) -> None:
    """The handed input: `wsgate_authorize` awaits forever; the client subscribes, then closes its socket."""
    hangs = Hangs()
    server = await start(wsgate_server, hangs)
    leaving = await server.connect()
    await leaving.send({"type": "subscribe", "room": "stuck"})
    await asyncio.wait_for(hangs.waiting.wait(), BOUND)
    closing = asyncio.create_task(leaving.ws.close())  # sends its close frame; the server answers it later
    await asyncio.wait_for(hangs.disconnected.wait(), BOUND)  # within hook_timeout, not at server stop
    assert hangs.cancelled == ["wsgate_authorize"]
    await asyncio.wait_for(closing, BOUND)
    assert (await server.counts())[1] == {"status": "healthy", "clients": 0, "rooms": 0}


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.parametrize("message", [{"type": "subscribe", "room": "stuck"}, {"type": "stuck"}])
async def test_a_client_whose_socket_goes_during_a_hanging_hook_leaves_at_once(
    wsgate_server: StartServer,
    how: str,
    message: dict[str, Any],
) -> None:
    """The socket itself goes (a reset, or a close without a close frame) while a hook hangs, far under
    plugins.hook_timeout (60 s here): the server sees it at once, though its reader reads nothing."""
    hangs = Hangs()
    server = await start(wsgate_server, hangs, limit=60)
    leaving = await server.connect()
    await leaving.send(message)
    await asyncio.wait_for(hangs.waiting.wait(), BOUND)
    transport = leaving.ws._conn.transport  # type: ignore[union-attr]
    assert transport is not None
    if how == "reset":
        transport.abort()
    else:
        transport.close()
    await asyncio.wait_for(hangs.disconnected.wait(), BOUND)  # not after 60 s
    assert hangs.cancelled == ["wsgate_authorize" if message["type"] == "subscribe" else "handler"]
    await eventually(lambda: not server.hub.claimed and not server.hub.connections)


@pytest.mark.slow
@pytest.mark.parametrize("message", [{"type": "subscribe", "room": "stuck"}, {"type": "stuck"}])
async def test_past_the_limit_the_client_gets_a_temporary_error_and_one_log_line(
    wsgate_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    message: dict[str, Any],
) -> None:
    """A hook (`wsgate_authorize`) and a plugin's message handler: the same kind."""
    hangs = Hangs()
    server = await start(wsgate_server, hangs)
    client = await server.connect()
    with caplog.at_level(logging.WARNING, logger="wsgate"):
        for _ in range(3):  # a storm: one line, not one per message
            answer = await asyncio.wait_for(client.request(message), BOUND)
            assert answer["type"] == "error" and answer["error"] == "internal error"
            assert answer["detail"] == f"a plugin did not answer within {LIMIT:g}s; try again"
    where = "wsgate_authorize" if message["type"] == "subscribe" else "handler"
    assert hangs.cancelled == [where] * 3
    lines = [r.getMessage() for r in caplog.records if "plugins.hook_timeout" in r.getMessage()]
    assert len(lines) == 1, lines
    expected = (
        "plugin 'Hangs': wsgate_authorize" if where == "wsgate_authorize" else "plugin 'Hangs': handler for 'stuck'"
    )
    assert lines[0].startswith(f"{expected} did not finish within plugins.hook_timeout (0.5s); cancelled")
    assert server.metrics.error_count("hook_timeout") == 3
    assert (await client.request({"type": "subscribe", "room": "free"}))["type"] == "subscribed"  # still served


@pytest.mark.parametrize("cause", ["drop", "drain"])
async def test_a_client_closed_by_the_server_ends_its_handler_at_once(wsgate_server: StartServer, cause: str) -> None:
    """Dropped (a slow consumer, an expired token) or drained: the handler in flight is cancelled on the next
    turn, long before a limit of a minute."""
    hangs = Hangs()
    server = await start(wsgate_server, hangs, limit=60)
    client = await server.connect()
    await client.send({"type": "stuck"})
    await asyncio.wait_for(hangs.waiting.wait(), BOUND)
    if cause == "drop":
        server.hub.connections[client.id].drop(1008, "slow consumer")
    else:
        draining = asyncio.create_task(server.drain(BOUND))
    await eventually(lambda: hangs.cancelled == ["handler"])  # (a limit of a minute has not passed)
    await asyncio.wait_for(client.closed(), BOUND)
    await asyncio.wait_for(hangs.disconnected.wait(), BOUND)
    if cause == "drain":
        await asyncio.wait_for(draining, BOUND)


class HangsOnConnect:
    """`wsgate_client_connected` that never returns; `wsgate_authenticate` that never returns for `?stuck`."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    @hookimpl
    async def wsgate_client_connected(self, client: Client) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append("wsgate_client_connected")
            raise

    @hookimpl
    async def wsgate_authenticate(self, request: web.Request) -> object | None:
        if "stuck" in request.query:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append("wsgate_authenticate")
                raise
        return None


async def test_a_hanging_connect_hook_is_cancelled_and_the_client_served(wsgate_server: StartServer) -> None:
    hooks = HangsOnConnect()
    server = await start(wsgate_server, hooks)
    client = await server.connect()  # its `connected` is queued before the hook
    answer = await asyncio.wait_for(client.request({"type": "subscribe", "room": "free"}), BOUND)
    assert answer["type"] == "subscribed"
    assert hooks.cancelled == ["wsgate_client_connected"]


async def test_a_hanging_authenticate_answers_503_before_the_upgrade(wsgate_server: StartServer) -> None:
    hooks = HangsOnConnect()
    server = await start(wsgate_server, hooks)
    async with server.session.get(server.url("/ws?stuck")) as response:  # no upgrade asked
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
    assert body == {"error": "internal error", "detail": f"a plugin did not answer within {LIMIT:g}s; try again"}
    assert hooks.cancelled == ["wsgate_authenticate"]


async def test_a_hook_cancelled_by_the_plugin_itself_leaves_nothing_behind(wsgate_server: StartServer) -> None:
    """A handler that gives up on a hook itself (`asyncio.wait_for`): what the hook awaited is forgotten with the
    message, so the client is not held after it leaves (the review: one Connection kept per such client)."""
    from wsgate.keys import PLUGINS

    hangs = Hangs()

    class GivesUp:
        @hookimpl
        def wsgate_message_handlers(self) -> dict[str, Any]:
            async def impatient(client: Client, message: Message) -> None:
                try:
                    await asyncio.wait_for(client.gateway.authorize(client, "subscribe", "stuck"), 0.05)
                except TimeoutError:
                    client.enqueue(b'{"type":"gave_up"}')

            return {"impatient": impatient}

    server = await wsgate_server(hangs, GivesUp(), plugins={"hook_timeout": "60s"})
    client = await server.connect()
    assert (await client.request({"type": "impatient"}))["type"] == "gave_up"
    conn = server.hub.connections[client.id]
    assert server.app[PLUGINS].waiting_on(conn) is None  # forgotten once the message ended
