"""A client's publishes to rooms with history overlap (issue 25, item 5: cross-node history).

A publish to a room with history waits for Redis's answer (its offset). Its place in every order is fixed before
that wait (`Router.begin`), so the client's next message is read meanwhile: up to `OVERLAP` of its publishes are
pending at once. Anything else it sends waits for them (`Connection.settled`), so what a client sees is what it
saw when each publish was awaited: its own copies, then the answer to its next request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from wsgate.clients import GatewayConnection
from wsgate.connection import OVERLAP
from wsgate.testing import TIMEOUT, Peer, Server, StartServer, eventually

from .conftest import PrivateRedis

HISTORY = {"rooms": ["kept:*"], "size": 1000}


async def joined(server: Server, room: str) -> Peer:
    peer = await server.connect()
    await peer.subscribe(room)
    return peer


async def test_a_clients_publishes_to_a_room_with_history_overlap_in_order_on_every_node(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    sender, member_b = await joined(a, "kept:1"), await joined(b, "kept:1")
    conn = a.hub.connections[sender.id]
    for n in range(100):
        await sender.send({"type": "publish", "room": "kept:1", "data": n})
    await sender.send({"type": "unsubscribe", "room": "kept:1", "id": "after"})  # waits for the 100
    for peer in (sender, member_b):
        got = [await peer.recv() for _ in range(100)]
        assert [m["data"] for m in got] == list(range(100))
        assert [m["offset"] for m in got] == list(range(1, 101))
    answer = await sender.recv()
    assert (answer["type"], answer.get("id")) == ("unsubscribed", "after")
    assert not conn.overlapping


async def test_a_publish_whose_outcome_is_an_error_is_answered_with_its_own_request_id(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """Redis refuses the room's history keys (WRONGTYPE): each overlapping publish is answered `history
    unavailable` with its own id, in the order sent, and the next request after them."""
    import redis.asyncio as aioredis

    broker = {"url": redis_url, "prefix": broker_prefix}
    server = await wsgate_server(broker=broker, history=HISTORY)
    sender = await joined(server, "kept:2")
    store: Any = aioredis.from_url(redis_url)
    try:
        for key in await store.keys(f"{broker_prefix}*kept:2*"):
            await store.delete(key)
        names = server.broker._names.history_keys("kept:2")  # type: ignore[attr-defined]
        for key in names:
            await store.set(key, "not a history")
        for n in range(5):
            await sender.send({"type": "publish", "room": "kept:2", "data": n, "id": f"p{n}"})
        await sender.send({"type": "ping", "id": "last"})
        answers = [await sender.recv() for _ in range(6)]
        assert [(m["type"], m.get("id")) for m in answers] == [("error", f"p{n}") for n in range(5)] + [
            ("pong", "last")
        ]
    finally:
        for key in await store.keys(f"{broker_prefix}*"):
            await store.delete(key)
        await store.aclose()


async def leave_with_publishes_pending(server: Server, redis_url: str, sender: Peer, room: str) -> None:
    """`sender` publishes OVERLAP messages to `room` while Redis holds every script (CLIENT PAUSE WRITE), then
    closes once all are read and none answered; Redis answers once its connection has ended."""
    import redis.asyncio as aioredis

    conn = server.hub.connections[sender.id]
    control: Any = aioredis.from_url(redis_url)
    try:
        await control.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        for n in range(OVERLAP):
            await sender.send({"type": "publish", "room": room, "data": n})
        await eventually(lambda: conn.overlapping == OVERLAP)  # all read, none answered
        await sender.ws.close()
        await asyncio.wait_for(conn.closed.wait(), TIMEOUT)  # ended, its publishes still pending
        assert conn.overlapping == 0
    finally:
        await control.execute_command("CLIENT", "UNPAUSE")
        await control.aclose()


async def test_a_client_that_leaves_with_publishes_pending_leaves_them_to_the_room_and_nothing_behind(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its socket goes while its publishes wait for Redis: the room's members on both nodes still get every one,
    in order, once Redis answers, and nothing holds its connection after that, no error logged."""
    broker = {"url": private_redis.url, "prefix": broker_prefix, "connect_timeout": "30s"}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    sender, member_a, member_b = await joined(a, "kept:3"), await joined(a, "kept:3"), await joined(b, "kept:3")
    await leave_with_publishes_pending(a, private_redis.url, sender, "kept:3")
    for peer in (member_a, member_b):
        assert [(await peer.recv())["data"] for _ in range(OVERLAP)] == list(range(OVERLAP))
    gc.collect()  # (answered: its futures' callbacks let it go)
    assert not [o for o in gc.get_objects() if type(o) is GatewayConnection and o.id == sender.id]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_client_that_leaves_with_publishes_pending_is_not_answered_their_errors(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses them (WRONGTYPE) after the client has gone: none is answered or counted as answered, and
    nothing is logged as an error."""
    import redis.asyncio as aioredis

    broker = {"url": private_redis.url, "prefix": broker_prefix, "connect_timeout": "30s"}
    server = await wsgate_server(broker=broker, history=HISTORY)
    sender, member = await joined(server, "kept:4"), await joined(server, "kept:4")
    store: Any = aioredis.from_url(private_redis.url)
    try:
        for key in server.broker._names.history_keys("kept:4"):  # type: ignore[attr-defined]
            await store.set(key, "not a history")
    finally:
        await store.aclose()
    refused = server.metrics.error_count("history_unavailable")
    await leave_with_publishes_pending(server, private_redis.url, sender, "kept:4")
    # the member's publish is refused after them (Redis answers in order): by its answer, theirs have come
    answer = await member.request({"type": "publish", "room": "kept:4", "data": "after", "id": "after"})
    assert (answer["type"], answer["error"], answer.get("id")) == ("error", "history is unavailable", "after"), answer
    assert server.metrics.error_count("history_unavailable") == refused + 1  # the member's alone
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_publish_delivered_at_once_leaves_nothing_pending(wsgate_server: StartServer) -> None:
    """A publish to a plain room is delivered before `client_publish` returns: no task, nothing to settle (a task
    per publish, in plain rooms too, took many rooms from 1.89x to 1.36x of the naive hub: benchmarks/RESULTS.md)."""
    server = await wsgate_server()
    peer = await joined(server, "plain:1")
    conn = server.hub.connections[peer.id]
    tasks = asyncio.all_tasks()
    await server.gateway.client_publish(conn, "plain:1", "now")  # (never suspends: no other task runs meanwhile)
    assert asyncio.all_tasks() == tasks
    assert conn.overlapping == 0
    assert (await peer.recv())["data"] == "now"
