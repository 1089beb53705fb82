"""max_connections, max_connections_per_room, slow clients and write_wait."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.testing import TIMEOUT, StartServer, eventually, wait_until

from .conftest import StalledClient


async def test_connection_over_the_limit_gets_the_error_then_1013(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_connections": 2}})
    first, second = await server.connect(), await server.connect()
    refused = await server.raw()
    msg = await refused.receive_json(timeout=5)
    assert msg["type"] == "error"
    assert msg["error"] == "server is at maximum capacity"
    closing = await refused.receive(timeout=5)
    assert closing.data == 1013
    assert server.metrics.error_count("server_full") == 1
    assert (await server.health())[1]["clients"] == 2
    # a slot frees when any client leaves
    await first.ws.close()
    third = await server.connect()
    assert (await third.request({"type": "ping"}))["type"] == "pong"
    assert (await second.request({"type": "ping"}))["type"] == "pong"


async def test_zero_means_unlimited(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_connections": 0, "max_connections_per_room": 0}})
    clients = [await server.connect() for _ in range(50)]
    for client in clients:
        await client.subscribe("big")
    assert (await server.health())[1]["clients"] == 50


async def test_room_over_the_limit_answers_room_full_and_keeps_the_client(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_connections_per_room": 2}})
    a, b, c = await server.connect(), await server.connect(), await server.connect()
    await a.subscribe("small")
    await b.subscribe("small")
    reply = await c.request({"type": "subscribe", "room": "small"})
    assert reply["type"] == "error"
    assert reply["error"] == "room is at maximum capacity"
    assert (await b.subscribe("small"))["data"]["client_count"] == 2  # a member re-subscribing is fine
    await c.subscribe("other")  # the refused client stays connected and usable
    await a.request({"type": "unsubscribe", "room": "small"})
    assert (await c.subscribe("small"))["data"]["client_count"] == 2


@pytest.mark.parametrize("reason", ["slow consumer", "write timeout"])
async def test_a_stalled_reader_is_dropped_and_nobody_else_slows_down(wsgate_server: StartServer, reason: str) -> None:
    if reason == "slow consumer":
        settings = {"send_queue_size": 64, "write_wait": "30s"}
    else:  # a huge outbox: the write deadline must be what catches the stalled peer (the readers here, in this
        # process, get it too: a second, not less, so that a loaded machine's stall does not catch them instead)
        settings = {"send_queue_size": 1_000_000, "send_queue_bytes": 1 << 30, "write_wait": "1s"}
    server = await wsgate_server(websocket=settings)
    publisher, subscriber = await server.connect(), await server.connect()
    await publisher.subscribe("flood")
    await subscriber.subscribe("flood")
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "flood")  # type: ignore[arg-type]
        assert len(server.hub.rooms["flood"]) == 3
        stalled_conn = next(c for c in server.hub.rooms["flood"] if c.id not in (publisher.id, subscriber.id))

        payload = "x" * 8192
        total = 0
        received = 0
        # flood until the stalled client has been dropped; everyone else reads everything, in order
        while stalled_conn in server.hub.rooms["flood"] and total < 5_000:
            for _ in range(100):
                await publisher.send({"type": "publish", "room": "flood", "data": [total, payload]})
                total += 1
            for _ in range(100):
                assert (await subscriber.recv())["data"][0] == received
                assert (await publisher.recv())["data"][0] == received
                received += 1
            if reason == "slow consumer":
                assert len(stalled_conn._outbox) <= settings["send_queue_size"]  # memory stays bounded
        # (a write deadline may end after the flood: it is a time, not an amount)
        await eventually(lambda: stalled_conn not in server.hub.rooms["flood"])
        await wait_until(stalled_conn.closed)  # really disconnected, not only forgotten
        assert stalled_conn.close_reason == reason
        metric = "slow_consumer" if reason == "slow consumer" else "write_timeout"
        assert server.metrics.error_count(metric) == 1
        # the room keeps working at full speed for the others
        await publisher.send({"type": "publish", "room": "flood", "data": "after"})
        assert (await subscriber.recv())["data"] == "after"
    finally:
        stalled.close()


@pytest.mark.slow
async def test_a_client_pinging_without_reading_never_blocks_its_reader(wsgate_server: StartServer) -> None:
    """Pongs go through the writer: with the socket full, the client's next message is still read."""
    server = await wsgate_server(
        websocket={"send_queue_size": 100_000, "send_queue_bytes": 1 << 30, "write_wait": "30s"}
    )
    stalled = StalledClient()
    try:
        _, conn = await stalled.stuck_in_flood(server)
        for _ in range(3_000):  # more pongs than aiohttp writes before it waits (256 KiB)
            await stalled.send(0x9, b"x" * 125)
        await stalled.send(0x1, b'{"type":"subscribe","room":"second"}')
        watcher = await server.connect()
        await watcher.subscribe("second")
        async with asyncio.timeout(TIMEOUT):
            while len(server.hub.rooms["second"]) < 2:  # each request is a full turn of the server
                await watcher.request({"type": "ping"})
        assert conn.rooms == {"flood", "second"}
    finally:
        stalled.close()
