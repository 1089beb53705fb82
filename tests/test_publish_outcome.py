"""What a publisher is told matches what happened (DESIGN "The fault model"; issue 21 part 2 item 1).

"not sent" (`history is unavailable`, detail "the message was not sent: ...") only when nobody got the
message; `publish outcome unknown` when Redis took the command and did not answer in time. A message Redis
kept reaches every member on every node exactly once, the publisher's own node included, and is kept once.
Each test runs a private redis-server that it stalls with DEBUG SLEEP (never the shared one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from wsgate.sdk.client import TRANSIENT
from wsgate.sdk.publisher import HttpPublisher, PublishError, PublishOutcomeUnknown, RedisPublisher
from wsgate.testing import TIMEOUT, Peer, Server, StartServer, eventually

from .conftest import PrivateRedis

pytestmark = pytest.mark.slow  # Redis stalls waited out

HISTORY = {"rooms": ["chat:*"], "size": 100}
KEY = "test-api-key"
STALL = 2.5  # seconds Redis sleeps: longer than broker.connect_timeout (1s), shorter than the answer's wait
# The subscription's probe (every 5 s by default) off: its command, caught in a stall, would take the pool's
# one idle connection and put a publish behind a new connection's set-up, "not sent" instead of "unknown"
NO_PROBE = {"probe_interval": "1h"}


class Stall:
    """DEBUG SLEEP on a connection of its own (a task), and a way to wait until Redis no longer answers."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.task: asyncio.Task[Any] | None = None

    async def begin(self, seconds: float) -> None:
        """Start the stall and return once Redis has stopped answering (a PING left unanswered for 50 ms)."""
        sleeper = aioredis.from_url(self._url)
        await sleeper.ping()

        async def sleep() -> None:
            try:
                await sleeper.execute_command("DEBUG", "SLEEP", seconds)
            finally:
                await sleeper.aclose()

        self.task = asyncio.create_task(sleep())
        prober = aioredis.from_url(self._url)
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    try:
                        async with asyncio.timeout(0.05):
                            await prober.ping()
                    except TimeoutError:
                        return  # Redis is asleep
        finally:
            await prober.aclose()

    async def end(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, TIMEOUT)


@pytest.fixture
async def stall(private_redis: PrivateRedis) -> AsyncIterator[Stall]:
    s = Stall(private_redis.url)
    yield s
    if s.task is not None and not s.task.done():
        await asyncio.wait({s.task}, timeout=TIMEOUT)


async def two_nodes(wsgate_server: StartServer, url: str, prefix: str) -> tuple[Server, Server]:
    broker = {"url": url, "prefix": prefix, "connect_timeout": "1s", **NO_PROBE}
    a = await wsgate_server(broker=broker, history=HISTORY, api={"key": KEY})
    b = await wsgate_server(broker=broker, history=HISTORY, api={"key": KEY})
    return a, b


async def received_once(client: Peer, data: Any) -> None:
    """`client`'s next message is `data`, and nothing else comes before the pong to a ping sent after it."""
    first = await client.recv()
    assert first.get("data") == data, first
    await client.send({"type": "ping"})
    more = []
    while (msg := await client.recv())["type"] != "pong":
        more.append(msg)
    assert more == [], more


async def kept(url: str, prefix: str, room: str) -> list[bytes]:
    redis = aioredis.from_url(url)
    try:
        return [fields[b"p"] for _, fields in await redis.xrange(f"{prefix}:history:{room}:stream")]
    finally:
        await redis.aclose()


async def test_a_publish_into_a_stalled_redis_is_unknown_kept_once_and_reaches_every_node(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, stall: Stall
) -> None:
    """The handed input: two nodes, connect_timeout 1s, Redis sleeps 2.5 s, a client publishes into the stall."""
    a, b = await two_nodes(wsgate_server, private_redis.url, broker_prefix)
    publisher, member_a, member_b = await a.connect(), await a.connect(), await b.connect()
    for client in (publisher, member_a, member_b):
        await client.subscribe("chat:1")
    await stall.begin(STALL)
    answer = await publisher.request({"type": "publish", "room": "chat:1", "data": "during"})
    assert answer["type"] == "error", answer
    if answer["error"] in TRANSIENT:  # what a client does with a temporary refusal: it publishes again
        await publisher.send({"type": "publish", "room": "chat:1", "data": "during"})
    assert (answer["error"], answer["detail"].split(":")[0]) == (
        "publish outcome unknown",
        "the message may have been kept and delivered",
    ), answer  # not "not sent": Redis has the command and runs it when it wakes
    assert a.broker.state == "degraded"  # (said once in the log, with the reason)
    await stall.end()
    for client in (publisher, member_a, member_b):  # the publisher's own node too, without a later message
        await received_once(client, "during")
    assert len(await kept(private_redis.url, broker_prefix, "chat:1")) == 1
    assert a.metrics.error_count("publish_outcome_unknown") == 1
    await eventually(lambda: a.broker.state == "ok")  # Redis answered: publishing works again
    after = await publisher.request({"type": "publish", "room": "chat:1", "data": "after"})
    assert (after["data"], after["offset"]) == ("after", 2)  # publishing works again, offsets contiguous
    assert (await member_b.recv())["offset"] == 2


async def test_the_http_api_during_a_stall_answers_504_outcome_unknown_and_delivers_once(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, stall: Stall
) -> None:
    a, b = await two_nodes(wsgate_server, private_redis.url, broker_prefix)
    member_a, member_b = await a.connect(), await b.connect()
    for client in (member_a, member_b):
        await client.subscribe("chat:2")
    http = HttpPublisher(str(a.url("")), KEY, session=a.session)
    await stall.begin(STALL)
    with pytest.raises(PublishOutcomeUnknown) as raised:
        await http.publish("chat:2", {"id": 1})
    assert raised.value.status == 504
    assert str(raised.value) == "publish outcome unknown"
    await stall.end()
    for client in (member_a, member_b):
        await received_once(client, {"id": 1})
    assert len(await kept(private_redis.url, broker_prefix, "chat:2")) == 1


async def test_a_publish_refused_before_anything_was_written_is_not_sent(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, stall: Stall
) -> None:
    """While a batch is overdue, later publishes are never written: they are told "not sent", and nobody gets them."""
    a, b = await two_nodes(wsgate_server, private_redis.url, broker_prefix)
    publisher, member_b = await a.connect(), await b.connect()
    await publisher.subscribe("chat:3")
    await member_b.subscribe("chat:3")
    await stall.begin(STALL)
    first = await publisher.request({"type": "publish", "room": "chat:3", "data": 1})
    assert first["error"] == "publish outcome unknown"
    second = await publisher.request({"type": "publish", "room": "chat:3", "data": 2})
    assert second["error"] == "history is unavailable"
    assert second["detail"].startswith("the message was not sent: ")
    await stall.end()
    await received_once(publisher, 1)
    await received_once(member_b, 1)  # 2 was told "not sent": nobody got it
    assert len(await kept(private_redis.url, broker_prefix, "chat:3")) == 1


async def test_redis_publisher_in_a_stall_is_unknown_for_what_it_wrote_and_not_sent_for_the_rest(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, stall: Stall
) -> None:
    """RedisPublisher(timeout=1): what it wrote on its open connections (a room with history, a plain room) is
    unknown and delivered once when Redis wakes; a publish that cannot even connect is not sent."""
    a, b = await two_nodes(wsgate_server, private_redis.url, broker_prefix)
    member_a, member_b = await a.connect(), await b.connect()
    for client in (member_a, member_b):
        await client.subscribe("chat:4")
        await client.subscribe("plain")
    publisher = RedisPublisher(private_redis.url, prefix=broker_prefix, timeout=1.0)
    try:
        both = await asyncio.gather(publisher.publish("chat:4", "w1"), publisher.publish("plain", "w2"))
        assert both == [2, 2]  # (and two connections open in its pool)
        for client in (member_a, member_b):
            assert sorted([str((await client.recv())["data"]), str((await client.recv())["data"])]) == ["w1", "w2"]
        await stall.begin(3.5)
        during = await asyncio.gather(
            publisher.publish("chat:4", "kept"), publisher.publish("plain", "relayed"), return_exceptions=True
        )
        assert [type(e) for e in during] == [PublishOutcomeUnknown, PublishOutcomeUnknown], during
        assert all(isinstance(e, PublishError) and e.status == 504 for e in during)
        with pytest.raises(PublishError) as refused:  # its connections were closed; a new one cannot connect
            await publisher.publish("chat:4", "never")
        assert type(refused.value) is PublishError and refused.value.status == 503
        await stall.end()
        for client in (member_a, member_b):
            assert sorted([str((await client.recv())["data"]), str((await client.recv())["data"])]) == [
                "kept",
                "relayed",
            ]
            assert (await client.request({"type": "ping"}))["type"] == "pong"  # "never" reached nobody
        assert len(await kept(private_redis.url, broker_prefix, "chat:4")) == 2
    finally:
        await publisher.close()


async def test_the_publish_script_runs_a_message_id_once(redis_url: str, broker_prefix: str) -> None:
    """A second run of the same message id (a retry whose first answer was lost) keeps and relays nothing,
    and is answered as the first: offset, epoch and receivers."""
    from wsgate.broker.redis_schema import PUBLISH_SCRIPT, RedisNames, new_message_id, publish_args

    names = RedisNames(broker_prefix)
    redis = aioredis.from_url(redis_url)
    listener = redis.pubsub()
    try:
        await listener.subscribe(names.channel("chat:5"))
        keys = names.publish_keys("chat:5", new_message_id())
        args = publish_args(b'{"type":"message","room":"chat:5","data":1', 10, 60, names.channel("chat:5"), b"s" * 32)
        first = await redis.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
        again = await redis.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
        other = names.publish_keys("chat:5", new_message_id())
        third = await redis.eval(PUBLISH_SCRIPT, len(other), *other, *args)
        assert (first[0], first[2], first[3]) == (1, 1, 0)
        assert again == [1, first[1], 1, 1]  # the first run's answer, marked as a second run
        assert third[0] == 2  # another id is another message
        assert len(await kept(redis_url, broker_prefix, "chat:5")) == 2
        relayed = []
        async with asyncio.timeout(TIMEOUT):
            while len(relayed) < 2:
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
                if message is not None:
                    relayed.append(message["data"])
        assert [m.count(b'"offset":') for m in relayed] == [1, 1] and b'"offset":2' in relayed[1]
    finally:
        await listener.aclose()
        await redis.aclose()
