"""Request ids (docs/protocol.md, "Request ids"): every reply to a message with an `id` carries it; nothing
else does, and a client that sends none gets exactly the spec's bytes, as before."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

import wsgate
from wsgate import Client, Handler, Message
from wsgate.testing import TIMEOUT, Peer, Server, StartServer

from .test_auth import NO_EXAMPLE_AUTH, SECRET, bearer, token
from .test_docs_examples import page_block

TIMESTAMP = re.compile(r'"timestamp":\d+')


def untimed(message: dict[str, Any]) -> dict[str, Any]:
    """`message` without its timestamp (checked to be there)."""
    assert isinstance(message.pop("timestamp"), int)
    return message


async def raw_reply(peer: Peer, text: str) -> str:
    """Send `text` as it is and return the next text frame as it came, its timestamp replaced by 0."""
    await peer.ws.send_str(text)
    msg = await peer.ws.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert TIMESTAMP.search(msg.data), msg.data
    return TIMESTAMP.sub('"timestamp":0', msg.data)


class Replies:
    """A third-party plugin that answers with each API a handler has, and writes to a room and to another client."""

    @wsgate.hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {"ask": self.ask, "ask_bytes": self.ask_bytes, "tell_others": self.tell_others}

    async def ask(self, client: Client, message: Message) -> None:
        await client.send({"type": "answer", "data": message.data})

    async def ask_bytes(self, client: Client, message: Message) -> None:
        client.enqueue(b'{"type":"answer","timestamp":1}')

    async def tell_others(self, client: Client, message: Message) -> None:
        await client.gateway.publish("chat", "to the room", type="note")
        other = client.gateway.client(message.data)
        assert other is not None
        await other.send({"type": "note", "data": "to another client"})
        await client.send({"type": "told"})


async def spec_server(wsgate_server: StartServer) -> Server:
    return await wsgate_server(history={"rooms": ["kept:*"]}, presence={"rooms": ["kept:*"]})


async def test_a_client_without_ids_gets_the_spec_bytes(wsgate_server: StartServer) -> None:
    """Byte for byte, key order and all: what a spec client sends is answered as it always was."""
    server = await spec_server(wsgate_server)
    raw = await server.raw()
    hello = TIMESTAMP.sub('"timestamp":0', (await raw.receive(timeout=TIMEOUT)).data)
    client_id = json.loads(hello)["data"]["client_id"]
    assert hello == (
        f'{{"type":"connected","data":{{"client_id":"{client_id}","message":"Connected to WebSocket server"}},'
        '"timestamp":0}'
    )
    await raw.close()
    a, b = await server.connect(), await server.connect()
    assert (
        await raw_reply(a, '{"type":"subscribe"}') == '{"type":"error","error":"room name is required","timestamp":0}'
    )
    assert await raw_reply(a, '{"type":"publish","room":"chat","data":1}') == (
        '{"type":"error","error":"not subscribed to this room","timestamp":0}'
    )
    assert await raw_reply(a, '{"type":"subscribe","room":"chat"}') == (
        '{"type":"subscribed","room":"chat","data":{"room":"chat","client_count":1},"timestamp":0}'
    )
    await b.subscribe("chat")
    assert await raw_reply(a, '{"type":"publish","room":"chat","data":{"any":"payload"}}') == (
        f'{{"type":"message","room":"chat","data":{{"any":"payload"}},"client_id":"{a.id}","timestamp":0}}'
    )
    assert (await b.recv())["data"] == {"any": "payload"}
    assert await raw_reply(a, '{"type":"broadcast","data":1}') == (
        f'{{"type":"message","data":1,"client_id":"{a.id}","timestamp":0}}'
    )
    await b.recv()
    assert await raw_reply(a, '{"type":"ping"}') == '{"type":"pong","timestamp":0}'
    assert await raw_reply(a, '{"type":"unsubscribe","room":"chat"}') == (
        '{"type":"unsubscribed","room":"chat","data":{"room":"chat"},"timestamp":0}'
    )
    assert await raw_reply(a, '{"type":"unsubscribe","room":"chat"}') == (
        '{"type":"error","error":"not subscribed to this room","timestamp":0}'
    )
    assert await raw_reply(a, '{"type":"nope"}') == '{"type":"error","error":"unknown message type","timestamp":0}'
    assert await raw_reply(a, '{"type":"history","room":"kept:1"}') == (
        '{"type":"history","room":"kept:1","data":{"offset":0,"epoch":"","messages":[]},"timestamp":0}'
    )
    assert await raw_reply(a, '{"type":"presence","room":"kept:1"}') == (
        '{"type":"presence","room":"kept:1","data":{"count":0,"members":[]},"timestamp":0}'
    )


@pytest.mark.parametrize("request_id", [7, 0, 2**53, "r-1", "x" * 64, ""])
async def test_every_reply_carries_the_id_as_its_last_key(wsgate_server: StartServer, request_id: object) -> None:
    server = await spec_server(wsgate_server)
    a = await server.connect()
    rid = wsgate.protocol.dumps(request_id).decode()
    for request, reply in [
        (
            '{"type":"subscribe","room":"chat","id":%s}',
            '{"type":"subscribed","room":"chat","data":{"room":"chat","client_count":1},"timestamp":0,"id":%s}',
        ),
        ('{"id":%s,"type":"ping"}', '{"type":"pong","timestamp":0,"id":%s}'),
        (
            '{"type":"unsubscribe","room":"chat","id":%s}',
            '{"type":"unsubscribed","room":"chat","data":{"room":"chat"},"timestamp":0,"id":%s}',
        ),
        (
            '{"type":"unsubscribe","room":"chat","id":%s}',
            '{"type":"error","error":"not subscribed to this room","timestamp":0,"id":%s}',
        ),
        ('{"type":"nope","id":%s}', '{"type":"error","error":"unknown message type","timestamp":0,"id":%s}'),
        (
            '{"type":"subscribe","id":%s}',
            '{"type":"error","error":"room name is required","timestamp":0,"id":%s}',
        ),
        (
            '{"type":"history","room":"kept:1","id":%s}',
            '{"type":"history","room":"kept:1","data":{"offset":0,"epoch":"","messages":[]},"timestamp":0,"id":%s}',
        ),
        (
            '{"type":"presence","room":"kept:1","id":%s}',
            '{"type":"presence","room":"kept:1","data":{"count":0,"members":[]},"timestamp":0,"id":%s}',
        ),
    ]:
        assert await raw_reply(a, request % rid) == reply % rid


async def test_room_messages_never_carry_the_publishers_id(server: Server) -> None:
    a, b = await server.connect(), await server.connect()
    await a.subscribe("chat")
    await b.subscribe("chat")
    await a.send({"type": "publish", "room": "chat", "data": 1, "id": 5})
    await a.send({"type": "broadcast", "data": 2, "id": 6})
    for peer in (a, b):
        for data in (1, 2):
            message = await peer.recv()
            assert (message["type"], message["data"]) == ("message", data)
            assert "id" not in message
    assert untimed(await a.request({"type": "ping", "id": 8})) == {"type": "pong", "id": 8}


@pytest.mark.parametrize(
    "request_id", ["x" * 65, -1, 2**53 + 1, 1.5, 1.0, True, False, {"n": 1}, [1], 10**30], ids=repr
)
async def test_an_invalid_id_is_refused_and_never_echoed(server: Server, request_id: object) -> None:
    a = await server.connect()
    await a.subscribe("chat")
    answer = await a.request({"type": "unsubscribe", "room": "chat", "id": request_id})
    assert answer == {
        "type": "error",
        "error": "invalid JSON format",
        "detail": "field 'id' must be a string of at most 64 characters or an integer from 0 to 2^53",
        "timestamp": answer["timestamp"],
    }
    assert (await a.request({"type": "publish", "room": "chat", "data": 1}))["type"] == "message"  # not handled


async def test_a_null_id_is_no_id(server: Server) -> None:
    a = await server.connect()
    assert set(await a.request({"type": "ping", "id": None})) == {"type", "timestamp"}


async def test_plugin_replies_carry_the_id_and_nothing_else_does(wsgate_server: StartServer) -> None:
    """`client.send` and `client.enqueue` inside the handler answer with the id, without the plugin doing
    anything; what the handler sends to a room or to another client does not."""
    server = await wsgate_server(Replies())
    a, b = await server.connect(), await server.connect()
    answer = untimed(await a.request({"type": "ask", "data": [1], "id": "q"}))
    assert answer == {"type": "answer", "data": [1], "id": "q"}
    assert set(await a.request({"type": "ask", "data": 1})) == {"type", "data", "timestamp"}
    assert await raw_reply(a, '{"type":"ask_bytes","id":3}') == '{"type":"answer","timestamp":0,"id":3}'
    await a.subscribe("chat")
    await b.subscribe("chat")
    await a.send({"type": "tell_others", "data": b.id, "id": 9})
    note = await a.recv()
    assert (note["type"], note["data"], "id" in note) == ("note", "to the room", False)
    assert untimed(await a.recv()) == {"type": "told", "id": 9}
    for data in ("to the room", "to another client"):
        note = await b.recv()
        assert (note["type"], note["data"], "id" in note) == ("note", data, False)


async def test_refreshed_and_operator_replies_carry_the_id_but_not_the_rooms_a_refresh_takes(
    wsgate_server: StartServer,
) -> None:
    server = await wsgate_server(
        auth={"jwt": {"secret": SECRET}, "rooms": ["team-* = claim:team"]},
        plugins=NO_EXAMPLE_AUTH,
        dashboard={"enabled": True, "password": "a-long-operator-password"},
    )
    client = Peer(await server.raw(**bearer(token(admin=True, team=True))))
    await client.recv()
    tailing = await client.request({"type": "dashboard_tail", "room": "ops", "id": 1})
    assert (tailing["type"], tailing["id"]) == ("dashboard_tailing", 1)
    watching = await client.request({"type": "dashboard_watch", "id": 2})
    assert (watching["type"], watching["id"]) == ("dashboard_watching", 2)
    await client.subscribe("team-1")
    await client.send({"type": "refresh", "token": token(), "id": "r"})  # no longer in the team
    left = await client.recv()
    assert (left["type"], left["room"], "id" in left) == ("unsubscribed", "team-1", False)
    while (refreshed := await client.recv())["type"] == "dashboard_stats":
        pass
    assert (refreshed["type"], refreshed["id"]) == ("refreshed", "r")


async def test_the_protocol_pages_exchange(server: Server) -> None:
    """docs/protocol.md, "Request ids": each client message of the example, sent as written, gets the reply
    the page shows (its timestamp aside)."""
    frames = json.loads(page_block("protocol.md", "[", "json"))
    a = await server.connect()
    for request, reply in zip(frames[::2], frames[1::2], strict=True):
        assert untimed(await a.request(request)) == {key: value for key, value in reply.items() if key != "timestamp"}
