"""The backplane: one contract for every broker and every presence store, then nodes over a real Redis.

The memory backends' runs of the contract need no Redis (`-k memory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from wsgate.broker import Broker, BrokerError, MemoryBroker
from wsgate.broker.redis import RedisBroker
from wsgate.config import BrokerSettings, HistorySettings
from wsgate.history import Position, stamp_of
from wsgate.metrics import Metrics
from wsgate.presence import PresenceStore
from wsgate.presence.memory import MemoryPresenceStore
from wsgate.presence.redis import RedisPresenceStore
from wsgate.testing import TIMEOUT

from .conftest import PrivateRedis

HISTORY = HistorySettings(rooms=("h*",), size=10, ttl=60.0)


class Node:
    """One started broker plus a record of what it received from other nodes."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.received: list[tuple[str | None, bytes]] = []
        self.commands: list[bytes] = []
        self.arrived = asyncio.Event()

    def receive(self, room: str | None, message: bytes) -> None:
        self.received.append((room, message))
        self.arrived.set()

    def commanded(self, payload: bytes) -> None:
        self.commands.append(payload)
        self.arrived.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


MakeNode = Callable[[], Awaitable[Node]]


@pytest.fixture
async def start_node() -> AsyncIterator[Callable[[Broker], Awaitable[Node]]]:
    """`await start_node(broker)`: the broker started, receiving into a recording Node; closed afterwards."""
    nodes: list[Node] = []

    async def start(broker: Broker) -> Node:
        node = Node(broker)
        await broker.start(node.receive, commanded=node.commanded)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.broker.close()


def redis_broker(url: str, prefix: str, **settings: object) -> RedisBroker:
    return RedisBroker(BrokerSettings(url=url, prefix=prefix, **settings), Metrics(), history=HISTORY)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
def make_node(
    request: pytest.FixtureRequest, start_node: Callable[[Broker], Awaitable[Node]], broker_prefix: str
) -> MakeNode:
    """Builds started nodes of one backend; redis nodes share a prefix, so they form one cluster."""
    if request.param == "memory":
        return lambda: start_node(MemoryBroker(HISTORY))
    redis_url = request.getfixturevalue("redis_url")
    return lambda: start_node(redis_broker(redis_url, broker_prefix))


# --- the contract every broker keeps -------------------------------------------------------


async def test_relay_never_waits_and_never_comes_back(make_node: MakeNode) -> None:
    node = await make_node()
    node.broker.room_added("r")
    await node.broker.wait_receiving("r")
    node.broker.relay("r", b'{"n":1}')
    node.broker.relay(None, b'{"n":2}')
    stamped = await node.broker.append("h1", b'{"n":3')  # after the relays: it went out after them
    assert stamp_of(stamped)[0] == 1
    assert node.received == []  # a node delivers its own messages itself (the router), never twice
    assert node.broker.state == "ok"


async def test_commands_reach_every_node_the_senders_too_in_one_order(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    single = isinstance(a.broker, MemoryBroker)  # (two memory brokers are two separate single-node gateways)

    async def send(node: Node, first: int) -> list[int]:  # one after the other; both nodes at once
        return [await node.broker.command(b'{"n":%d}' % n) for n in range(first, 50, 2)]

    assert await asyncio.gather(send(a, 1), send(b, 0)) == [[0 if single else 1] * 25] * 2
    everything = {b'{"n":%d}' % n for n in range(50)}
    for node in (a, b):
        async with asyncio.timeout(TIMEOUT):
            while len(node.commands) < (25 if single else 50):
                node.arrived.clear()
                await node.arrived.wait()
    if single:  # each its own, in the order sent
        assert a.commands == [b'{"n":%d}' % n for n in range(1, 50, 2)]
        assert b.commands == [b'{"n":%d}' % n for n in range(0, 50, 2)]
    else:  # every node's, in one and the same order, each node's own in the order sent
        assert a.commands == b.commands and set(a.commands) == everything
        for first in (0, 1):
            assert [c for c in a.commands if int(c[5:-1]) % 2 == first] == [
                b'{"n":%d}' % n for n in range(first, 50, 2)
            ]
    assert a.received == b.received == []


async def test_append_gives_offsets_in_order_and_keeps_them(make_node: MakeNode) -> None:
    node = await make_node()
    stamped = [await node.broker.append("h1", b'{"n":%d' % n) for n in range(1, 4)]
    assert [stamp_of(m)[0] for m in stamped] == [1, 2, 3]
    position = await node.broker.history_position("h1")
    assert position.offset == 3 and stamped[0].endswith(b'"epoch":"%s"}' % position.epoch.encode())
    assert await node.broker.history_last("h1", 2) == (position, stamped[1:])
    replay = await node.broker.history_replay("h1", Position(1, position.epoch))
    assert (replay.recovered, replay.messages) == (True, stamped[1:])
    assert not (await node.broker.history_replay("h1", Position(1, "another-epoch"))).recovered


async def test_reading_the_last_messages_of_a_new_room_creates_nothing(make_node: MakeNode) -> None:
    node = await make_node()
    assert await node.broker.history_last("h-new", 5) == (Position(0, ""), [])


async def test_room_interest_is_idempotent_enough(make_node: MakeNode) -> None:
    node = await make_node()
    for _ in range(3):
        node.broker.room_added("r")
        node.broker.room_removed("r")
    node.broker.room_added("r")
    await node.broker.wait_receiving("r")


# --- the contract every presence store keeps -------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def make_presence_store(request: pytest.FixtureRequest, broker_prefix: str) -> Callable[[bytes], PresenceStore]:
    """Builds presence stores of one backend (for Redis: nodes of one cluster, by node id)."""
    if request.param == "memory":
        return lambda node_id: MemoryPresenceStore()
    settings = BrokerSettings(url=request.getfixturevalue("redis_url"), prefix=broker_prefix)
    return lambda node_id: RedisPresenceStore(settings, Metrics(), node_id=node_id, node_ttl=15.0)


@pytest.fixture
async def presence_stores(make_presence_store: Callable[[bytes], PresenceStore]) -> AsyncIterator[list[PresenceStore]]:
    """Two started presence stores of one backend: two nodes."""
    stores = [make_presence_store(node * 32) for node in (b"a", b"b")]
    for store in stores:
        await store.start()
    yield stores
    for store in stores:
        await store.close()


async def test_members_are_those_of_the_other_nodes(presence_stores: list[PresenceStore]) -> None:
    a, b = presence_stores
    a.join("p", "c1", b'{"client_id":"c1"}')
    assert await a.members("p") == []  # a node's own members are the tracker's
    if isinstance(a, MemoryPresenceStore):
        assert await b.members("p") == []  # one process: there are no other nodes
        return
    async with asyncio.timeout(TIMEOUT):
        while await b.members("p") != [b'{"client_id":"c1"}']:
            await asyncio.sleep(0.01)  # written by a's background writer; nothing to wait on from b
        a.leave("p", "c1")
        while await b.members("p") != []:
            await asyncio.sleep(0.01)


async def test_figures_of_every_live_node(presence_stores: list[PresenceStore]) -> None:
    a, b = presence_stores
    assert await a.share_figures(b'{"node":"a"}') == [b'{"node":"a"}']
    expected = [b'{"node":"b"}'] if isinstance(b, MemoryPresenceStore) else [b'{"node":"a"}', b'{"node":"b"}']
    assert sorted(await b.share_figures(b'{"node":"b"}')) == expected


async def test_figures_shared_without_reading_the_others(presence_stores: list[PresenceStore]) -> None:
    """`others=False` (no dashboard open): this node's figures are written all the same, nothing is read."""
    a, b = presence_stores
    assert await a.share_figures(b'{"node":"a"}', others=False) == []
    expected = [b'{"node":"b"}'] if isinstance(b, MemoryPresenceStore) else [b'{"node":"a"}', b'{"node":"b"}']
    assert sorted(await b.share_figures(b'{"node":"b"}')) == expected


# --- Redis: several nodes ------------------------------------------------------------------


@pytest.fixture
def cluster(start_node: Callable[[Broker], Awaitable[Node]], redis_url: str, broker_prefix: str) -> MakeNode:
    """Started Redis nodes sharing one prefix: one cluster."""
    return lambda: start_node(redis_broker(redis_url, broker_prefix))


async def test_relayed_and_kept_messages_cross_nodes_exactly_once_in_order(cluster: MakeNode) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    for node in (b, c):
        for room in ("room", "h1"):
            node.broker.room_added(room)
            await node.broker.wait_receiving(room)
    sent: list[tuple[str | None, bytes]] = []
    appended = []
    for n in range(300):
        if n % 3 == 0:
            appended.append(a.broker.append("h1", b'{"n":%d' % n))  # not awaited: queued in order with relays
            sent.append(("h1", b""))
        else:
            room = "room" if n % 3 == 1 else None
            a.broker.relay(room, b'{"n":%d}' % n)
            sent.append((room, b'{"n":%d}' % n))
    stamped = iter([await future for future in appended])
    expected = [(room, message or next(stamped)) for room, message in sent]
    for node in (b, c):
        await node.until(300)
        assert node.received == expected
    assert a.received == []  # its own: delivered by its router, never received back


async def test_a_cancelled_answer_withdraws_nothing(cluster: MakeNode) -> None:
    """Review of idempotency keys: a publisher's cancellation cancelled the future `relay_once` returned, and
    Redis's answer then reached the other nodes only. A message whose future was cancelled still goes out, and
    this node gets it through `receive` (as after OutcomeUnknown), whatever kind it is."""
    a, b = await cluster(), await cluster()
    for room in ("p1", "h1"):
        b.broker.room_added(room)
        await b.broker.wait_receiving(room)
    once = a.broker.relay_once("p1", b'{"n":1}', b"o" * 32)
    kept = a.broker.append("h1", b'{"n":2', b"k" * 32)
    for future in (once, kept):
        future.cancel()
    for node in (a, b):
        await node.until(2)
    assert a.received == b.received  # the same bytes, here as on the other node
    assert [room for room, _ in a.received] == ["p1", "h1"] and a.received[0][1] == b'{"n":1}'
    found = stamp_of(a.received[1][1])
    assert found is not None and found[0] == 1


async def test_a_node_subscribes_only_to_rooms_with_local_members(
    cluster: MakeNode, redis_url: str, broker_prefix: str
) -> None:
    import redis.asyncio as aioredis

    a = await cluster()
    redis = aioredis.from_url(redis_url)

    async def channels() -> set[bytes]:
        return set(await redis.pubsub_channels(f"{broker_prefix}:*"))

    try:
        assert await channels() == {
            f"{broker_prefix}:broadcast".encode(),
            f"{broker_prefix}:control".encode(),
            f"{broker_prefix}:probe:".encode() + a.broker.node_id,
        }  # type: ignore[attr-defined]
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
    with pytest.raises(BrokerError, match=r"cannot reach Redis at redis://127.0.0.1:1/0: "):
        await redis_broker("redis://127.0.0.1:1/0", broker_prefix, connect_timeout=1.0).start(lambda room, m: None)
    lenient = redis_broker("redis://127.0.0.1:1/0", broker_prefix, connect_timeout=1.0, required=False)
    await lenient.start(lambda room, m: None)
    try:
        assert lenient.state == "degraded"
        lenient.relay("r", b"x")  # never raises: other nodes miss it, counted
        with pytest.raises(BrokerError):
            await lenient.append("h1", b'{"n":1')  # not kept: the publisher is told, never a silent gap
    finally:
        await lenient.close()


async def test_losing_redis_refuses_history_and_recovers(private_redis: PrivateRedis, broker_prefix: str) -> None:
    metrics = Metrics()
    a = Node(RedisBroker(BrokerSettings(url=private_redis.url, prefix=broker_prefix), metrics, history=HISTORY))
    b = Node(redis_broker(private_redis.url, broker_prefix))
    for node in (a, b):
        await node.broker.start(node.receive)
        node.broker.room_added("r")
        await node.broker.wait_receiving("r")
    try:
        await private_redis.stop()
        assert isinstance(a.broker, RedisBroker)
        async with asyncio.timeout(TIMEOUT):
            while a.broker.state != "degraded":
                await asyncio.sleep(0.01)
        a.broker.relay("r", b"during")  # dropped for other nodes, counted
        with pytest.raises(BrokerError):
            await a.broker.append("h1", b'{"n":1')
        with pytest.raises(BrokerError, match="Redis did not take the command"):
            await a.broker.command(b"{}")
        await private_redis.start()
        for node in (a, b):
            assert isinstance(node.broker, RedisBroker)
            await asyncio.wait_for(node.broker.receiving.wait(), 15)
            await node.broker.wait_receiving("r")
        a.broker.relay("r", b"after")
        await b.until(1)
        assert b.received[-1] == ("r", b"after")
        assert stamp_of(await a.broker.append("h1", b'{"n":2'))[0] == 1  # a restarted Redis: a new epoch
        assert metrics.registry.get_sample_value("websocket_broker_reconnects_total") >= 1
        assert metrics.registry.get_sample_value("websocket_broker_errors_total") >= 1
    finally:
        for node in (a, b):
            await node.broker.close()


async def test_a_batch_waits_for_a_busy_publishers_next_message_and_never_for_a_lone_one(
    start_node: Callable[[Broker], Awaitable[Node]], redis_url: str, broker_prefix: str
) -> None:
    """`broker.linger` (here its most, 1 s): after Redis answers a batch with a message queued behind it, the next
    batch waits until as many messages are queued as the answered batch and the queue held together (a publisher
    with several in flight answers each delivered batch with new ones); a publish that finds the queue empty, or
    a publisher that awaits each publish, never waits."""
    broker = redis_broker(redis_url, broker_prefix, linger=1.0)
    node = await start_node(broker)
    batches: list[int] = []
    taken, lingering = asyncio.Event(), asyncio.Event()
    send_batch, linger = broker._send_batch, broker._linger

    async def spy(batch: list[Any], attempt: Any) -> int:
        batches.append(len(batch))
        taken.set()
        return await send_batch(batch, attempt)

    async def spy_linger(expected: int) -> None:
        lingering.set()
        await linger(expected)

    broker._send_batch = spy  # type: ignore[method-assign]
    broker._linger = spy_linger  # type: ignore[method-assign]
    async with asyncio.timeout(TIMEOUT):  # none of these waits for the linger (`lingering` is not set)
        for n in range(1, 4):
            await node.broker.append("h1", b'{"n":%d' % n)
    assert batches == [1, 1, 1] and not lingering.is_set()
    taken.clear()
    first = node.broker.append("h1", b'{"n":4')
    await taken.wait()  # sent, not answered yet (Redis's answer is read after this task's turn)
    second = node.broker.append("h1", b'{"n":5')  # queued behind it
    await first
    await lingering.wait()  # the sender has the answer and waits: a broken linger would have sent the 5th alone
    third = node.broker.append("h1", b'{"n":6')  # the publisher's next: it joins the 5th
    stamped = await asyncio.gather(second, third)
    assert batches == [1, 1, 1, 1, 2]
    assert [stamp_of(m)[0] for m in stamped] == [5, 6]
