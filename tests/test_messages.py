"""Every message type of the spec over real connections, with exact shapes and texts."""

from __future__ import annotations

import json
import time
import uuid

from wsgate.testing import Server


def assert_timestamp(msg: dict) -> None:
    now = time.time() * 1000
    assert isinstance(msg["timestamp"], int)
    assert now - 10_000 < msg["timestamp"] <= now + 1


async def test_connected_carries_a_uuid4_client_id(server: Server) -> None:
    raw = await server.raw()
    msg = await raw.receive_json()
    assert set(msg) == {"type", "data", "timestamp"}
    assert msg["type"] == "connected"
    assert msg["data"]["message"] == "Connected to WebSocket server"
    assert uuid.UUID(msg["data"]["client_id"]).version == 4
    assert_timestamp(msg)
    other = await server.connect()
    assert other.id != msg["data"]["client_id"]


async def test_subscribe_answers_subscribed_with_client_count(server: Server) -> None:
    a, b = await server.connect(), await server.connect()
    first = await a.subscribe("chat")
    assert first["room"] == "chat"
    assert first["data"] == {"room": "chat", "client_count": 1}
    assert set(first) == {"type", "room", "data", "timestamp"}
    assert_timestamp(first)
    second = await b.subscribe("chat")
    assert second["data"]["client_count"] == 2


async def test_subscribing_twice_is_harmless(server: Server) -> None:
    a = await server.connect()
    await a.subscribe("chat")
    again = await a.subscribe("chat")
    assert again["data"]["client_count"] == 1
    assert (await server.health())[1]["rooms"] == 1


async def test_unsubscribe(server: Server) -> None:
    a = await server.connect()
    await a.subscribe("chat")
    reply = await a.request({"type": "unsubscribe", "room": "chat"})
    assert reply["type"] == "unsubscribed"
    assert reply["room"] == "chat"
    assert reply["data"] == {"room": "chat"}
    assert_timestamp(reply)


async def test_unsubscribe_from_a_room_not_joined(server: Server) -> None:
    a = await server.connect()
    reply = await a.request({"type": "unsubscribe", "room": "chat"})
    assert reply["type"] == "error"
    assert reply["error"] == "not subscribed to this room"


async def test_publish_reaches_every_member_including_the_sender(server: Server) -> None:
    a, b, outsider = await server.connect(), await server.connect(), await server.connect()
    await a.subscribe("chat")
    await b.subscribe("chat")
    data = {"message": "Hello!", "nested": {"list": [1, 2.5, None, True]}, "text": "héllo ✓ 🚀"}
    await b.send({"type": "publish", "room": "chat", "data": data})
    for client in (a, b):
        msg = await client.recv()
        assert msg["type"] == "message"
        assert msg["room"] == "chat"
        assert msg["data"] == data
        assert msg["client_id"] == b.id
        assert set(msg) == {"type", "room", "data", "client_id", "timestamp"}
        assert_timestamp(msg)
    assert (await outsider.request({"type": "ping"}))["type"] == "pong"  # nothing else was queued


async def test_publish_keeps_json_values_exact(server: Server) -> None:
    a = await server.connect()
    await a.subscribe("numbers")
    frame = (
        '{"type":"publish","room":"numbers",'
        '"data":{"big":123456789012345678901234567890,"neg":-18446744073709551617,"f":0.1,"e":1.5e300}}'
    )
    await a.send(frame)
    raw = await a.ws.receive_str()
    assert '"big":123456789012345678901234567890' in raw
    assert '"neg":-18446744073709551617' in raw
    msg = json.loads(raw)
    assert msg["data"]["f"] == 0.1 and msg["data"]["e"] == 1.5e300


async def test_publish_requires_membership(server: Server) -> None:
    a = await server.connect()
    reply = await a.request({"type": "publish", "room": "chat", "data": 1})
    assert reply == {"type": "error", "error": "not subscribed to this room", "timestamp": reply["timestamp"]}


async def test_publish_without_data_delivers_null(server: Server) -> None:
    a = await server.connect()
    await a.subscribe("chat")
    msg = await a.request({"type": "publish", "room": "chat"})
    assert msg["type"] == "message"
    assert "data" in msg and msg["data"] is None


async def test_room_is_required(server: Server) -> None:
    a = await server.connect()
    for kind in ("subscribe", "unsubscribe", "publish"):
        for message in ({"type": kind}, {"type": kind, "room": ""}, {"type": kind, "room": None}):
            reply = await a.request(message)
            assert reply["type"] == "error"
            assert reply["error"] == "room name is required", (message, reply)


async def test_broadcast_reaches_everyone_without_a_room_key(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    await clients[1].subscribe("elsewhere")
    await clients[0].send({"type": "broadcast", "data": {"any": "payload"}})
    for client in clients:
        msg = await client.recv()
        assert msg["type"] == "message"
        assert "room" not in msg
        assert msg["data"] == {"any": "payload"}
        assert msg["client_id"] == clients[0].id


async def test_ping_answers_pong(server: Server) -> None:
    a = await server.connect()
    reply = await a.request({"type": "ping"})
    assert set(reply) == {"type", "timestamp"}
    assert reply["type"] == "pong"
    assert_timestamp(reply)


async def test_messages_arrive_in_the_order_sent(server: Server) -> None:
    publisher, subscriber = await server.connect(), await server.connect()
    await publisher.subscribe("seq")
    await subscriber.subscribe("seq")
    for n in range(500):
        await publisher.send({"type": "publish", "room": "seq", "data": n})
    assert [(await subscriber.recv())["data"] for _ in range(500)] == list(range(500))


async def test_health_reports_live_counts(server: Server) -> None:
    assert await server.counts() == (200, {"status": "healthy", "clients": 0, "rooms": 0})
    a, b = await server.connect(), await server.connect()
    await a.subscribe("one")
    await b.subscribe("two")
    await b.subscribe("one")
    assert await server.counts() == (200, {"status": "healthy", "clients": 2, "rooms": 2})


async def test_room_disappears_with_its_last_member(server: Server) -> None:
    a, b = await server.connect(), await server.connect()
    await a.subscribe("one")
    await b.subscribe("two")
    await a.request({"type": "unsubscribe", "room": "one"})
    assert (await server.health())[1]["rooms"] == 1
    await b.ws.close()
    await a.request({"type": "ping"})
    # b's close handshake completed before close() returned; the server forgets it in the same turn
    assert "two" not in server.hub.rooms
    assert (await server.counts())[1] == {"status": "healthy", "clients": 1, "rooms": 0}
