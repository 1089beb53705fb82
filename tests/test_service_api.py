"""Pushing from Python code in the same process: the spec's NotifyAllClients / NotifyRoom."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from wsgate.app import create_app
from wsgate.keys import GATEWAY
from wsgate.testing import Server, StartServer, make_settings


async def test_broadcast_from_application_code_reaches_every_client(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    gateway = server.app[GATEWAY]
    reached = await gateway.broadcast({"event": "deploy", "data": {"version": 2}}, type="notification")
    assert reached == 3
    for client in clients:
        msg = await client.recv()
        assert msg["type"] == "notification"
        assert msg["data"] == {"event": "deploy", "data": {"version": 2}}
        assert "client_id" not in msg and "room" not in msg
        assert isinstance(msg["timestamp"], int)


async def test_publish_from_application_code_reaches_the_room_only(server: Server) -> None:
    member, outsider = await server.connect(), await server.connect()
    await member.subscribe("orders")
    reached = await server.app[GATEWAY].publish("orders", {"id": 7}, type="room_update")
    assert reached == 1
    msg = await member.recv()
    assert (msg["type"], msg["room"], msg["data"]) == ("room_update", "orders", {"id": 7})
    assert (await outsider.request({"type": "ping"}))["type"] == "pong"  # nothing was queued for it
    assert await server.app[GATEWAY].publish("empty-room", 1) == 0


async def test_default_type_is_message(server: Server) -> None:
    client = await server.connect()
    await client.subscribe("news")
    await server.app[GATEWAY].publish("news", "hello")
    assert (await client.recv())["type"] == "message"


async def test_an_aiohttp_route_of_the_application_can_push(aiohttp_server: Any) -> None:
    """As in docs/clients.md: a service endpoint added next to /ws that notifies a room."""

    async def notify(request: web.Request) -> web.Response:
        reached = await request.app[GATEWAY].publish("alerts", await request.json(), type="room_update")
        return web.json_response({"reached": reached})

    app = await create_app(make_settings())
    app.router.add_post("/notify", notify)
    server = Server(await aiohttp_server(app), aiohttp.ClientSession())
    try:
        client = await server.connect()
        await client.subscribe("alerts")
        async with server.session.post(server.url("/notify"), json={"level": "high"}) as resp:
            assert await resp.json() == {"reached": 1}
        msg = await client.recv()
        assert (msg["type"], msg["room"], msg["data"]) == ("room_update", "alerts", {"level": "high"})
    finally:
        await server.session.close()


async def test_a_body_in_several_pieces_is_read_whole_and_an_oversize_chunked_one_is_413(
    wsgate_server: StartServer,
) -> None:
    """The security review: a body in two TCP segments got 400, an oversize chunked body 400 instead of 413."""
    import asyncio

    server = await wsgate_server(api={"key": "k", "max_body_size": 1000})
    client = await server.connect()
    await client.subscribe("orders")

    async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0.05)  # separate writes on the wire: nothing to wait on but the gap itself

    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    async with server.session.post(
        server.url("/api/publish"), headers=headers, data=pieces(b'{"room": "orders", ', b'"data": {"id": 7}}')
    ) as resp:
        assert (resp.status, await resp.json()) == (200, {"local_clients": 1, "delivered": 1})
    assert (await client.recv())["data"] == {"id": 7}
    async with server.session.post(
        server.url("/api/publish"),
        headers=headers,
        data=pieces(b'{"room": "orders", "data": "', b"x" * 600, b"x" * 600, b'"}'),
    ) as resp:
        assert (resp.status, await resp.json()) == (413, {"error": "request body too large"})
