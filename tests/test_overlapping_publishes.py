"""A client's publishes to rooms with history overlap (issue 25, item 5: cross-node history).

A publish to a room with history waits for Redis's answer (its offset). Its place in every order is fixed before
that wait (`Router.begin`), so the client's next message is read meanwhile: up to `OVERLAP` of its publishes are
pending at once. Anything else it sends waits for them (`Connection.settled`), so what a client sees is what it
saw when each publish was awaited: its own copies, then the answer to its next request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsgate.connection import OVERLAP
from wsgate.testing import Peer, Server, StartServer, eventually
from wsgate.views import SESSIONS

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


async def test_a_client_that_leaves_with_publishes_pending_leaves_them_to_the_room_and_nothing_behind(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its socket goes while its publishes wait for Redis (paused: CLIENT PAUSE WRITE holds every script): the
    room's members on both nodes still get every one, in order, once Redis answers, and its connection ends
    without an error logged, an answer attempted or a task left."""
    import redis.asyncio as aioredis

    broker = {"url": private_redis.url, "prefix": broker_prefix}
    a, b = [await wsgate_server(broker=broker, history=HISTORY) for _ in range(2)]
    sender, member_a, member_b = await joined(a, "kept:3"), await joined(a, "kept:3"), await joined(b, "kept:3")
    conn, sessions = a.hub.connections[sender.id], a.app[SESSIONS]
    control: Any = aioredis.from_url(private_redis.url)
    try:
        await control.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        for n in range(OVERLAP):
            await sender.send({"type": "publish", "room": "kept:3", "data": n})
        await eventually(lambda: conn.overlapping and not conn.handling)  # all read, none answered
        await sender.ws.close()
        await eventually(lambda: conn not in sessions.live)  # ended: its end ran, with OVERLAP pending
    finally:
        await control.execute_command("CLIENT", "UNPAUSE")
        await control.aclose()
    for peer in (member_a, member_b):
        assert [(await peer.recv())["data"] for _ in range(OVERLAP)] == list(range(OVERLAP))
    assert not conn.overlapping
    assert not [task for task in asyncio.all_tasks() if conn.id in task.get_name()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
