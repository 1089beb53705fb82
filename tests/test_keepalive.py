"""Keepalive: pings every ping_interval; a client silent for pong_wait is dropped."""

from __future__ import annotations

import asyncio

import aiohttp

from wsgate.testing import TIMEOUT, Client, StartServer, wait_until

FAST = {"ping_interval": "100ms", "pong_wait": "300ms"}


async def next_ping(client: Client) -> float:
    """Wait for the server's next WebSocket ping; returns when it arrived."""
    while True:
        msg = await client.ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.PING:
            return asyncio.get_running_loop().time()
        assert msg.type is aiohttp.WSMsgType.TEXT, msg


async def test_pings_every_ping_interval_and_answering_keeps_the_client(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    client = await server.connect(autoping=False)
    pings = []
    while len(pings) < 8:  # 8 intervals: well past pong_wait
        pings.append(await next_ping(client))
        await client.ws.pong()
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.05 < gap < 1.0 for gap in gaps), gaps
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert (await server.health())[1]["clients"] == 1


async def test_a_silent_client_is_dropped_after_pong_wait(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    silent = await server.connect(autoping=False)  # never answers pings, never sends
    await silent.subscribe("room")
    conn = server.hub.connections[silent.id]
    loop = asyncio.get_running_loop()
    started = loop.time()
    closing = await silent.closed()
    assert closing.data == 1001
    assert closing.extra == "keepalive timeout"
    assert loop.time() - started >= 0.25
    await wait_until(conn.closed)
    assert (await server.counts())[1] == {"status": "healthy", "clients": 0, "rooms": 0}


async def test_any_message_counts_as_a_sign_of_life(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    client = await server.connect(autoping=False)  # never answers a ping with a pong...
    for _ in range(8):
        await next_ping(client)
        await client.send({"type": "ping"})  # ...but keeps talking
    assert (await server.health())[1]["clients"] == 1
