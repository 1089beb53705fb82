"""The Python SDKs' life cycle (issue 23): `async with` closes what they opened, `close()` is idempotent, and
nothing is used after it. Over real connections: a gateway with the HTTP API, and the test Redis."""

from __future__ import annotations

import aiohttp
import pytest

from wsgate.sdk.client import GatewayClient
from wsgate.sdk.publisher import HttpPublisher, PublisherClosed, RedisPublisher
from wsgate.testing import StartServer

KEY = "publisher-test-key"


async def test_http_publisher_in_async_with_closes_its_session(wsgate_server: StartServer) -> None:
    server = await wsgate_server(api={"key": KEY})
    member = await server.connect()
    await member.subscribe("orders")
    async with HttpPublisher(server.url("/"), KEY) as publisher:
        assert await publisher.publish("orders", {"id": 7}) == 1
        session = publisher._session
        assert session is not None and not session.closed
    assert session.closed  # (left open, aiohttp warns "Unclosed client session")
    assert (await member.recv())["data"] == {"id": 7}
    await publisher.close()  # idempotent
    with pytest.raises(PublisherClosed):
        await publisher.publish("orders", 8)


async def test_http_publisher_closes_its_session_when_the_block_raises(wsgate_server: StartServer) -> None:
    server = await wsgate_server(api={"key": KEY})
    with pytest.raises(ZeroDivisionError):
        async with HttpPublisher(server.url("/"), KEY) as publisher:
            await publisher.broadcast("hello")
            session = publisher._session
            1 / 0  # noqa: B018
    assert session is not None and session.closed


async def test_http_publisher_leaves_a_given_session_open(wsgate_server: StartServer) -> None:
    server = await wsgate_server(api={"key": KEY})
    async with aiohttp.ClientSession() as session:
        async with HttpPublisher(server.url("/"), KEY, session=session) as publisher:
            assert await publisher.broadcast("hello") == 0
        assert not session.closed  # the caller's to close
        await publisher.close()
        assert not session.closed


async def test_redis_publisher_in_async_with_closes_its_connections(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    server = await wsgate_server(broker={"url": redis_url, "prefix": broker_prefix})
    member = await server.connect()
    await member.subscribe("orders")
    async with RedisPublisher(redis_url, prefix=broker_prefix) as publisher:
        assert await publisher.publish("orders", {"id": 7}) == 1  # gateway nodes reached
        connections = list(publisher._redis.connection_pool._available_connections)
        assert connections and all(connection.is_connected for connection in connections)
    assert not any(connection.is_connected for connection in connections)  # its sockets to Redis are closed
    assert (await member.recv())["data"] == {"id": 7}
    await publisher.close()  # idempotent
    with pytest.raises(PublisherClosed):
        await publisher.broadcast("late")


async def test_gateway_client_close_is_idempotent(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    async with GatewayClient(server.url("/ws")) as client:
        await client.subscribe("room")
        session = client._session
    assert session is not None and session.closed
    await client.close()
    assert session.closed
