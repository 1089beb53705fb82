"""The broker layer: one contract for every backend, then rooms spanning nodes over a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from wsgate.broker import Broker, BrokerError, MemoryBroker
from wsgate.broker.redis import RedisBroker
from wsgate.config import BrokerSettings
from wsgate.metrics import Metrics
from wsgate.testing import TIMEOUT

from .conftest import PrivateRedis


class Node:
    """One started broker plus a record of what it delivered to its (pretend) local clients."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.delivered: list[tuple[str | None, bytes]] = []
        self.arrived = asyncio.Event()

    def deliver(self, room: str | None, frame: bytes) -> int:
        self.delivered.append((room, frame))
        self.arrived.set()
        return 1

    async def until(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()


MakeNode = Callable[[], Awaitable[Node]]


@pytest.fixture
async def start_node() -> AsyncIterator[Callable[[Broker], Awaitable[Node]]]:
    """`await start_node(broker)`: the broker started, delivering into a recording Node; closed afterwards."""
    nodes: list[Node] = []

    async def start(broker: Broker) -> Node:
        node = Node(broker)
        await broker.start(node.deliver)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.broker.close()


@pytest.fixture(params=["memory", "redis"])
def make_node(request: pytest.FixtureRequest, start_node: Callable[[Broker], Awaitable[Node]],
              redis_url: str, broker_prefix: str) -> MakeNode:
    """Builds started nodes of one backend; redis nodes share a prefix, so they form one cluster."""
    if request.param == "memory":
        return lambda: start_node(MemoryBroker())
    return lambda: start_node(RedisBroker(BrokerSettings(url=redis_url, prefix=broker_prefix), Metrics()))


# --- the contract every broker keeps -------------------------------------------------------


async def test_publish_delivers_locally_at_once_and_counts(make_node: MakeNode) -> None:
    node = await make_node()
    node.broker.room_added("r")
    assert await node.broker.publish("r", b"one") == 1
    assert await node.broker.publish(None, b"all") == 1
    assert node.delivered == [("r", b"one"), (None, b"all")]  # no await needed: local delivery is immediate
    assert node.broker.state == "ok"


async def test_room_added_and_removed_are_idempotent_enough(make_node: MakeNode) -> None:
    node = await make_node()
    for _ in range(3):
        node.broker.room_added("r")
        node.broker.room_removed("r")
    node.broker.room_added("r")
    await node.broker.wait_receiving("r")
    assert await node.broker.publish("r", b"x") == 1


# --- Redis: several nodes ------------------------------------------------------------------


@pytest.fixture
def cluster(start_node: Callable[[Broker], Awaitable[Node]], redis_url: str, broker_prefix: str) -> MakeNode:
    """Started Redis nodes sharing one prefix: one cluster."""
    return lambda: start_node(RedisBroker(BrokerSettings(url=redis_url, prefix=broker_prefix), Metrics()))


async def test_frames_cross_nodes_as_the_same_bytes_exactly_once_in_order(cluster: MakeNode) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    for node in (b, c):
        node.broker.room_added("room")
        await node.broker.wait_receiving("room")
    frames = [f'{{"type":"message","data":{n}}}'.encode() for n in range(300)]
    for frame in frames:
        await a.broker.publish("room", frame)
    await a.broker.publish(None, b"broadcast")
    for node in (b, c):
        await node.until(301)
        assert node.delivered == [("room", f) for f in frames] + [(None, b"broadcast")]
    assert len(a.delivered) == 301  # its own, locally, once


async def test_a_node_never_receives_its_own_frames_twice(cluster: MakeNode) -> None:
    a, b = await cluster(), await cluster()
    a.broker.room_added("r")
    await a.broker.wait_receiving("r")
    for n in range(50):
        await a.broker.publish("r", str(n).encode())
    await b.broker.publish(None, b"sync")  # relayed after a's frames went out: once a has it, it had its chance
    await a.until(51)
    assert [frame for _, frame in a.delivered] == [str(n).encode() for n in range(50)] + [b"sync"]


async def test_a_node_subscribes_only_to_rooms_with_local_members(
    cluster: MakeNode, redis_url: str, broker_prefix: str
) -> None:
    a = await cluster()
    redis = aioredis.from_url(redis_url)

    async def channels() -> set[bytes]:
        return set(await redis.pubsub_channels(f"{broker_prefix}:*"))

    try:
        assert await channels() == {f"{broker_prefix}:broadcast".encode()}
        a.broker.room_added("lobby")
        await a.broker.wait_receiving("lobby")
        assert f"{broker_prefix}:room:lobby".encode() in await channels()
        a.broker.room_removed("lobby")
        async with asyncio.timeout(TIMEOUT):
            while f"{broker_prefix}:room:lobby".encode() in await channels():
                await asyncio.sleep(0.01)  # Redis drops the channel when the UNSUBSCRIBE lands
    finally:
        await redis.aclose()


async def test_unreachable_redis_at_start_up(broker_prefix: str) -> None:
    settings = BrokerSettings(url="redis://127.0.0.1:1/0", prefix=broker_prefix, connect_timeout=1.0)
    with pytest.raises(BrokerError, match=r"cannot reach Redis at redis://127.0.0.1:1/0: "):
        await RedisBroker(settings, Metrics()).start(lambda room, frame: 0)
    lenient = RedisBroker(BrokerSettings(url="redis://127.0.0.1:1/0", prefix=broker_prefix,
                                         connect_timeout=1.0, required=False), Metrics())
    await lenient.start(lambda room, frame: 0)
    try:
        assert lenient.state == "degraded"
        assert await lenient.publish("r", b"x") == 0  # local delivery still answers
    finally:
        await lenient.close()


async def test_losing_redis_keeps_local_delivery_and_recovers(private_redis: PrivateRedis, broker_prefix: str) -> None:
    metrics = Metrics()
    a = Node(RedisBroker(BrokerSettings(url=private_redis.url, prefix=broker_prefix), metrics))
    b = Node(RedisBroker(BrokerSettings(url=private_redis.url, prefix=broker_prefix), Metrics()))
    for node in (a, b):
        await node.broker.start(node.deliver)
        node.broker.room_added("r")
        await node.broker.wait_receiving("r")
    try:
        await private_redis.stop()
        assert isinstance(a.broker, RedisBroker)
        async with asyncio.timeout(TIMEOUT):
            while a.broker.state != "degraded":
                await asyncio.sleep(0.01)
        assert await a.broker.publish("r", b"during") == 1  # local clients still get it
        assert a.delivered[-1] == ("r", b"during")
        await private_redis.start()
        for node in (a, b):
            assert isinstance(node.broker, RedisBroker)
            await asyncio.wait_for(node.broker.receiving.wait(), 15)
            await node.broker.wait_receiving("r")
        before = len(b.delivered)
        await a.broker.publish("r", b"after")
        await b.until(before + 1)
        assert b.delivered[-1] == ("r", b"after")
        assert metrics.registry.get_sample_value("websocket_broker_reconnects_total") >= 1
        assert metrics.registry.get_sample_value("websocket_broker_errors_total") >= 1
    finally:
        for node in (a, b):
            await node.broker.close()
