"""Draining: refuse new clients, report it on /health, close every client with 1001."""

from __future__ import annotations

import asyncio

import aiohttp

from wsgate.testing import Server, StartServer

from .conftest import StalledClient


async def test_drain_closes_clients_with_1001_and_refuses_new_ones(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    await clients[0].subscribe("room")
    await server.gateway.drain(timeout=5)
    for client in clients:
        closing = await client.closed()
        assert closing.data == 1001
    status, body = await server.health()
    assert (status, body) == (503, {"status": "draining", "clients": 0, "rooms": 0})
    async with server.session.get(server.url("/ws")) as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": "server is shutting down"}


async def test_drain_gives_up_on_a_client_that_cannot_be_closed_in_time(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"write_wait": "30s", "send_queue_size": 100_000})
    publisher = await server.connect()
    await publisher.subscribe("flood")
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "flood")  # type: ignore[arg-type]
        conn = next(c for c in server.gateway.hub.rooms["flood"] if c.id != publisher.id)
        for n in range(2_000):  # far more than the socket buffers hold: its writer is stuck
            await publisher.send({"type": "publish", "room": "flood", "data": [n, "x" * 8192]})
            await publisher.recv()
        assert conn._outbox, "the stalled client's writer should be stuck"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.gateway.drain(timeout=0.3)
        assert 0.3 <= loop.time() - started < 5
        assert not conn.closed.is_set()  # still stuck: drain gave up on it rather than hang
        assert (await publisher.closed()).data == 1001  # everyone else was closed
    finally:
        stalled.close()


async def test_app_shutdown_closes_clients_with_1001(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect()
    closing = asyncio.ensure_future(client.closed())
    await server.test_server.close()  # aiohttp's runner cleanup, as under gunicorn
    msg = await closing
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
