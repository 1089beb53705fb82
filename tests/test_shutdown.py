"""Draining: refuse new clients, report it on /health, close every client with 1001."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from wsgate import Client, Message, hookimpl
from wsgate.testing import Server, StartServer, wait_until

from .conftest import StalledClient

pytestmark = pytest.mark.every_loop  # asyncio's loop and uvloop's (tests/conftest.py)


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


@pytest.mark.slow
async def test_drain_gives_a_stalled_client_the_budget_then_counts_it(wsgate_server: StartServer) -> None:
    server = await wsgate_server(
        websocket={"write_wait": "30s", "send_queue_size": 100_000, "send_queue_bytes": 1 << 30}
    )
    stalled = StalledClient()
    try:
        publisher, conn = await stalled.stuck_in_flood(server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.drain(timeout=0.5)  # it never reads: its queue cannot go out, the socket is aborted
        assert loop.time() - started < 2
        assert conn.closed.is_set()
        assert (await publisher.closed()).data == 1001  # the publisher reads: it gets a clean close
        assert server.metrics.error_count("drain_incomplete") == 1
    finally:
        stalled.close()


async def test_drain_writes_what_is_queued_before_the_close_frame(wsgate_server: StartServer) -> None:
    """The field report: a subscriber stopped reading while 1,000 messages of 10 KB were queued for it, then
    SIGTERM; it got 326 of them and a TCP reset. Now it gets all of them, then 1001."""
    server = await wsgate_server(websocket={"write_wait": "30s", "send_queue_size": 2_000, "send_queue_bytes": 1 << 30})
    subscriber = await server.connect(max_msg_size=0)
    await subscriber.subscribe("r")
    payload = "x" * 10_000
    for n in range(1_000):  # the subscriber reads nothing meanwhile: its socket fills, the rest waits queued
        await server.gateway.publish("r", [n, payload])
    conn = server.hub.connections[subscriber.id]
    assert conn._outbox, "the subscriber's socket should be full"
    drain = asyncio.create_task(server.drain(timeout=20))
    got = [(await subscriber.recv())["data"][0] for _ in range(1_000)]
    assert got == list(range(1_000))
    assert (await subscriber.closed()).data == 1001
    await drain
    assert server.metrics.error_count("drain_incomplete") == 0


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
    # drain waited its timeout, then returned rather than hang on the busy client. uvloop's clock counts whole
    # milliseconds, so 0.3 s can read as 0.29999... after subtraction: the lower bound allows one tick
    assert 0.3 - 0.002 <= loop.time() - started < 3
    assert (await idle.closed()).data == 1001
    # the busy client never answered the close: its socket was aborted at the deadline; shutdown finishes it
    await server.test_server.close()
    await wait_until(conn.closed)
    assert server.metrics.error_count("drain_incomplete") == 0  # it had nothing queued


async def test_app_shutdown_closes_clients_with_1001(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect()
    closing = asyncio.ensure_future(client.closed())
    await server.test_server.close()  # aiohttp's runner cleanup, as under gunicorn
    msg = await closing
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
