"""The one route: every way of publishing keeps one publisher's order on every node and keeps history.

Runs on the memory broker (one node) and on two nodes sharing a real Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from wsgate import Client, Message, hookimpl
from wsgate.sdk.client import GatewayClient
from wsgate.sdk.publisher import HttpPublisher, RedisPublisher
from wsgate.testing import Peer, Server, StartServer

KEY = "routing-test-key"
HISTORY = {"rooms": ["h*"]}

Nodes = Callable[[], Awaitable[tuple[Server, Server]]]


class Burst:
    """A plugin message type `burst` that publishes a mixed sequence through `gateway.publish`/`broadcast`."""

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        return {"burst": self.burst}

    async def burst(self, client: Client, message: Message) -> None:
        for n in message.data:
            if n % 3 == 1:
                await client.gateway.publish("h1", n, client_id=client.id)
            elif n % 3 == 2:
                await client.gateway.publish("p1", n, client_id=client.id)
            else:
                await client.gateway.broadcast(n, client_id=client.id)


@pytest.fixture(params=["memory", "redis"])
def nodes(request: pytest.FixtureRequest, wsgate_server: StartServer, broker_prefix: str) -> Nodes:
    """Two nodes of one cluster on Redis; on the memory broker, the same node twice."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def start() -> tuple[Server, Server]:
        tables: dict[str, Any] = {"history": HISTORY, "api": {"key": KEY}}
        if request.param == "memory":
            server = await wsgate_server(Burst(), **tables)
            return server, server
        broker = {"url": redis_url, "prefix": broker_prefix}
        return (
            await wsgate_server(Burst(), broker=broker, **tables),
            await wsgate_server(Burst(), broker=broker, **tables),
        )

    return start


async def member(server: Server, *rooms: str) -> Peer:
    client = await server.connect()
    for room in rooms:
        await client.subscribe(room)
    return client


async def data_of(client: Peer, count: int) -> list[Any]:
    """The data of the next `count` messages, checking each kept one carries an offset."""
    got = []
    for _ in range(count):
        message = await client.recv()
        assert message["type"] == "message", message
        assert ("offset" in message) == (message.get("room") == "h1"), message
        got.append(message["data"])
    return got


async def test_mixed_rooms_and_broadcasts_keep_the_publishers_order_on_every_node(nodes: Nodes) -> None:
    """The issue's input: publish h1 (history), publish p1, broadcast; three times over, in one write."""
    a, b = await nodes()
    publisher, here, there = await member(a, "h1", "p1"), await member(a, "h1", "p1"), await member(b, "h1", "p1")
    frames = []
    for n in range(1, 10):
        kind = {1: ("publish", "h1"), 2: ("publish", "p1"), 0: ("broadcast", None)}[n % 3]
        frames.append({"type": kind[0], "data": n, **({"room": kind[1]} if kind[1] else {})})
    for frame in frames:
        await publisher.send(frame)
    for client in (publisher, here, there):
        assert await data_of(client, 9) == list(range(1, 10))


async def test_plugins_publishing_keep_their_order_on_every_node(nodes: Nodes) -> None:
    a, b = await nodes()
    publisher, here, there = await member(a, "h1", "p1"), await member(a, "h1", "p1"), await member(b, "h1", "p1")
    await publisher.send({"type": "burst", "data": list(range(1, 31))})
    for client in (publisher, here, there):
        assert await data_of(client, 30) == list(range(1, 31))


async def test_the_http_api_keeps_history_and_order(nodes: Nodes) -> None:
    a, b = await nodes()
    there = await member(b, "h1", "p1")
    http = HttpPublisher(a.url("/"), KEY)
    try:
        for n in range(1, 10):
            if n % 3 == 0:
                await http.broadcast(n)
            else:
                await http.publish("h1" if n % 3 == 1 else "p1", n)
        assert await data_of(there, 9) == list(range(1, 10))
    finally:
        await http.close()


async def test_every_publisher_keeps_history_so_a_resuming_client_misses_nothing(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """The issue's input: 2 through HTTP, 3 through Redis, 4 through HTTP while a client is away."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    a = await wsgate_server(broker=broker, history=HISTORY, api={"key": KEY})
    b = await wsgate_server(broker=broker, history=HISTORY, api={"key": KEY})
    stayed = await member(b, "h1")
    http, redis = HttpPublisher(a.url("/"), KEY), RedisPublisher(redis_url, prefix=broker_prefix)
    try:
        async with GatewayClient(b.url("/ws")) as leaving:
            await leaving.subscribe("h1")
            await http.publish("h1", 1)
            first = await leaving.receive()
            position = (first["offset"], first["epoch"])
        await http.publish("h1", 2)
        await redis.publish("h1", 3)
        await http.publish("h1", 4)
        seen = [await stayed.recv() for _ in range(4)]
        assert [(m["data"], m["offset"]) for m in seen] == [(1, 1), (2, 2), (3, 3), (4, 4)]  # 3 has its offset too
        back = await b.connect()
        answer = await back.request(
            {"type": "subscribe", "room": "h1", "since": {"offset": position[0], "epoch": position[1]}}
        )
        assert answer["data"]["recovered"] is True
        assert [(m["data"], m["offset"]) for m in [await back.recv() for _ in range(3)]] == [(2, 2), (3, 3), (4, 4)]
    finally:
        await http.close()
        await redis.close()


async def test_a_redis_publisher_before_any_gateway_publishes_plainly(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """Then a gateway starts: found in review, the publisher's next message must be kept at once (the
    absent settings were remembered for RedisPublisher.SETTINGS_TTL, a window of unkept messages)."""
    publisher = RedisPublisher(redis_url, prefix=broker_prefix)
    try:
        assert await publisher.publish("h1", 1) == 0  # nobody listens, and no room keeps history yet
        server = await wsgate_server(broker={"url": redis_url, "prefix": broker_prefix}, history=HISTORY)
        client = await server.connect()
        await client.subscribe("h1")
        assert await publisher.publish("h1", 2) == 1
        assert ((message := await client.recv())["data"], message["offset"]) == (2, 1)
    finally:
        await publisher.close()


async def test_kept_messages_go_out_in_offset_order_on_every_node(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """Two nodes publishing into one room at once: a node's own messages come back from Redis's answer, the
    other's through pub/sub; every member still sees offsets 1, 2, 3, ... with nothing missing or repeated."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = await wsgate_server(broker=broker, history=HISTORY), await wsgate_server(broker=broker, history=HISTORY)
    members = [await member(node, "h1") for node in (a, b, a, b)]
    for n in range(200):
        for publisher in members[:2]:
            await publisher.send({"type": "publish", "room": "h1", "data": n})
    for client in members:
        offsets = [(await client.recv())["offset"] for _ in range(400)]
        assert offsets == list(range(1, 401))
