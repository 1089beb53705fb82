"""Presence: members of a room on every node, join/leave events in batches, and a crashed node's members expiring."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest

from wsgate import ClientError, errors
from wsgate.config import PresenceSettings
from wsgate.presence import Presence
from wsgate.presence.memory import MemoryPresenceStore
from wsgate.testing import Peer, Server, StartServer

from .processes import environment, start_wsgate

SECRET = "presence-test-secret-" + "x" * 40
PRESENCE = {"rooms": ["chat:*"], "claims": ["name"]}
NO_EXAMPLE_AUTH = {"disabled": ["token_auth"]}


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


async def as_user(server: Server, sub: str, **claims: Any) -> Peer:
    client = Peer(await server.raw(headers={"Authorization": f"Bearer {token(sub, **claims)}"}))
    client.id = (await client.recv())["data"]["client_id"]
    return client


def members(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(answer["data"]["members"], key=lambda m: m["client_id"])


async def test_presence_lists_members_with_user_ids_and_chosen_claims(wsgate_server: StartServer) -> None:
    server = await wsgate_server(presence=PRESENCE, auth={"jwt": {"secret": SECRET}}, plugins=NO_EXAMPLE_AUTH)
    alice = await as_user(server, "alice", name="Alice", role="secret-role")
    anonymous = await server.connect()
    for client in (alice, anonymous):
        await client.subscribe("chat:1")
    answer = await anonymous.request({"type": "presence", "room": "chat:1"})
    assert (answer["type"], answer["room"], answer["data"]["count"]) == ("presence", "chat:1", 2)
    expected = [{"client_id": alice.id, "user_id": "alice", "claims": {"name": "Alice"}}, {"client_id": anonymous.id}]
    assert members(answer) == sorted(expected, key=lambda m: m["client_id"])
    await alice.request({"type": "unsubscribe", "room": "chat:1"})
    answer = await anonymous.request({"type": "presence", "room": "chat:1"})
    assert members(answer) == [{"client_id": anonymous.id}]
    refused = await anonymous.request({"type": "presence", "room": "lobby"})
    assert (refused["error"], refused["detail"]) == (
        "room has no presence",
        "presence.rooms does not include this room",
    )


@pytest.mark.slow
async def test_joins_and_leaves_arrive_in_batches(wsgate_server: StartServer) -> None:
    server = await wsgate_server(presence={"rooms": ["chat:*"], "events": True, "interval": "1s"})  # (the 50 in one)
    watcher = await server.connect()
    await watcher.subscribe("chat:1")
    first = await watcher.recv()  # its own join
    assert first["type"] == "presence_diff" and first["data"] == {"joins": [{"client_id": watcher.id}], "leaves": []}
    crowd = [await server.connect() for _ in range(50)]
    for client in crowd:  # 50 joins in a burst
        await client.send({"type": "subscribe", "room": "chat:1"})
    for client in crowd:
        assert (await client.recv())["type"] == "subscribed"
    diff = await watcher.recv()
    assert diff["type"] == "presence_diff"
    assert {m["client_id"] for m in diff["data"]["joins"]} == {c.id for c in crowd}  # one message, not 50
    leaving = crowd[0]
    await leaving.ws.close()
    diff = await watcher.recv()
    assert diff["data"] == {"joins": [], "leaves": [{"client_id": leaving.id}]}


async def test_presence_spans_nodes(wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> None:
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = await wsgate_server(broker=broker, presence=PRESENCE), await wsgate_server(broker=broker, presence=PRESENCE)
    on_a, on_b = await a.connect(), await b.connect()
    await on_a.subscribe("chat:1")
    await on_b.subscribe("chat:1")
    async with asyncio.timeout(5):
        while True:  # b writes its member to Redis in the background: poll, there is no event to wait on
            answer = await on_a.request({"type": "presence", "room": "chat:1"})
            if answer["data"]["count"] == 2:
                break
            await asyncio.sleep(0.02)
    assert {m["client_id"] for m in answer["data"]["members"]} == {on_a.id, on_b.id}


@pytest.mark.slow
async def test_members_of_a_crashed_node_expire_within_node_ttl(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    a = await wsgate_server(broker={"url": redis_url, "prefix": broker_prefix}, presence={**PRESENCE, "node_ttl": "1s"})
    env = environment(
        WEBSOCKET_ENABLED="true",
        WSGATE_BROKER__URL=redis_url,
        WSGATE_BROKER__PREFIX=broker_prefix,
        WSGATE_PRESENCE__ROOMS='["chat:*"]',
        WSGATE_PRESENCE__NODE_TTL="1s",
    )
    b = await start_wsgate(env=env)
    try:
        watcher = await a.connect()
        await watcher.subscribe("chat:1")
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(b.url("/ws"))
            await ws.receive_json()
            await ws.send_str(json.dumps({"type": "subscribe", "room": "chat:1"}))
            assert (await ws.receive_json())["type"] == "subscribed"

            async def count() -> int:
                answer = await watcher.request({"type": "presence", "room": "chat:1"})
                return int(answer["data"]["count"])

            async with asyncio.timeout(5):
                while await count() != 2:
                    await asyncio.sleep(0.02)
            b.proc.kill()  # a crash: no leave, no clean-up
            await b.proc.wait()
            started = time.monotonic()
            async with asyncio.timeout(5):
                while await count() != 1:
                    await asyncio.sleep(0.05)
            assert time.monotonic() - started < 3.0  # node_ttl (1 s), with room for a loaded machine
    finally:
        await b.kill()


async def test_a_presence_answer_is_bounded_in_bytes_and_says_so(wsgate_server: StartServer) -> None:
    """An answer larger than its request is bounded like every other: 60 members of about 50 bytes each, a 1 KiB
    bound; `count` stays whole."""
    server = await wsgate_server(presence={**PRESENCE, "max_answer_bytes": 1024})
    clients = [await server.connect() for _ in range(60)]
    for client in clients:
        await client.subscribe("chat:crowd")
    answer = await clients[0].request({"type": "presence", "room": "chat:crowd"})
    listed = members(answer)
    assert answer["data"]["count"] == 60 and answer["data"]["truncated"] is True
    assert 0 < len(listed) < 60 and len(json.dumps(listed, separators=(",", ":"))) <= 1024
    assert {m["client_id"] for m in listed} <= {c.id for c in clients}
    small = await clients[0].request({"type": "presence", "room": "chat:none"})
    assert small["data"] == {"count": 0, "members": []}  # nothing cut: the answer's shape is as before


# --- a presence_diff too large for one message (the adversary's input: 1,400 joins in one interval crashed the
# presence task, `message is too large`, and lost the diffs of that interval) ------------------------------------


def _presence(max_answer_bytes: int = 1024) -> Presence:
    settings = PresenceSettings(rooms=("p:*",), events=True, max_answer_bytes=max_answer_bytes)
    return Presence(settings, MemoryPresenceStore())


async def test_a_diff_over_max_answer_bytes_or_too_large_for_a_client_is_sent_in_parts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[bytes] = []

    async def publish(room: str, message: bytes) -> int:  # a client may be sent at most 600 bytes
        if len(message) > 600:
            raise ClientError(errors.MESSAGE_TOO_LARGE, "over 600 bytes")
        sent.append(message)
        return 1

    joins = [{"client_id": f"c{n:03}"} for n in range(100)]
    leaves = [{"client_id": f"l{n:03}"} for n in range(7)]
    huge = {"client_id": "huge", "claims": {"bio": "x" * 700}}
    await _presence()._announce(publish, "p:1", [*joins, huge], leaves)
    diffs = [json.loads(message)["data"] for message in sent]
    assert [m for diff in diffs for m in diff["joins"]] == joins  # each once, in order: all but the one too large
    assert [m for diff in diffs for m in diff["leaves"]] == leaves
    assert len(diffs) > 1 and all(diff["joins"] or diff["leaves"] for diff in diffs)
    assert "a member of room 'p:1' is too large to announce" in caplog.text
    sent.clear()
    await _presence(max_answer_bytes=2048)._announce(publish, "p:1", joins, [])  # under 600: none split for it
    assert [m for message in sent for m in json.loads(message)["data"]["joins"]] == joins


async def test_a_burst_of_joins_over_max_answer_bytes_reaches_the_watchers_in_parts(
    wsgate_server: StartServer,
) -> None:
    presence = {"rooms": ["p:*"], "events": True, "interval": "300ms", "max_answer_bytes": 1024}
    server = await wsgate_server(presence=presence)
    watcher = await server.connect()
    await watcher.subscribe("p:big")
    assert (await watcher.recv())["type"] == "presence_diff"  # its own join
    crowd = [await server.connect() for _ in range(80)]  # about 4 KB of members
    for client in crowd:
        await client.send({"type": "subscribe", "room": "p:big"})
    seen: list[str] = []
    while len(seen) < len(crowd):
        diff = await watcher.recv()
        assert diff["type"] == "presence_diff", diff
        assert len(json.dumps(diff["data"]["joins"])) <= 1024
        seen += [member["client_id"] for member in diff["data"]["joins"]]
    assert sorted(seen) == sorted(client.id for client in crowd)  # each once
    for client in crowd:
        await client.ws.close()
