"""Draining: refuse new clients, report it on /health, close every client with 1001."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from wsgate import Client, Message, hookimpl
from wsgate.testing import Server, StartServer, wait_until

from .conftest import StalledClient


async def test_drain_closes_clients_with_1001_and_refuses_new_ones(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    await clients[0].subscribe("room")
    await server.drain(timeout=5)
    for client in clients:
        closing = await client.closed()
        assert closing.data == 1001
    assert await server.counts() == (503, {"status": "draining", "clients": 0, "rooms": 0})
    async with server.session.get(server.url("/ws")) as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": "server is shutting down"}


async def test_drain_closes_a_stalled_client_at_once(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"write_wait": "30s", "send_queue_size": 100_000})
    stalled = StalledClient()
    try:
        publisher, conn = await stalled.stuck_in_flood(server)
        await server.drain(timeout=5)  # no close handshake to wait for: the socket is aborted
        assert conn.closed.is_set()
        assert (await publisher.closed()).data == 1001
    finally:
        stalled.close()


class Stuck:
    """A message handler that never returns."""

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Any]:
        async def hang(client: Client, message: Message) -> None:
            await asyncio.Event().wait()

        return {"hang": hang}


async def test_drain_gives_up_on_clients_that_do_not_finish_within_the_timeout(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Stuck(), websocket={"write_wait": "500ms"})
    busy, idle = await server.connect(), await server.connect()
    conn = server.hub.connections[busy.id]
    await busy.send({"type": "hang"})
    await idle.request({"type": "ping"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.drain(timeout=0.3)
    assert 0.3 <= loop.time() - started < 3
    assert not conn.closed.is_set()  # its handler still runs: drain returned rather than hang
    assert (await idle.closed()).data == 1001
    # aiohttp's own shutdown then cancels what is left
    await server.test_server.close()
    await wait_until(conn.closed)


async def test_app_shutdown_closes_clients_with_1001(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect()
    closing = asyncio.ensure_future(client.closed())
    await server.test_server.close()  # aiohttp's runner cleanup, as under gunicorn
    msg = await closing
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
