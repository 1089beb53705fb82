"""Safer publishes (issue 24 item 5): `"skip_self": true`, over real connections,
with the memory broker and with two nodes on Redis, in rooms with and without history."""

from __future__ import annotations

from typing import Any

import pytest

from wsgate.testing import Peer, Server, StartServer

from .test_auth import NO_EXAMPLE_AUTH, SECRET, bearer, token

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


@pytest.mark.parametrize("skip_self", ["absent", None, False])
async def test_without_skip_self_or_false_the_sender_gets_the_same_bytes_as_before(
    wsgate_server: StartServer, skip_self: bool | str | None
) -> None:
    """Absent, null (as for "id": the field's absence) or false: the guide's bytes, the sender included."""
    server = await wsgate_server()
    sender = await joined(server, "plain:2")
    publish: dict[str, Any] = {"type": "publish", "room": "plain:2", "data": {"n": 1}}
    if skip_self != "absent":
        publish["skip_self"] = skip_self
    await sender.send(publish)
    raw = (await sender.ws.receive()).data
    head = '{"type":"message","room":"plain:2","data":{"n":1},"client_id":"' + sender.id + '","timestamp":'
    assert raw.startswith(head), raw
    await nothing_more(sender)


@pytest.mark.parametrize("value", [1, "yes", [True]])
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
