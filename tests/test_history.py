"""Room history: offsets and epochs, recovery on re-subscribe, `history`, on the memory broker and on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from wsgate.broker.memory import MemoryHistory
from wsgate.config import HistorySettings
from wsgate.history import Position, comes_after, later_epoch, stamp, stamp_of
from wsgate.rooms import RoomPatterns
from wsgate.testing import Peer, Server, StartServer

Start = Callable[..., Awaitable[Server]]
HISTORY = {"rooms": ["chat:*"], "size": 1000}


@pytest.fixture(params=["memory", "redis"])
def start(request: pytest.FixtureRequest, wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> Start:
    """`await start(**tables)`: a gateway keeping history for chat:*, on each broker (Redis: one cluster per test)."""

    async def begin(**tables: Any) -> Server:
        tables.setdefault("history", HISTORY)
        if request.param == "redis":
            tables["broker"] = {"url": redis_url, "prefix": broker_prefix}
        return await wsgate_server(**tables)

    return begin


async def publish_all(client: Peer, room: str, numbers: range) -> list[dict[str, Any]]:
    """Publish each number and read the sender's own copies (so everything is kept before returning)."""
    for n in numbers:
        await client.send({"type": "publish", "room": room, "data": n})
    return [await client.recv() for _ in numbers]


async def test_messages_carry_offsets_and_epochs_only_in_rooms_with_history(start: Start) -> None:
    server = await start()
    client = await server.connect()
    subscribed = await client.subscribe("chat:1")
    assert (subscribed["data"]["offset"], subscribed["data"]["epoch"]) == (0, "")  # no history yet: nothing created
    got = await publish_all(client, "chat:1", range(3))
    epoch = got[0]["epoch"]  # the first message begins the room's history
    assert epoch and [(m["data"], m["offset"], m["epoch"]) for m in got] == [
        (0, 1, epoch),
        (1, 2, epoch),
        (2, 3, epoch),
    ]
    assert list(got[0])[:5] == ["type", "room", "data", "client_id", "timestamp"]  # the guide's fields first
    plain = await client.subscribe("lobby")
    assert set(plain["data"]) == {"room", "client_count"}  # the guide's shape, unchanged
    message = (await publish_all(client, "lobby", range(1)))[0]
    assert set(message) == {"type", "room", "data", "client_id", "timestamp"}


async def test_a_client_recovers_what_it_missed_exactly_once_in_order(start: Start) -> None:
    server = await start()
    publisher, reader = await server.connect(), await server.connect()
    await publisher.subscribe("chat:1")
    subscribed = await reader.subscribe("chat:1")
    seen = await publish_all(publisher, "chat:1", range(10))
    last = [await reader.recv() for _ in range(10)][-1]
    await reader.ws.close()  # the network blips
    await publish_all(publisher, "chat:1", range(10, 510))
    again = await server.connect()
    since = {"offset": last["offset"], "epoch": last["epoch"]}
    answer = await again.request({"type": "subscribe", "room": "chat:1", "since": since})
    assert answer["data"] == {
        "room": "chat:1",
        "client_count": 2,
        "offset": 510,
        "epoch": seen[0]["epoch"],
        "recovered": True,
    }
    assert subscribed["data"]["epoch"] == ""  # it subscribed before the room had history
    missed = [await again.recv() for _ in range(500)]
    assert [m["data"] for m in missed] == list(range(10, 510))
    assert [m["offset"] for m in missed] == list(range(11, 511))
    await publish_all(publisher, "chat:1", range(510, 512))
    assert [(await again.recv())["data"] for _ in range(2)] == [510, 511]  # then live, no gap
    assert (await again.request({"type": "ping"}))["type"] == "pong"  # and nothing twice
    assert seen[0]["offset"] == 1


async def test_a_client_resumes_on_another_node(wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> None:
    """With Redis, every node sees the same history: miss 500 messages published on A, resume on B."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = await wsgate_server(broker=broker, history=HISTORY), await wsgate_server(broker=broker, history=HISTORY)
    publisher, reader = await a.connect(), await b.connect()
    await publisher.subscribe("chat:x")
    await reader.subscribe("chat:x")
    await publish_all(publisher, "chat:x", range(3))
    last = [await reader.recv() for _ in range(3)][-1]
    await reader.ws.close()
    await publish_all(publisher, "chat:x", range(3, 503))
    resumed = await b.connect()
    since = {"offset": last["offset"], "epoch": last["epoch"]}
    answer = await resumed.request({"type": "subscribe", "room": "chat:x", "since": since})
    assert (answer["data"]["recovered"], answer["data"]["offset"]) == (True, 503)
    assert [(await resumed.recv())["data"] for _ in range(500)] == list(range(3, 503))
    assert (await resumed.request({"type": "ping"}))["type"] == "pong"


async def test_recovery_is_refused_when_the_epoch_changed_or_history_was_trimmed(start: Start) -> None:
    server = await start(history={"rooms": ["chat:*"], "size": 5})
    client = await server.connect()
    await client.subscribe("chat:1")
    epoch = (await publish_all(client, "chat:1", range(20)))[0]["epoch"]
    other = await server.connect()
    for since in (
        {"offset": 2, "epoch": epoch},
        {"offset": 20, "epoch": "another-epoch"},
        {"offset": 99, "epoch": epoch},
    ):
        answer = await other.request({"type": "subscribe", "room": "chat:1", "since": since})
        assert (answer["data"]["recovered"], answer["data"]["offset"]) == (False, 20), since
        await other.request({"type": "unsubscribe", "room": "chat:1"})
    answer = await other.request({"type": "subscribe", "room": "chat:1", "since": {"offset": 15, "epoch": epoch}})
    assert answer["data"]["recovered"] is True  # 16..20 are still kept
    assert [(await other.recv())["offset"] for _ in range(5)] == [16, 17, 18, 19, 20]


async def test_history_returns_the_last_messages(start: Start) -> None:
    server = await start()
    client = await server.connect()
    await client.subscribe("chat:1")
    await publish_all(client, "chat:1", range(7))
    answer = await client.request({"type": "history", "room": "chat:1", "limit": 3})
    assert answer["type"] == "history" and answer["room"] == "chat:1"
    assert answer["data"]["offset"] == 7
    assert [(m["data"], m["offset"]) for m in answer["data"]["messages"]] == [(4, 5), (5, 6), (6, 7)]
    everything = await client.request({"type": "history", "room": "chat:1"})
    assert len(everything["data"]["messages"]) == 7
    fresh = await client.request({"type": "history", "room": "chat:empty"})  # not subscribed: allowed
    assert fresh["data"] == {"offset": 0, "epoch": "", "messages": []}  # and reading created nothing
    subscribed = await client.subscribe("chat:empty")
    assert (subscribed["data"]["offset"], subscribed["data"]["epoch"]) == (0, "")  # nor does subscribing


@pytest.mark.parametrize(
    ("request_", "error", "detail"),
    [
        ({"type": "history", "room": "lobby"}, "room has no history", "history.rooms does not include this room"),
        (
            {"type": "history", "room": "chat:1", "limit": 0},
            "invalid JSON format",
            "field 'limit' must be a positive integer",
        ),
        (
            {"type": "history", "room": "chat:1", "limit": "5"},
            "invalid JSON format",
            "field 'limit' must be a positive integer",
        ),
        ({"type": "history"}, "room name is required", None),
        (
            {"type": "subscribe", "room": "chat:1", "since": {"offset": -1, "epoch": "x"}},
            "invalid JSON format",
            'field \'since\' must be {"offset": <integer >= 0>, "epoch": <string>}',
        ),
        (
            {"type": "subscribe", "room": "chat:1", "since": {"offset": 10**30, "epoch": "x"}},
            "invalid JSON format",
            'field \'since\' must be {"offset": <integer >= 0>, "epoch": <string>}',
        ),
        (
            {"type": "subscribe", "room": "chat:1", "since": 5},
            "invalid JSON format",
            'field \'since\' must be {"offset": <integer >= 0>, "epoch": <string>}',
        ),
    ],
)
async def test_bad_history_requests(
    wsgate_server: StartServer, request_: dict[str, Any], error: str, detail: str | None
) -> None:
    server = await wsgate_server(history=HISTORY)
    client = await server.connect()
    answer = await client.request(request_)
    assert (answer["error"], answer.get("detail")) == (error, detail)
    assert not server.hub.rooms


async def test_since_on_a_room_without_history_is_not_recovered(wsgate_server: StartServer) -> None:
    client = await (await wsgate_server(history=HISTORY)).connect()
    answer = await client.request({"type": "subscribe", "room": "lobby", "since": {"offset": 3, "epoch": "e"}})
    assert answer["data"] == {"room": "lobby", "client_count": 1, "recovered": False}


async def test_replay_and_live_delivery_race_without_gap_or_duplicate(start: Start) -> None:
    """A publisher keeps publishing while a client re-subscribes with `since` again and again."""
    server = await start()
    publisher, reader = await server.connect(), await server.connect()
    await publisher.subscribe("chat:race")
    await reader.subscribe("chat:race")
    total = 600

    async def publish() -> None:
        for n in range(total):
            await publisher.send({"type": "publish", "room": "chat:race", "data": n})
            if n % 50 == 0:
                await asyncio.sleep(0)

    running = asyncio.create_task(publish())
    received: list[int] = []
    position: dict[str, Any] | None = None
    while len(received) < total:
        message = await reader.recv()
        if message["type"] == "message":
            received.append(message["data"])
            position = {"offset": message["offset"], "epoch": message["epoch"]}
        if len(received) % 97 == 0 and position is not None:  # reconnect, mid-stream, every so often
            await reader.ws.close()
            reader = await server.connect()
            answer = await reader.request({"type": "subscribe", "room": "chat:race", "since": position})
            assert answer["data"]["recovered"] is True
            position = None
    await running
    assert received == list(range(total))
    assert (await reader.request({"type": "ping"}))["type"] == "pong"


def test_memory_history_expires_and_starts_a_new_epoch() -> None:
    now = [0.0]
    store = MemoryHistory(HistorySettings(rooms=("*",), size=3, ttl=10.0), clock=lambda: now[0])
    assert (store.position("r"), len(store)) == (Position(0, ""), 0)  # reading creates nothing
    payloads = [store.append("r", b'{"type":"message","data":%d' % n) for n in range(5)]
    first = store.position("r")
    assert [stamp_of(p)[0] for p in payloads] == [1, 2, 3, 4, 5]
    assert store.last("r", 10)[1] == payloads[2:]  # size 3
    replay = store.replay("r", Position(2, first.epoch))
    assert (replay.recovered, replay.messages) == (True, payloads[2:])
    assert not store.replay("r", Position(1, first.epoch)).recovered  # offset 2 was trimmed
    now[0] = 9.0
    assert store.position("r") == Position(5, first.epoch)  # reading does not extend the history's life
    now[0] = 10.5
    assert len(store) == 1
    assert store.position("r") == Position(0, "")  # expired: the next message begins a new epoch
    assert stamp_of(renewed := store.append("r", b'{"n":1'))[0] == 1 and first.epoch.encode() not in renewed
    assert later_epoch(store.position("r").epoch, first.epoch)  # epochs sort by the time they began
    now[0] = 30.0
    store.position("other")  # sweeps
    assert len(store) == 0


def test_memory_history_keeps_at_most_max_rooms() -> None:
    """The security review: subscribing and publishing across distinct room names grew memory without bound."""
    store = MemoryHistory(HistorySettings(rooms=("*",), max_rooms=100))
    for n in range(1_000):
        store.append(f"hist:{n}", b'{"n":1')
        store.position(f"empty:{n}")  # reading rooms without history costs nothing
    assert len(store) == 100
    assert store.position("hist:999").offset == 1 and store.position("hist:0") == Position(0, "")  # oldest went


def test_a_client_that_subscribed_before_any_history_recovers_all_of_it() -> None:
    store = MemoryHistory(HistorySettings(rooms=("*",), size=3))
    since = store.position("r")
    assert since == Position(0, "") and store.replay("r", since).recovered  # still none: nothing missed
    payloads = [store.append("r", b'{"n":%d' % n) for n in range(3)]
    assert (store.replay("r", since).recovered, store.replay("r", since).messages) == (True, payloads)
    store.append("r", b'{"n":3')  # offset 1 trimmed: not all of it is kept any more
    assert not store.replay("r", since).recovered


def test_rooms_without_history_cost_a_falsy_check() -> None:
    assert not RoomPatterns(())
    assert not RoomPatterns(()).match("chat:1")
    rooms = RoomPatterns(("chat:*", "news"))
    assert rooms.match("chat:1") and rooms.match("news") and not rooms.match("newsroom") and not rooms.match(None)


async def test_lost_redis_history_starts_a_new_epoch(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    import redis.asyncio as aioredis

    server = await wsgate_server(broker={"url": redis_url, "prefix": broker_prefix}, history=HISTORY)
    client = await server.connect()
    await client.subscribe("chat:1")
    epoch = (await publish_all(client, "chat:1", range(3)))[0]["epoch"]
    redis = aioredis.from_url(redis_url)
    try:  # what a Redis restart without persistence, or an expiry, does
        assert await redis.delete(f"{broker_prefix}:history:chat:1:meta", f"{broker_prefix}:history:chat:1:stream") == 2
    finally:
        await redis.aclose()
    other = await server.connect()
    answer = await other.request({"type": "subscribe", "room": "chat:1", "since": {"offset": 3, "epoch": epoch}})
    assert answer["data"]["recovered"] is False
    assert (answer["data"]["offset"], answer["data"]["epoch"]) == (0, "")  # no history now, and none created
    message = (await publish_all(client, "chat:1", range(1)))[0]
    assert message["offset"] == 1 and message["epoch"] not in ("", epoch)
    assert later_epoch(message["epoch"], epoch) and not later_epoch(epoch, message["epoch"])  # by Redis's clock


async def test_a_burst_of_history_reads_queues_for_redis_connections(redis_url: str, broker_prefix: str) -> None:
    """300 subscribes to rooms with history at once must wait for pooled connections, not fail."""
    from wsgate.broker.redis import POOL_SIZE, RedisBroker
    from wsgate.config import BrokerSettings
    from wsgate.metrics import Metrics

    broker = RedisBroker(
        BrokerSettings(url=redis_url, prefix=broker_prefix), Metrics(), history=HistorySettings(rooms=("chat:*",))
    )
    await broker.start(lambda room, frame: 0)
    try:
        positions = await asyncio.gather(*(broker.history_position(f"chat:{n % 7}") for n in range(10 * POOL_SIZE)))
        assert set(positions) == {Position(0, "")}
        import redis.asyncio as aioredis

        redis = aioredis.from_url(redis_url)
        try:
            assert await redis.keys(f"{broker_prefix}:history:chat:*") == []  # reads left no key behind
        finally:
            await redis.aclose()
    finally:
        await broker.close()


async def test_while_redis_is_down_history_messages_are_refused_never_sent_with_a_gap(
    wsgate_server: StartServer, private_redis: Any, broker_prefix: str
) -> None:
    server = await wsgate_server(broker={"url": private_redis.url, "prefix": broker_prefix}, history=HISTORY)
    client, member = await server.connect(), await server.connect()
    await client.subscribe("chat:1")
    await member.subscribe("chat:1")
    assert (await publish_all(client, "chat:1", range(1)))[0]["offset"] == 1
    assert (await member.recv())["offset"] == 1
    await private_redis.stop()
    refused = await client.request({"type": "publish", "room": "chat:1", "data": 1})
    assert refused["error"] == "history is unavailable"  # the publisher is told; nobody got it without an offset
    assert refused["detail"].startswith("the message was not sent: ")
    assert (await member.request({"type": "ping"}))["type"] == "pong"  # nothing arrived before the pong
    answer = await client.request({"type": "history", "room": "chat:1"})
    assert (answer["error"], answer["detail"]) == (
        "history is unavailable",
        "the history store cannot be reached; try again",
    )
    assert server.metrics.error_count("history_unavailable") == 2


async def test_live_messages_held_for_a_recovering_client_are_bounded(wsgate_server: StartServer) -> None:
    """While a client's history is read its live messages wait, up to ten outboxes' worth; then it is dropped."""
    server = await wsgate_server(history=HISTORY, websocket={"send_queue_size": 2})
    client = await server.connect()
    conn = server.hub.connections[client.id]
    hub = server.hub
    hub.join(conn, "chat:h", hold=True)  # as subscribe does before reading the history
    for n in range(20):
        hub.deliver("chat:h", b'{"type":"message","room":"chat:h","data":%d,"offset":%d,"epoch":"e"}' % (n, n + 1))
    assert len(hub.holding["chat:h"][conn]) == 20  # nothing sent yet: all held, in order
    hub.deliver("chat:h", b'{"type":"message","room":"chat:h","data":20,"offset":21,"epoch":"e"}')
    closing = await client.ws.receive(timeout=5)
    assert (closing.data, closing.extra) == (1008, "slow consumer")
    assert server.metrics.error_count("slow_consumer") == 1


async def test_a_long_replay_over_a_compressed_connection_is_not_a_slow_consumer(wsgate_server: StartServer) -> None:
    server = await wsgate_server(history=HISTORY, websocket={"compression": True, "send_queue_size": 4})
    publisher = await server.connect()
    epoch = (await publisher.subscribe("chat:z"))["data"]["epoch"]
    for n in range(50):  # one at a time: the publisher's own outbox holds only 4
        await publisher.request({"type": "publish", "room": "chat:z", "data": n})
    reader = await server.connect(compress=15)
    answer = await reader.request({"type": "subscribe", "room": "chat:z", "since": {"offset": 0, "epoch": epoch}})
    assert answer["data"]["recovered"] is True
    assert [(await reader.recv())["data"] for _ in range(50)] == list(range(50))  # 50 frames, one outbox entry
    assert (await reader.request({"type": "ping"}))["type"] == "pong"


def test_an_offset_key_in_the_data_is_not_the_stamp() -> None:
    assert stamp_of(b'{"type":"message","data":{"kind":"page","offset":20},"timestamp":1}') is None
    assert stamp_of(b'{"type":"message","data":{"offset":999,"b":1},"timestamp":1}') is None
    assert stamp_of(b'{"type":"message","data":{"offset":5,"epoch":"ab"},"timestamp":1}') is None
    assert stamp_of(b'{"type":"message","data":{"offset":5},"timestamp":1,"offset":7,"epoch":"0a1b"}') == (7, "0a1b")


async def test_a_fenced_client_still_gets_messages_without_a_stamp(wsgate_server: StartServer) -> None:
    """Messages delivered while Redis is down carry no offset; one whose data has an "offset" key must pass."""
    server = await wsgate_server(history=HISTORY)
    client = await server.connect()
    await client.subscribe("chat:f")
    hub, conn = server.hub, server.hub.connections[client.id]
    hub.fences["chat:f"] = {conn: Position(50, "e1")}  # as after a recovery up to offset 50
    hub.deliver("chat:f", b'{"type":"message","room":"chat:f","data":{"offset":20},"timestamp":1}')
    assert (await client.recv())["data"] == {"offset": 20}


async def test_a_fenced_client_gets_the_messages_of_a_history_that_began_again(wsgate_server: StartServer) -> None:
    """The client read up to (5, e1); Redis then lost the history, which began again as e2: e2's offsets 1
    to 5 are new to the client, while e1's are what it has read."""
    server = await wsgate_server(history=HISTORY)
    client = await server.connect()
    await client.subscribe("chat:f")
    hub, conn = server.hub, server.hub.connections[client.id]
    hub.fences["chat:f"] = {conn: Position(5, "e1")}
    hub.deliver("chat:f", stamp(b'{"type":"message","room":"chat:f","data":"read"', 4, "e1"))
    hub.deliver("chat:f", stamp(b'{"type":"message","room":"chat:f","data":"new"', 2, "e2"))
    assert (await client.recv())["data"] == "new"


async def test_a_late_message_of_an_earlier_epoch_leaves_a_fence_standing(wsgate_server: StartServer) -> None:
    """Found in review: the client read up to (10, e2); a late message of e1 goes to everyone, and what the
    client read (e2's 9 and 10, still on their way) stays fenced off."""
    server = await wsgate_server(history=HISTORY)
    client = await server.connect()
    await client.subscribe("chat:f")
    hub, conn = server.hub, server.hub.connections[client.id]
    hub.fences["chat:f"] = {conn: Position(10, "e2")}
    for data, offset, epoch in ((70, 7, "e1"), (9, 9, "e2"), (10, 10, "e2"), (11, 11, "e2")):
        hub.deliver("chat:f", stamp(b'{"type":"message","room":"chat:f","data":%d' % data, offset, epoch))
    assert [(await client.recv())["data"] for _ in range(2)] == [70, 11]


def test_what_comes_after_a_read_position() -> None:
    """A message held while the history was read goes out when the read did not include it (gateway.subscribe)."""
    read = Position(5, "e1")
    assert not comes_after(stamp(b'{"n":1', 5, "e1"), read)
    assert comes_after(stamp(b'{"n":1', 6, "e1"), read)
    assert comes_after(stamp(b'{"n":1', 2, "e2"), read)  # the history began again after the read
    assert comes_after(b'{"n":1,"data":{"offset":1}}', read)  # no stamp: never in the history


async def test_history_survives_redis_forgetting_its_scripts(
    wsgate_server: StartServer, private_redis: Any, broker_prefix: str
) -> None:
    """Scripts run by SHA; after SCRIPT FLUSH (what a Redis restart does) they are loaded again, nothing lost."""
    import redis.asyncio as aioredis

    server = await wsgate_server(broker={"url": private_redis.url, "prefix": broker_prefix}, history=HISTORY)
    client = await server.connect()
    await client.subscribe("chat:s")
    assert (await publish_all(client, "chat:s", range(1)))[0]["offset"] == 1
    redis = aioredis.from_url(private_redis.url)
    try:
        await redis.script_flush()
    finally:
        await redis.aclose()
    assert [m["offset"] for m in await publish_all(client, "chat:s", range(1, 4))] == [2, 3, 4]


BIG = "x" * 100_000  # the security review's input: 100 messages of 100 KB


async def fill(server: Server, room: str, count: int, data: str = BIG) -> None:
    """Keep `count` messages of about `len(data)` bytes in `room`, numbered from 0."""
    for n in range(count):
        await server.gateway.publish(room, [n, data])


async def test_a_history_answer_holds_the_newest_messages_that_fit_and_pages_back(start: Start) -> None:
    server = await start(history={"rooms": ["chat:*"], "size": 100})
    await fill(server, "chat:big", 100)
    client = await server.connect(max_msg_size=0)
    answer = (await client.request({"type": "history", "room": "chat:big"}))["data"]
    newest = [m["data"][0] for m in answer["messages"]]
    assert newest == list(range(100 - len(newest), 100)) and len(newest) == 10  # 1 MiB: the newest ten of 100 KB
    assert answer["offset"] == 100
    pages, before = [newest], answer["messages"][0]["offset"]
    while True:  # back to the oldest, one answer of at most history.max_answer_bytes at a time
        page = (await client.request({"type": "history", "room": "chat:big", "before": before}))["data"]["messages"]
        if not page:
            break
        assert all(m["offset"] < before for m in page) and len(page) <= 10
        pages.insert(0, [m["data"][0] for m in page])
        before = page[0]["offset"]
    assert [n for page in pages for n in page] == list(range(100))  # every message once, in order
    small = (await client.request({"type": "history", "room": "chat:big", "limit": 3, "before": 50}))["data"]
    assert [m["offset"] for m in small["messages"]] == [47, 48, 49]


@pytest.mark.parametrize("before", [0, -1, 1.5, "3", True, 2**53 + 1])
async def test_history_before_must_be_an_offset(wsgate_server: StartServer, before: object) -> None:
    client = await (await wsgate_server(history=HISTORY)).connect()
    reply = await client.request({"type": "history", "room": "chat:1", "before": before})
    assert (reply["error"], reply["detail"]) == (
        "invalid JSON format",
        "field 'before' must be a positive integer (an offset)",
    )


async def test_a_message_larger_than_an_answer_still_comes_alone(start: Start) -> None:
    """Paging always moves on: the newest message is in the answer even when it alone is over the bound."""
    server = await start(history={"rooms": ["chat:*"], "max_answer_bytes": 1024})
    await fill(server, "chat:wide", 3, data="y" * 2000)
    client = await server.connect()
    answer = (await client.request({"type": "history", "room": "chat:wide"}))["data"]["messages"]
    assert [m["data"][0] for m in answer] == [2]


async def test_a_recovery_larger_than_an_answer_is_not_recovered(start: Start) -> None:
    """`subscribe` with `since` replays at most history.max_answer_bytes; more answers recovered: false."""
    server = await start(history={"rooms": ["chat:*"], "size": 100})
    client = await server.connect(max_msg_size=0)
    epoch = (await client.subscribe("chat:r"))["data"]["epoch"]
    await fill(server, "chat:r", 1)
    epoch = (await client.recv())["epoch"]
    await fill(server, "chat:r", 9)  # 1 MB after offset 1: fits
    reader = await server.connect(max_msg_size=0)
    fits = await reader.request({"type": "subscribe", "room": "chat:r", "since": {"offset": 1, "epoch": epoch}})
    assert fits["data"]["recovered"] is True
    assert [(await reader.recv())["offset"] for _ in range(9)] == list(range(2, 11))
    await fill(server, "chat:r", 5)
    late = await server.connect()
    over = await late.request({"type": "subscribe", "room": "chat:r", "since": {"offset": 1, "epoch": epoch}})
    assert (over["data"]["recovered"], over["data"]["offset"]) == (False, 15)
    assert (await late.request({"type": "ping"}))["type"] == "pong"  # nothing replayed before the pong


async def test_history_answers_count_against_the_byte_rate(wsgate_server: StartServer) -> None:
    server = await wsgate_server(history={"rooms": ["chat:*"]}, websocket={"limits": {"bytes_per_second": 100_000}})
    await fill(server, "chat:rate", 5)  # 500 KB kept
    client = await server.connect(max_msg_size=0)
    first = await client.request({"type": "history", "room": "chat:rate"})
    assert len(first["data"]["messages"]) == 5
    again = await client.request({"type": "history", "room": "chat:rate"})  # 39 bytes, but 500 KB owed
    assert again["error"] == "rate limit exceeded"


async def test_live_messages_held_for_a_recovering_client_are_bounded_in_bytes(wsgate_server: StartServer) -> None:
    """What is held leaves room for the replay it goes out with (history.max_answer_bytes, and a frame head for
    each of history.size messages), so that the two together fit in send_queue_bytes."""
    server = await wsgate_server(
        history={**HISTORY, "max_answer_bytes": 32_768},
        presence={"max_answer_bytes": 32_768},
        websocket={"send_queue_bytes": 65_536, "max_message_size": 32_768},
    )
    client = await server.connect()
    conn = server.hub.connections[client.id]
    hub = server.hub
    hub.join(conn, "chat:b", hold=True, replay=True)  # as subscribe with `since` does before reading the history
    message = b'{"type":"message","room":"chat:b","data":"%s","offset":%d,"epoch":"e"}'
    for n in range(20):  # 22 KB: held
        hub.deliver("chat:b", message % (b"x" * 1000, n + 1))
    assert len(hub.holding["chat:b"][conn]) == 20 and conn.state.value == "open"
    for n in range(20, 30):  # past 64 KiB with the replay's room
        hub.deliver("chat:b", message % (b"x" * 1000, n + 1))
    closing = await client.ws.receive(timeout=5)
    assert (closing.data, closing.extra) == (1008, "slow consumer")
    assert server.metrics.error_count("slow_consumer") == 1
