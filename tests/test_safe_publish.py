"""Safer publishes (issue 24 item 5): `"skip_self": true` and `idempotency_key`, over real connections,
with the memory broker and with two nodes on Redis, in rooms with and without history."""

from __future__ import annotations

from typing import Any

import pytest

from wsgate.broker.memory import RecentKeys
from wsgate.testing import Peer, Server, StartServer, eventually

from .conftest import PrivateRedis
from .test_auth import NO_EXAMPLE_AUTH, SECRET, bearer, token
from .test_publish_outcome import STALL, Stall, stall  # noqa: F401 (the fixture)

HISTORY = {"rooms": ["kept:*"], "size": 100}
KEY = "test-api-key"


async def nothing_more(client: Peer) -> None:
    """Nothing is waiting for `client` before the pong to a ping sent now (what was queued comes first)."""
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong", reply


async def received(client: Peer, data: Any) -> dict[str, Any]:
    """`client`'s next message carries `data`, and nothing else follows it."""
    message = await client.recv()
    assert (message["type"], message.get("data")) == ("message", data), message
    await nothing_more(client)
    return message


async def joined(server: Server, room: str, **kwargs: Any) -> Peer:
    client = await server.connect(**kwargs)
    await client.subscribe(room)
    return client


# --- skip_self ------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["plain:1", "kept:1"])
async def test_skip_self_leaves_out_only_the_senders_connection(wsgate_server: StartServer, room: str) -> None:
    """Another connection of the same user still gets it; in a room with history it is kept as usual."""
    server = await wsgate_server(auth={"jwt": {"secret": SECRET}}, plugins=NO_EXAMPLE_AUTH, history=HISTORY)
    sender, same_user = [await joined(server, room, **bearer(token("alice"))) for _ in range(2)]
    other = await joined(server, room, **bearer(token("bob")))
    await sender.send({"type": "publish", "room": room, "data": "hi", "skip_self": True})
    await nothing_more(sender)
    for client in (same_user, other):
        message = await received(client, "hi")
        assert message["client_id"] == sender.id
    if room.startswith("kept:"):
        history = await sender.request({"type": "history", "room": room})
        assert [m["data"] for m in history["data"]["messages"]] == ["hi"]
        assert message["offset"] == 1


async def test_skip_self_on_broadcast_leaves_out_only_the_sender(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    sender, other = await server.connect(), await server.connect()
    await sender.send({"type": "broadcast", "data": "all", "skip_self": True})
    await nothing_more(sender)
    assert "room" not in await received(other, "all")


@pytest.mark.parametrize("skip_self", [None, False])
async def test_without_skip_self_or_false_the_sender_gets_the_same_bytes_as_before(
    wsgate_server: StartServer, skip_self: bool | None
) -> None:
    server = await wsgate_server()
    sender = await joined(server, "plain:2")
    publish: dict[str, Any] = {"type": "publish", "room": "plain:2", "data": {"n": 1}}
    if skip_self is not None:
        publish["skip_self"] = skip_self
    await sender.send(publish)
    raw = (await sender.ws.receive()).data
    head = '{"type":"message","room":"plain:2","data":{"n":1},"client_id":"' + sender.id + '","timestamp":'
    assert raw.startswith(head), raw
    await nothing_more(sender)


@pytest.mark.parametrize("value", [1, "yes", None])
async def test_skip_self_must_be_a_boolean(wsgate_server: StartServer, value: Any) -> None:
    server = await wsgate_server()
    sender = await joined(server, "plain:3")
    for message in ({"type": "publish", "room": "plain:3"}, {"type": "broadcast"}):
        error = await sender.request({**message, "data": 1, "skip_self": value})
        assert (error["error"], error["detail"]) == ("invalid JSON format", "field 'skip_self' must be true or false")
    await nothing_more(sender)


@pytest.mark.parametrize("room", ["plain:4", "kept:4"])
async def test_skip_self_across_two_nodes_skips_only_the_sender(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str, room: str
) -> None:
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    sender, beside, far = await joined(a, room), await joined(a, room), await joined(b, room)
    await sender.send({"type": "publish", "room": room, "data": "x", "skip_self": True})
    await sender.send({"type": "broadcast", "data": "y", "skip_self": True})
    await nothing_more(sender)
    for client in (beside, far):
        first, second = await client.recv(), await client.recv()
        assert (first["data"], second["data"]) == ("x", "y")
        if room.startswith("kept:"):
            assert first["offset"] == 1
        await nothing_more(client)


# --- idempotency_key ------------------------------------------------------------------------


def keyed(room: str, data: Any, key: str, **more: Any) -> dict[str, Any]:
    return {"type": "publish", "room": room, "data": data, "idempotency_key": key, **more}


@pytest.mark.parametrize("room", ["plain:5", "kept:5"])
async def test_a_retry_with_the_same_key_is_answered_like_the_first_and_delivered_once(
    wsgate_server: StartServer, room: str
) -> None:
    server = await wsgate_server(history=HISTORY)
    sender, member = await joined(server, room), await joined(server, room)
    first = await sender.request(keyed(room, "once", "k-1"))
    again = await sender.request(keyed(room, "once", "k-1"))
    assert again == first  # the same message: same timestamp, and the same offset in a room with history
    await nothing_more(sender)
    await received(member, "once")
    if room.startswith("kept:"):
        assert first["offset"] == 1
        history = await member.request({"type": "history", "room": room})
        assert [m["data"] for m in history["data"]["messages"]] == ["once"]  # kept once


async def test_keys_are_scoped_per_room(wsgate_server: StartServer) -> None:
    server = await wsgate_server(history=HISTORY)
    sender = await server.connect()
    for room in ("plain:6", "plain:7", "kept:6", "kept:7"):
        await sender.subscribe(room)
        assert (await sender.request(keyed(room, room, "same")))["data"] == room
    await nothing_more(sender)


@pytest.mark.parametrize("key", ["", "x" * 129, 7, None, ["k"]])
async def test_an_idempotency_key_is_a_string_of_1_to_128_characters(wsgate_server: StartServer, key: Any) -> None:
    server = await wsgate_server()
    sender = await joined(server, "plain:8")
    error = await sender.request(keyed("plain:8", 1, key))
    if key is None:  # null is the field's absence
        assert error["type"] == "message", error
        return
    assert (error["error"], error["detail"]) == (
        "invalid JSON format",
        "field 'idempotency_key' must be a string of 1 to 128 characters",
    )
    assert (await sender.request(keyed("plain:8", 2, "x" * 128)))["data"] == 2


async def test_the_http_api_takes_a_key_and_answers_a_retry_as_a_duplicate(wsgate_server: StartServer) -> None:
    server = await wsgate_server(history=HISTORY, api={"key": KEY})
    member = await joined(server, "kept:9")
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"room": "kept:9", "data": "api", "idempotency_key": "order-42"}
    answers = []
    for _ in range(2):
        async with server.session.post(server.url("/api/publish"), json=body, headers=headers) as resp:
            answers.append((resp.status, await resp.json()))
    assert answers == [(200, {"delivered": 1}), (200, {"delivered": 0, "duplicate": True})]
    assert (await received(member, "api"))["offset"] == 1
    async with server.session.post(
        server.url("/api/publish"), json={**body, "idempotency_key": ""}, headers=headers
    ) as resp:
        assert (resp.status, await resp.json()) == (
            400,
            {
                "error": "invalid JSON format",
                "detail": "field 'idempotency_key' must be a string of 1 to 128 characters",
            },
        )


@pytest.mark.parametrize("room", ["plain:10", "kept:10"])
async def test_a_retry_sent_to_the_other_node_is_delivered_once(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str, room: str
) -> None:
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    on_a, on_b = await joined(a, room), await joined(b, room)
    first = await on_a.request(keyed(room, "across", "k-2"))
    await received(on_b, "across")
    again = await on_b.request(keyed(room, "across", "k-2"))  # the retry, on the other node
    assert again == first
    for client in (on_a, on_b):
        await nothing_more(client)
    other_room = room + "-b"
    for client in (on_a, on_b):
        await client.subscribe(other_room)
    assert (await on_a.request(keyed(other_room, "other", "k-2")))["data"] == "other"  # another room: its own
    assert (await on_b.recv())["data"] == "other"


def test_the_memory_map_is_bounded_in_keys_bytes_and_time() -> None:
    now = [0.0]
    keys = RecentKeys(window=300.0, max_keys=3, max_bytes=100, clock=lambda: now[0])
    for n in range(5):
        keys.remember("r", f"k{n}", b"m")
    assert len(keys) == 3 and keys.first("r", "k0") is None and keys.first("r", "k4") == b"m"
    keys.remember("r", "big", b"x" * 90)  # the bytes bound: older entries go first
    assert keys.size <= 100 and keys.first("r", "big") == b"x" * 90 and keys.first("r", "k2") is None
    keys.remember("r", "huge", b"x" * 200)  # larger than the whole bound: not remembered
    assert keys.first("r", "huge") is None and keys.size <= 100
    now[0] = 301.0
    assert keys.first("r", "big") is None  # past the window
    keys.remember("s", "k", b"m")
    assert len(keys) == 1 and keys.size == len("s") + len("k") + 1  # expired ones went as a new one came


@pytest.mark.slow  # a Redis stall waited out
@pytest.mark.parametrize("room", ["plain:11", "kept:11"])
async def test_a_retry_after_an_unknown_outcome_is_delivered_once(
    wsgate_server: StartServer,
    private_redis: PrivateRedis,
    broker_prefix: str,
    stall: Stall,  # noqa: F811 (the fixture)
    room: str,
) -> None:
    """The publish goes into a stalled Redis (outcome unknown); the publisher retries with its key once Redis
    answers again, on the other node: every member gets the message once, and the retry is answered with it."""
    broker = {"url": private_redis.url, "prefix": broker_prefix, "connect_timeout": "1s"}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    sender, member_a, member_b = await joined(a, room), await joined(a, room), await joined(b, room)
    await stall.begin(STALL)
    answer = await sender.request(keyed(room, "during", "k-3"))
    assert answer["error"] == "publish outcome unknown", answer
    await stall.end()
    first = await sender.recv()  # Redis ran it when it woke: the sender's node delivers it, once
    assert first["data"] == "during", first
    await eventually(lambda: a.broker.state == "ok")
    retry = await b.connect()
    await retry.subscribe(room)
    assert await retry.request(keyed(room, "during", "k-3")) == first
    for client in (member_a, member_b):
        assert (await received(client, "during")) == first
    await nothing_more(sender)
