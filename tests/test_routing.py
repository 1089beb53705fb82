"""The one route: every way of publishing keeps one publisher's order on every node and keeps history.

Runs on the memory broker (one node) and on two nodes sharing a real Redis; the Router's unit tests (memory broker,
recording transport, no server: tests/fakes.py) pin its order, offsets, gaps and epochs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from wsgate import Client, ClientError, Message, errors, hookimpl, protocol
from wsgate.broker import BrokerError, MemoryBroker
from wsgate.config import WebSocketSettings
from wsgate.connection import State
from wsgate.history import Position, new_epoch, stamp, stamp_of
from wsgate.overhead import FRAME_HEAD_BYTES, STAMP_BYTES, largest_message
from wsgate.rooms import RoomPatterns
from wsgate.routing import Router
from wsgate.sdk.client import GatewayClient
from wsgate.sdk.publisher import HttpPublisher, RedisPublisher
from wsgate.testing import Peer, Server, StartServer, eventually
from wsgate.wire import text_frame

from .fakes import Parts, turn

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


# --- Router unit tests: the memory broker and a recording transport, without a server -------------------


class SlowHistory(MemoryBroker):
    """A memory broker whose history appends complete only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[asyncio.Future[bytes], bytes]] = []
        self.relayed: list[tuple[str | None, bytes]] = []

    def relay(self, room: str | None, message: bytes) -> None:
        self.relayed.append((room, message))

    def append(self, room: str, head: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append((future, self.history.append(room, head)))
        self.relayed.append((room, head))
        return future


async def test_router_delivers_locally_in_publish_order_behind_a_pending_offset() -> None:
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    conn, transport = parts.connect()
    for room in ("h1", "p1"):
        parts.hub.join(conn, room)
    first = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    await turn()
    second = asyncio.create_task(router.publish("p1", protocol.encode("message", room="p1", data=2)))
    third = asyncio.create_task(router.publish(None, protocol.encode("message", data=3)))
    await turn()
    assert transport.written == b""  # 2 and 3 wait for 1's offset
    assert [room for room, _ in broker.relayed] == ["h1", "p1", None]  # relayed in publish order at once
    future, stamped = broker.pending.pop()
    future.set_result(stamped)
    assert await asyncio.gather(first, second, third) == [1, 1, 1]
    await turn()
    assert [(m["data"], m.get("offset")) for m in transport.messages()] == [(1, 1), (2, None), (3, None)]


async def test_router_leaves_the_sender_out_though_its_publish_was_cancelled() -> None:
    """Second review: `skip_self` was forgotten when the publisher stopped waiting (its client's handler timed
    out) before its message, held behind an earlier offset, went out: the sender got its own message."""
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    sender, sender_transport = parts.connect()
    member, member_transport = parts.connect()
    for conn in (sender, member):
        parts.hub.join(conn, "h1")
        parts.hub.join(conn, "p1")
    first = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    await turn()
    skipping = asyncio.create_task(router.publish("p1", protocol.encode("message", room="p1", data=2), skip=sender))
    await turn()
    skipping.cancel()  # (its handler ran out of time)
    future, stamped = broker.pending.pop()
    future.set_result(stamped)
    assert await first == 2
    await turn()
    assert [m["data"] for m in member_transport.messages()] == [1, 2]
    assert [m["data"] for m in sender_transport.messages()] == [1]  # left out all the same


async def test_router_tells_the_publisher_when_history_cannot_be_kept_and_goes_on() -> None:
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    conn, transport = parts.connect()
    parts.hub.join(conn, "h1")
    refused = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    later = asyncio.create_task(router.publish(None, protocol.encode("message", data=2)))
    await turn()
    broker.pending[0][0].set_exception(BrokerError("Redis is unreachable"))
    with pytest.raises(BrokerError):
        await refused
    assert await later == 1
    await turn()
    assert [m["data"] for m in transport.messages()] == [2]  # never 1 without an offset


async def test_router_on_the_memory_broker_never_waits() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    parts.hub.join(conn, "h1")
    assert await parts.router.publish("h1", protocol.encode("message", room="h1", data=1)) == 1
    assert (len(conn._outbox), transport.writes) == (1, 0)  # queued without the loop ever turning
    await turn()
    assert transport.messages()[0]["offset"] == 1


def _member_of_h1(gap_wait: float) -> tuple[Parts, Router, Any]:
    """A router over a memory broker (rooms h* keep history) and one member of h1, with its transport."""
    parts = Parts()
    router = Router(parts.hub, parts.broker, RoomPatterns(("h*",)), parts.metrics, gap_wait=gap_wait)
    member, transport = parts.connect()
    parts.hub.join(member, "h1")
    return parts, router, transport


def _kept(data: int, offset: int, epoch: str) -> bytes:
    """A message to h1 carrying `data`, stamped with `offset` and `epoch`."""
    return stamp(b'{"type":"message","room":"h1","data":%d' % data, offset, epoch)


async def test_router_sends_a_rooms_offsets_in_order_and_waits_a_bounded_time_for_a_missing_one() -> None:
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    kept = [_kept(n, n, "e1") for n in range(1, 7)]
    router.expect("h1", Position(0, "e1"))
    for n in (2, 1, 3):  # another node's 2 overtook this node's 1
        router.receive("h1", kept[n - 1])
    router.receive("h1", kept[5])  # 6 arrives, 4 and 5 never do (lost while Redis was away)
    router.receive("h1", kept[0])  # 1 again: already sent
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 3]
    await eventually(lambda: len(transport.messages()) > 3)  # the gap wait passes: 6 goes out without 4 and 5
    assert [m["data"] for m in transport.messages()] == [1, 2, 3, 6]
    assert parts.metrics.error_count("history_gap") == 1


async def test_router_reads_a_missing_offset_from_the_history() -> None:
    """A relayed message lost on the way (the node's subscription dropped): the sequence reads it from the history."""
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    kept = [parts.broker.history.append("h1", b'{"type":"message","room":"h1","data":%d' % n) for n in range(1, 7)]
    router.expect("h1", Position(0, stamp_of(kept[0])[1]))
    for n in (1, 2, 3, 6):  # 4 and 5 never came through pub/sub
        router.receive("h1", kept[n - 1])
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 3]
    await eventually(lambda: len(transport.messages()) > 3)  # the gap wait passes; the history is read
    assert [m["data"] for m in transport.messages()] == [1, 2, 3, 4, 5, 6]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_a_reader_of_a_new_epoch_does_not_skip_messages_for_members_already_here() -> None:
    """Found in review: members joined when the room had no history (epoch ""); a new subscriber then read
    (1, E) while message 1 was on its way; the members must still get message 1."""
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    router.expect("h1", Position(0, ""))  # what the member read
    first = _kept(1, 1, "e2")
    router.expect("h1", Position(1, "e2"))  # a newcomer read offset 1 before it came through pub/sub
    router.receive("h1", first)
    await turn()
    assert [m["data"] for m in transport.messages()] == [1]


async def test_router_a_late_message_of_an_epoch_the_history_left_does_not_turn_the_sequence_back() -> None:
    """Redis lost the room's history (epoch e1) while e1's message 3 was still on its way; e2 began meanwhile.
    The late e1 message goes out once, and e2's offsets go on without a gap wait, a re-read or a duplicate."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(0, "e1"))
    for data, offset, epoch in ((1, 1, "e1"), (2, 2, "e1"), (10, 1, "e2"), (3, 3, "e1"), (20, 2, "e2"), (30, 3, "e2")):
        router.receive("h1", _kept(data, offset, epoch))
    router.expect("h1", Position(2, "e1"))  # a slow reader of the old epoch does not turn it back either
    router.receive("h1", _kept(40, 4, "e2"))
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 10, 3, 20, 30, 40]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_a_sequence_begun_in_a_later_epoch_is_not_turned_back_by_an_earlier_one() -> None:
    """Found in review: the sequence began in e2 (a reader's position); e1's 7, late, goes out once, and e2's
    offsets stay in order, once each."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(2, "e2"))
    for data, offset, epoch in ((70, 7, "e1"), (4, 4, "e2"), (3, 3, "e2"), (3, 3, "e2"), (70, 7, "e1")):
        router.receive("h1", _kept(data, offset, epoch))
    router.expect("h1", Position(9, "e1"))  # a slow reader of the earlier epoch
    router.receive("h1", _kept(5, 5, "e2"))
    await turn()
    assert [m["data"] for m in transport.messages()] == [70, 3, 4, 5]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_sends_a_late_message_of_an_earlier_epoch_once() -> None:
    """A gap fill read e1's 5 from the history; e2 began; the relay's copy of e1's 5 arrives late, and e1's 7
    and 6 later still (the two paths are not ordered): each goes out once."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(4, "e1"))
    for data, offset, epoch in (
        (5, 5, "e1"),
        (5, 5, "e1"),
        (10, 1, "e2"),
        (5, 5, "e1"),
        (7, 7, "e1"),
        (6, 6, "e1"),
        (7, 7, "e1"),
        (20, 2, "e2"),
    ):
        router.receive("h1", _kept(data, offset, epoch))
    await turn()
    assert [m["data"] for m in transport.messages()] == [5, 10, 7, 6, 20]


async def test_router_a_publish_held_behind_an_earlier_offset_holds_later_publishes_back() -> None:
    """Found by tests/test_ordering.py: this node's message, kept at once but held behind offsets still on their
    way, was overtaken by the same publisher's next message to another room (and its publisher got 0)."""
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    parts.hub.join(next(iter(parts.hub.rooms["h1"])), "plain")
    for n in (1, 2):  # another node's, never relayed here
        parts.broker.history.append("h1", b'{"type":"message","room":"h1","data":%d' % n)
    router.expect("h1", Position(0, parts.broker.history.position("h1").epoch))
    first = asyncio.ensure_future(router.publish("h1", b'{"type":"message","room":"h1","data":3}'))
    second = asyncio.ensure_future(router.publish("plain", b'{"type":"message","room":"plain","data":4}'))
    assert await first == 1 and await second == 1  # after the gap wait, once 1 and 2 are read from the history
    assert [m["data"] for m in transport.messages()] == [1, 2, 3, 4]


async def test_router_a_cancelled_history_read_does_not_leave_the_room_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: a catch-up read that was cancelled never answered the core, so the room's catch-up stayed
    "under way" and every later held message and own publish waited until the room was forgotten."""
    parts, router, transport = _member_of_h1(gap_wait=0.01)
    reading = asyncio.Event()

    async def never_answers(room: str, since: Position, **_: Any) -> Any:
        reading.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(parts.broker, "history_replay", never_answers)
    router.expect("h1", Position(0, "e1"))
    router.receive("h1", _kept(1, 1, "e1"))
    router.receive("h1", _kept(3, 3, "e1"))  # 2 is missing: after the gap wait, it is read
    await asyncio.wait_for(reading.wait(), 5)
    for task in list(router._reads):
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*router._reads, return_exceptions=True), 5)
    assert [m["data"] for m in transport.messages()] == [1, 3]  # the read failed: 3 went out, 2 counted as lost
    assert parts.metrics.error_count("history_gap") == 1
    router.receive("h1", _kept(4, 4, "e1"))
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 3, 4]


async def test_router_close_stops_its_timers_and_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(0, "e1"))
    router.receive("h1", _kept(2, 2, "e1"))  # held behind 1: a wake-up is set
    assert router._wakes
    router.close()
    assert not router._wakes


@pytest.mark.parametrize("offset", [1, 2**63 - 1, 2**64 - 1])  # (Redis's INCR stops at 2**63 - 1)
def test_a_stamp_adds_at_most_stamp_bytes(offset: int) -> None:
    for epoch in (new_epoch(), "f" * 24):
        assert len(stamp(b'{"a":1', offset, epoch)) - len(b'{"a":1}') <= STAMP_BYTES
    assert len(text_frame(b"x" * 70_000)) - 70_000 == FRAME_HEAD_BYTES  # (the longest head: 8 bytes of length)


@pytest.mark.parametrize("room", ["h1", "p1", None])  # with history (stamped), without, a broadcast
async def test_the_router_refuses_a_message_longer_than_largest_and_delivers_the_largest(room: str | None) -> None:
    """`Router.begin` refuses a message longer than `largest` (`message is too large`), delivered nowhere; the
    largest it takes reaches a member whose queue it may fill."""
    limit = 65_536
    parts = Parts()
    parts.settings = WebSocketSettings(send_queue_bytes=limit)
    largest = largest_message(limit, 256)
    router = Router(parts.hub, parts.broker, RoomPatterns(("h*",)), parts.metrics, largest=largest)
    conn, transport = parts.connect()
    if room is not None:
        parts.hub.join(conn, room)
    conn._blocked = True  # its socket full: what it is sent waits, and counts against the limit

    def message(size: int) -> bytes:
        head = b'{"type":"message","data":"'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    with pytest.raises(ClientError) as refused:
        router.begin(room, message(largest + 1))
    assert refused.value.kind is errors.MESSAGE_TOO_LARGE
    assert await router.publish(room, message(largest)) == 1
    assert conn.state is State.OPEN and conn.held_bytes() <= limit


async def test_a_delivery_that_fails_answers_its_publisher_rather_than_leaving_it_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The review: a delivery that raised (a member's write) was logged, and its publisher, in a room with
    history, waited for good. It gets the exception (its client: `internal error`); the next publish goes on."""
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    conn, transport = parts.connect()
    parts.hub.join(conn, "h1")
    deliver = parts.hub.deliver

    def failing(room: str | None, message: bytes, skip: Any = None) -> int:
        raise RuntimeError("a member's write failed")

    parts.hub.deliver = failing  # type: ignore[method-assign]
    first = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    await turn()
    future, stamped = broker.pending.pop()
    future.set_result(stamped)
    with pytest.raises(RuntimeError, match="a member's write failed"):
        await asyncio.wait_for(first, 5)
    assert "carrying out Deliver failed" in caplog.text
    parts.hub.deliver = deliver  # type: ignore[method-assign]
    second = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=2)))
    await turn()
    future, stamped = broker.pending.pop()
    future.set_result(stamped)
    assert await asyncio.wait_for(second, 5) == 1
