"""Server-side subscriptions (docs/protocol.md): a token's `subs` claim, an authentication plugin's identity, and the
HTTP API's /api/subscribe, /api/unsubscribe and /api/disconnect, on one node and across nodes on Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from aiohttp import web

from wsgate import Client, Identity, hookimpl
from wsgate.commands import MAX_COMMAND_BYTES, QUEUE_SIZE, Command
from wsgate.keys import BROKER, COMMANDS
from wsgate.testing import Peer, Server, StartServer, eventually, wait_until

from .conftest import PrivateRedis
from .test_auth import NO_EXAMPLE_AUTH, SECRET, bearer, token

KEY = "test-api-key"
Cluster = Callable[..., Awaitable[Server]]


async def gateway(wsgate_server: StartServer, *plugins: object, **tables: Any) -> Server:
    """A gateway with the JWT authenticator and the HTTP API (and `tables`)."""
    auth = {"jwt": {"secret": SECRET}, **tables.pop("auth", {})}
    plugin_table = {**NO_EXAMPLE_AUTH, **tables.pop("plugins", {})}
    return await wsgate_server(*plugins, auth=auth, api={"key": KEY}, plugins=plugin_table, **tables)


async def user(server: Server, sub: str, **claims: Any) -> Peer:
    return await server.connect(**bearer(token(sub, **claims)))


async def post(server: Server, path: str, body: Any, key: str = KEY) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of an API call (`body` a str is sent as it is)."""
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with server.session.post(server.url(path), data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def raw(peer: Peer) -> str:
    """The next message's text, as sent."""
    msg = await peer.ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    text: str = msg.data
    return text


async def nothing_more(peer: Peer) -> None:
    """Nothing else was queued for `peer`: the answer to a ping comes next."""
    assert (await peer.request({"type": "ping"}))["type"] == "pong"


def server_message(text: str, kind: str, room: str, data: dict[str, Any]) -> None:
    """`text` is `kind` for `room` with exactly `data`, and `"server": true` after it, as a top-level field."""
    message = json.loads(text)
    assert list(message) == ["type", "room", "data", "server", "timestamp"], text
    assert (message["type"], message["room"], message["data"], message["server"]) == (kind, room, data, True)


# --- the subs claim and identities ----------------------------------------------------------------


async def test_the_subs_claim_subscribes_after_connected_and_a_refused_room_is_logged_not_sent(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await gateway(wsgate_server, auth={"rooms": ["vip:* = claim:vip"]})
    client = await user(server, "alice", subs=["news", "vip:lounge", "sports"])
    server_message(await raw(client), "subscribed", "news", {"room": "news", "client_count": 1})
    server_message(await raw(client), "subscribed", "sports", {"room": "sports", "client_count": 1})
    await nothing_more(client)  # vip:lounge: not allowed, and not sent as an error
    assert server.gateway.client(client.id).rooms == {"news", "sports"}  # type: ignore[union-attr]
    assert server.metrics.error_count("not_allowed") == 1
    [line] = [r.getMessage() for r in caplog.records if "was refused" in r.getMessage()]
    assert "'vip:lounge'" in line and "asked by its identity" in line and "not allowed" in line


async def test_a_subs_claim_that_is_not_a_list_of_room_names_refuses_the_token(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server)
    for subs in ("news", ["news", 1], {"news": True}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await user(server, "alice", subs=subs)
        assert refused.value.status == 401
    async with server.session.get(server.url("/ws"), **bearer(token(subs="news"))) as resp:
        assert await resp.json() == {
            "error": "invalid token",
            "detail": "the token's subs claim must be a list of room names (strings)",
        }
    client = await user(server, "alice", subs=None)  # (absent: no subscription)
    await nothing_more(client)


async def test_a_refresh_adds_the_rooms_of_its_new_subs_and_leaves_none(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server)
    client = await user(server, "alice", subs=["a"])
    server_message(await raw(client), "subscribed", "a", {"room": "a", "client_count": 1})
    await client.send({"type": "refresh", "token": token("alice", subs=["b"]), "id": 7})
    subscribed = json.loads(await raw(client))
    assert "id" not in subscribed and subscribed["server"] is True and subscribed["room"] == "b"  # no request id
    refreshed = await client.recv()
    assert (refreshed["type"], refreshed["id"]) == ("refreshed", 7)
    assert server.gateway.client(client.id).rooms == {"a", "b"}  # type: ignore[union-attr]


async def test_subs_over_the_rooms_limit_are_refused_at_once_and_refusals_are_logged_throttled(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the adversary: a token listing thousands of rooms tried (and logged) each one, again at every
    refresh, which the client sends as often as it likes."""
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await gateway(wsgate_server, websocket={"limits": {"max_rooms_per_client": 2}})
    subs = ["a", "b", *(f"r{n}" for n in range(400))]  # (the token must fit in a header)
    client = await user(server, "alice", subs=subs)
    for room in ("a", "b"):
        server_message(await raw(client), "subscribed", room, {"room": room, "client_count": 1})
    for request_id in range(20):
        await client.send({"type": "refresh", "token": token("alice", subs=subs), "id": request_id})
        assert (await client.recv())["type"] == "refreshed"
    assert server.gateway.client(client.id).rooms == {"a", "b"}  # type: ignore[union-attr]
    assert server.metrics.error_count("too_many_rooms") == 21  # once per connect and refresh, not per room
    lines = [r.getMessage() for r in caplog.records if "was refused" in r.getMessage()]
    assert len(lines) == 1 and "400 rooms over max_rooms_per_client (2)" in lines[0], lines


class SubsAuthenticator:
    """An authentication plugin whose identities list rooms; it notes the rooms each client had when its
    `wsgate_client_connected` ran."""

    def __init__(self) -> None:
        self.rooms_when_connected: list[set[str]] = []

    @hookimpl
    def wsgate_authenticate(self, request: web.Request) -> object:
        if request.query.get("as") == "plain":
            return {"user": "carol", "subs": ["x"]}  # not an Identity: its `subs` key means nothing to wsgate
        return Identity("bob", subs=["x", "y"])

    @hookimpl
    def wsgate_client_connected(self, client: Client) -> None:
        self.rooms_when_connected.append(set(client.rooms))


async def test_an_authentication_plugins_identity_subscribes_after_the_connected_hook(
    wsgate_server: StartServer,
) -> None:
    plugin = SubsAuthenticator()
    server = await wsgate_server(plugin, plugins=NO_EXAMPLE_AUTH)
    client = await server.connect()
    for room in ("x", "y"):
        server_message(await raw(client), "subscribed", room, {"room": room, "client_count": 1})
    await nothing_more(client)
    assert plugin.rooms_when_connected == [set()]
    plain = Peer(await server.session.ws_connect(server.url("/ws?as=plain")))
    assert (await plain.recv())["type"] == "connected"
    await nothing_more(plain)


def test_identity_subs_are_room_names() -> None:
    assert Identity("u", subs=["a", "b"]).subs == ("a", "b")
    assert Identity("u").subs == ()
    for bad in ("room", [1], None, {"a"}):
        with pytest.raises(TypeError, match="Identity.subs must be a sequence of room names"):
            Identity("u", subs=bad)  # type: ignore[arg-type]


async def test_a_room_with_history_answers_with_its_position(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server, history={"rooms": ["h:*"]})
    client = await user(server, "alice", subs=["h:1"])
    message = json.loads(await raw(client))
    assert (message["server"], set(message["data"])) == (True, {"room", "client_count", "offset", "epoch"})


async def test_clients_without_server_subscriptions_see_the_guides_bytes(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server)
    for client in (await server.connect(), await user(server, "alice")):
        await client.send({"type": "subscribe", "room": "r"})
        assert list(json.loads(await raw(client))) == ["type", "room", "data", "timestamp"]
        await client.send({"type": "unsubscribe", "room": "r"})
        assert list(json.loads(await raw(client))) == ["type", "room", "data", "timestamp"]
        await nothing_more(client)


# --- the HTTP API on one node -----------------------------------------------------------------------


async def test_subscribe_unsubscribe_and_disconnect_by_user_and_by_client(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server)
    alice, alice_again, bob = await user(server, "alice"), await user(server, "alice"), await user(server, "bob")
    assert await post(server, "/api/subscribe", {"room": "r", "user_id": "alice"}) == (
        200,
        {"local_clients": 2, "refused": [], "nodes": 1},
    )
    for client in (alice, alice_again):  # (one after the other, in no given order)
        server_message(await raw(client), "subscribed", "r", {"room": "r", "client_count": ANY})
    assert (await post(server, "/api/subscribe", {"room": "r", "client_id": bob.id}))[1]["local_clients"] == 1
    server_message(await raw(bob), "subscribed", "r", {"room": "r", "client_count": 3})
    assert (await post(server, "/api/subscribe", {"room": "r", "user_id": "alice"}))[1]["local_clients"] == 2
    await server.gateway.publish("r", "hello")  # (subscribing again sent nothing: this comes next)
    for client in (alice, alice_again, bob):
        assert (await client.recv())["data"] == "hello"

    assert await post(server, "/api/unsubscribe", {"room": "r", "user_id": "alice"}) == (
        200,
        {"local_clients": 2, "refused": [], "nodes": 1},
    )
    for client in (alice, alice_again):
        server_message(await raw(client), "unsubscribed", "r", {"room": "r"})
        await nothing_more(client)
    assert server.hub.rooms["r"] == {server.hub.connections[bob.id]}

    assert await post(server, "/api/disconnect", {"user_id": "alice"}) == (
        200,
        {"local_clients": 2, "refused": [], "nodes": 1},
    )
    assert (await post(server, "/api/disconnect", {"client_id": bob.id}))[1]["local_clients"] == 1
    for client in (alice, alice_again, bob):
        closed = await client.closed()
        assert (closed.data, closed.extra) == (1008, "disconnected by the server")
    await eventually(lambda: not server.hub.connections and not server.hub.users)  # (the index forgets them)
    await eventually(
        lambda: (
            server.metrics.registry.get_sample_value("websocket_connections_closed_total", {"reason": "server"}) == 3
        )
    )


async def test_room_rules_and_limits_refuse_an_api_subscribe_in_the_answer(wsgate_server: StartServer) -> None:
    server = await gateway(
        wsgate_server, auth={"rooms": ["vip:* = claim:vip"]}, websocket={"limits": {"max_rooms_per_client": 1}}
    )
    alice, vip = await user(server, "alice"), await user(server, "vip", vip=True)
    await alice.subscribe("mine")
    status, body = await post(server, "/api/subscribe", {"room": "vip:1", "client_id": alice.id})
    assert (status, body["local_clients"]) == (200, 1)
    assert body["refused"] == [
        {"client_id": alice.id, "error": "not allowed", "detail": "room 'vip:1' requires the 'vip' claim"}
    ]
    status, body = await post(server, "/api/subscribe", {"room": "other", "client_id": alice.id})
    assert body["refused"] == [
        {"client_id": alice.id, "error": "too many rooms", "detail": "a client may be in at most 1 rooms"}
    ]
    await nothing_more(alice)  # refusals are the caller's business, not the client's
    assert server.metrics.error_count("too_many_rooms") == 1
    status, body = await post(server, "/api/subscribe", {"room": "vip:1", "user_id": "vip"})
    assert body == {"local_clients": 1, "refused": [], "nodes": 1}
    server_message(await raw(vip), "subscribed", "vip:1", {"room": "vip:1", "client_count": 1})


@pytest.mark.parametrize(
    ("path", "body", "status", "answer"),
    [
        ("/api/subscribe", {"room": "r"}, 400, "give exactly one of 'client_id' and 'user_id' (got neither)"),
        ("/api/disconnect", {}, 400, "give exactly one of 'client_id' and 'user_id' (got neither)"),
        (
            "/api/unsubscribe",
            {"room": "r", "user_id": "a", "client_id": "00000000-0000-0000-0000-000000000000"},
            400,
            "give exactly one of 'client_id' and 'user_id' (got both)",
        ),
        ("/api/subscribe", {"room": "r", "client_id": 5}, 400, "field 'client_id' must be a client id"),
        ("/api/subscribe", {"room": "r", "client_id": "alice"}, 400, "field 'client_id' must be a client id"),
        ("/api/disconnect", {"user_id": ""}, 400, "field 'user_id' must be a non-empty string"),
        ("/api/disconnect", {"user_id": ["a"]}, 400, "field 'user_id' must be a non-empty string"),
        ("/api/disconnect", {"user_id": "u" * 1025}, 400, "field 'user_id' must be a non-empty string"),
        ("/api/subscribe", {"room": 5, "user_id": "a"}, 400, "field 'room' must be a string"),
        ("/api/subscribe", {"user_id": "a"}, 400, "room name is required"),
        ("/api/unsubscribe", {"room": "r" * 300, "user_id": "a"}, 400, "room name is too long"),
        ("/api/subscribe", "[1]", 400, "the body must be a JSON object"),
        ("/api/subscribe", "{", 400, "the frame is not valid JSON"),
    ],
)
async def test_bad_bodies_are_answered_precisely(
    wsgate_server: StartServer, path: str, body: Any, status: int, answer: str
) -> None:
    server = await gateway(wsgate_server)
    got_status, got = await post(server, path, body)
    assert got_status == status
    assert answer in f"{got['error']}: {got.get('detail')}", got


async def test_an_unknown_client_is_no_error_and_a_wrong_key_is_401(wsgate_server: StartServer) -> None:
    server = await gateway(wsgate_server)
    unknown = "00000000-0000-0000-0000-000000000000"  # (it may be on another node: never 404)
    assert await post(server, "/api/disconnect", {"client_id": unknown}) == (
        200,
        {"local_clients": 0, "refused": [], "nodes": 1},
    )
    assert await post(server, "/api/subscribe", {"room": "r", "user_id": "nobody"}) == (
        200,
        {"local_clients": 0, "refused": [], "nodes": 1},
    )
    upper = "0000000A-0000-0000-0000-000000000000"  # client ids are sent lower-case: this one can match nobody
    assert await post(server, "/api/disconnect", {"client_id": upper}) == (
        400,
        {
            "error": "invalid JSON format",
            "detail": "field 'client_id' must be a client id (a lower-case UUID, as in connected)",
        },
    )
    for path in ("/api/subscribe", "/api/unsubscribe", "/api/disconnect"):
        assert await post(server, path, {"user_id": "a", "room": "r"}, key="wrong") == (
            401,
            {"error": "invalid API key"},
        )


# --- across nodes on Redis --------------------------------------------------------------------------


@pytest.fixture
def node(wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> Cluster:
    """`await node(*plugins)`: one more gateway of a cluster sharing Redis, the JWT secret and the API key."""

    async def start(*plugins: object, **tables: Any) -> Server:
        return await gateway(wsgate_server, *plugins, broker={"url": redis_url, "prefix": broker_prefix}, **tables)

    return start


async def test_commands_reach_the_user_and_the_client_on_every_node(node: Cluster) -> None:
    a, b = await node(), await node()
    on_a, on_b, bob_on_b = await user(a, "alice"), await user(b, "alice"), await user(b, "bob")
    assert await post(a, "/api/subscribe", {"room": "r", "user_id": "alice"}) == (
        200,
        {"local_clients": 1, "refused": [], "nodes": 2},
    )
    for client in (on_a, on_b):
        server_message(await raw(client), "subscribed", "r", {"room": "r", "client_count": 1})
    assert await post(a, "/api/subscribe", {"room": "r", "client_id": bob_on_b.id}) == (
        200,
        {"local_clients": 0, "refused": [], "nodes": 2},
    )
    server_message(await raw(bob_on_b), "subscribed", "r", {"room": "r", "client_count": 2})
    await on_a.send({"type": "publish", "room": "r", "data": "across"})  # subscribed: messages of every node
    for client in (on_a, on_b, bob_on_b):
        assert (await client.recv())["data"] == "across"

    assert (await post(b, "/api/unsubscribe", {"room": "r", "user_id": "alice"}))[1]["local_clients"] == 1
    for client in (on_a, on_b):
        server_message(await raw(client), "unsubscribed", "r", {"room": "r"})
        await nothing_more(client)

    assert (await post(a, "/api/disconnect", {"client_id": bob_on_b.id}))[1] == {
        "local_clients": 0,
        "refused": [],
        "nodes": 2,
    }
    closed = await bob_on_b.closed()
    assert (closed.data, closed.extra) == (1008, "disconnected by the server")
    await post(b, "/api/disconnect", {"user_id": "alice"})
    for client in (on_a, on_b):
        assert (await client.closed()).extra == "disconnected by the server"
    await eventually(lambda: not a.hub.connections and not b.hub.connections)


async def test_a_refusal_on_another_node_is_logged_there(node: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsgate")
    a, b = await node(), await node(websocket={"limits": {"max_rooms_per_client": 1}})
    alice = await user(b, "alice", subs=["mine"])
    server_message(await raw(alice), "subscribed", "mine", {"room": "mine", "client_count": 1})
    assert (await post(a, "/api/subscribe", {"room": "r", "user_id": "alice"}))[1]["nodes"] == 2
    await eventually(lambda: b.metrics.error_count("too_many_rooms") == 1)
    assert any("asked by the HTTP API" in r.getMessage() and "too many rooms" in r.getMessage() for r in caplog.records)
    await nothing_more(alice)


async def test_a_malformed_command_from_redis_is_logged_and_ignored(
    node: Cluster, redis_url: str, broker_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio as aioredis

    a = await node()
    alice = await user(a, "alice")
    sender = b"f" * 32  # another node's id
    garbage = [
        b"not json",
        b"[1]",
        b'{"op": "explode", "user_id": "alice"}',
        b'{"op": "subscribe", "room": "r", "user_id": "alice", "client_id": "x"}',
        b'{"op": "disconnect", "user_id": "' + b"u" * MAX_COMMAND_BYTES + b'"}',
        b"\xff\xfe",
    ]
    redis = aioredis.from_url(redis_url)
    try:
        for payload in garbage:
            await redis.publish(f"{broker_prefix}:control", sender + payload)
        await redis.publish(f"{broker_prefix}:control", b"short")  # (not even a sender id)
        await redis.publish(f"{broker_prefix}:control", sender + b'{"op":"subscribe","room":"ok","user_id":"alice"}')
    finally:
        await redis.aclose()
    server_message(await raw(alice), "subscribed", "ok", {"room": "ok", "client_count": 1})  # after the garbage
    assert a.metrics.error_count("bad_command") == len(garbage) + 1
    assert any("ignored a command from Redis" in r.getMessage() for r in caplog.records)
    await nothing_more(alice)
    assert (await a.health())[1]["tasks"]["down"] == []


async def test_other_nodes_out_of_reach_make_a_503_once_this_nodes_part_is_done(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str
) -> None:
    server = await gateway(
        wsgate_server, broker={"url": private_redis.url, "prefix": broker_prefix, "connect_timeout": "1s"}
    )
    alice = await user(server, "alice")
    await private_redis.stop()
    status, body = await post(server, "/api/subscribe", {"room": "r", "user_id": "alice"})
    assert (status, body["error"], body["local_clients"], body["refused"], body["nodes"]) == (
        503,
        "other nodes unreachable",
        1,
        [],
        1,
    )
    assert body["detail"].startswith("Redis did not take the command: ")
    assert body["detail"].endswith("carried out on this node only: send it again (commands are idempotent)")
    server_message(await raw(alice), "subscribed", "r", {"room": "r", "client_count": 1})


# --- one order on every node, hooks that fail or hang, races with the client's own subscribe -----------------


class HeldAuthorizer:
    """Holds `wsgate_authorize` for `room` until `release` is set (the first `times` calls only); `entered` is
    set once one is held. Raises RuntimeError for the room `boom`."""

    def __init__(self, room: str = "slow", times: int = 1) -> None:
        self.room, self.times = room, times
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    @hookimpl
    async def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool | None:
        if room == "boom":
            raise RuntimeError("the plugin is broken")
        if room == self.room and self.times > 0:
            self.times -= 1
            self.entered.set()
            await self.release.wait()
        return None


async def test_a_nodes_own_command_waits_its_turn_behind_the_others(node: Cluster) -> None:
    held = HeldAuthorizer()
    a, b = await node(), await node(held)
    alice = await user(b, "alice")
    assert await post(a, "/api/subscribe", {"room": "slow", "user_id": "alice"}) == (
        200,
        {"local_clients": 0, "refused": [], "nodes": 2},
    )
    await wait_until(held.entered)  # b carries the subscribe out: its wsgate_authorize holds it
    unsubscribe = asyncio.create_task(post(b, "/api/unsubscribe", {"room": "slow", "user_id": "alice"}))
    await nothing_more(alice)  # (b's own unsubscribe waits behind a's subscribe: not carried out before it)
    assert not unsubscribe.done()
    held.release.set()
    assert await unsubscribe == (200, {"local_clients": 1, "refused": [], "nodes": 2})
    server_message(await raw(alice), "subscribed", "slow", {"room": "slow", "client_count": 1})
    server_message(await raw(alice), "unsubscribed", "slow", {"room": "slow"})
    assert b.gateway.client(alice.id).rooms == set()  # type: ignore[union-attr]


async def test_a_command_is_carried_out_here_though_its_request_is_cancelled(wsgate_server: StartServer) -> None:
    held = HeldAuthorizer()
    server = await gateway(wsgate_server, held)
    alice = await user(server, "alice")
    run = asyncio.create_task(server.app[COMMANDS].run(Command("subscribe", "slow", user_id="alice")))
    await wait_until(held.entered)
    run.cancel()  # (a shutdown, or aiohttp cancelling the handler)
    with pytest.raises(asyncio.CancelledError):
        await run
    held.release.set()
    server_message(await raw(alice), "subscribed", "slow", {"room": "slow", "client_count": 1})


async def test_a_raising_authorize_is_an_internal_error_and_the_other_rooms_go_on(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await gateway(wsgate_server, HeldAuthorizer())
    alice = await user(server, "alice", subs=["boom", "news"])  # at connect: `connected` came, the socket stays
    server_message(await raw(alice), "subscribed", "news", {"room": "news", "client_count": 1})

    status, body = await post(server, "/api/subscribe", {"room": "boom", "user_id": "alice"})  # the API
    assert (status, body) == (
        200,
        {"local_clients": 1, "refused": [{"client_id": alice.id, "error": "internal error"}], "nodes": 1},
    )

    await alice.send({"type": "refresh", "token": token("alice", subs=["boom", "sports"]), "id": 2})  # a refresh
    server_message(await raw(alice), "subscribed", "sports", {"room": "sports", "client_count": 1})
    assert (await alice.recv())["type"] == "refreshed"
    await nothing_more(alice)
    assert server.gateway.client(alice.id).rooms == {"news", "sports"}  # type: ignore[union-attr]
    assert server.metrics.error_count("handler_error") == 3
    faults = [r for r in caplog.records if "RuntimeError: the plugin is broken" in (r.exc_text or "")]
    assert faults and all("failed (client" in r.getMessage() for r in faults)  # the plugins' fault log
    assert (await server.health())[1]["tasks"]["down"] == []


async def test_a_raising_authorize_on_another_node_skips_no_connection_and_no_command(node: Cluster) -> None:
    a, b = await node(), await node(HeldAuthorizer())
    first, second = await user(b, "alice"), await user(b, "alice")
    assert (await post(a, "/api/subscribe", {"room": "boom", "user_id": "alice"}))[1]["nodes"] == 2
    assert (await post(a, "/api/subscribe", {"room": "news", "user_id": "alice"}))[1]["nodes"] == 2
    for client in (first, second):
        server_message(await raw(client), "subscribed", "news", {"room": "news", "client_count": ANY})
    await eventually(lambda: b.metrics.error_count("handler_error") == 2)  # each connection refused, none skipped


async def test_a_hung_authorize_holds_a_command_up_for_plugins_hook_timeout_at_most(
    wsgate_server: StartServer,
) -> None:
    held = HeldAuthorizer(times=2)  # never released
    server = await gateway(wsgate_server, held, plugins={"hook_timeout": "0.5s"})
    alice, again = await user(server, "alice"), await user(server, "alice")
    status, body = await post(server, "/api/subscribe", {"room": "slow", "user_id": "alice"})
    assert (status, body["local_clients"]) == (200, 2)  # both held at once, each bounded: one wait, not two
    assert sorted(body["refused"], key=lambda refusal: refusal["client_id"]) == [
        {"client_id": client_id, "error": "internal error", "detail": "a plugin did not answer within 0.5s; try again"}
        for client_id in sorted((alice.id, again.id))
    ]
    assert server.metrics.error_count("hook_timeout") == 2
    assert (await post(server, "/api/subscribe", {"room": "next", "client_id": alice.id}))[0] == 200
    server_message(await raw(alice), "subscribed", "next", {"room": "next", "client_count": 1})


async def test_a_command_dropped_here_is_counted_and_answered_so(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    held = HeldAuthorizer()
    server = await gateway(wsgate_server, held)
    alice = await user(server, "alice")
    commands = server.app[COMMANDS]
    commands.received(Command("subscribe", "slow", user_id="alice").encode())
    await wait_until(held.entered)  # the consumer is held: what comes now waits
    for _ in range(QUEUE_SIZE):
        commands.received(Command("unsubscribe", "other", user_id="nobody").encode())
    status, body = await post(server, "/api/unsubscribe", {"room": "slow", "user_id": "alice"})
    assert (status, body["error"], body["nodes"]) == (503, "command dropped", 1)
    assert body["detail"].startswith(f"this node had {QUEUE_SIZE} commands waiting")
    assert server.metrics.error_count("command_dropped") == 1 and server.metrics.error_count("bad_command") == 0
    assert any("dropped unsubscribe for user 'alice'" in r.getMessage() for r in caplog.records)
    held.release.set()
    server_message(await raw(alice), "subscribed", "slow", {"room": "slow", "client_count": 1})


async def test_a_command_not_carried_out_here_in_time_is_answered_504(wsgate_server: StartServer) -> None:
    held = HeldAuthorizer(times=3)
    server = await gateway(wsgate_server, held, plugins={"hook_timeout": "1s"}, broker={"connect_timeout": "0.01s"})
    alice = await user(server, "alice")
    for _ in range(3):  # three commands ahead, each held for hook_timeout: longer than the answer waits
        server.app[COMMANDS].received(Command("subscribe", "slow", user_id="alice").encode())
    await wait_until(held.entered)
    status, body = await post(server, "/api/disconnect", {"user_id": "nobody"})
    assert (status, body["error"], body["nodes"]) == (504, "command outcome unknown", 1)
    await nothing_more(alice)  # (refused, each in its turn)


async def test_a_server_subscribe_racing_the_clients_own_is_told_once(wsgate_server: StartServer) -> None:
    held = HeldAuthorizer(room="r")  # holds the server's authorize, not the client's (the second call)
    server = await gateway(wsgate_server, held)
    alice = await user(server, "alice")
    command = asyncio.create_task(post(server, "/api/subscribe", {"room": "r", "client_id": alice.id}))
    await wait_until(held.entered)
    answer = await alice.request({"type": "subscribe", "room": "r", "id": 1})
    assert (answer["type"], answer["id"]) == ("subscribed", 1)
    held.release.set()
    assert (await command)[0] == 200
    await nothing_more(alice)  # no second `subscribed`


async def test_an_unsubscribe_during_the_clients_own_subscribe_comes_after_its_answer(
    wsgate_server: StartServer,
) -> None:
    server = await gateway(wsgate_server, history={"rooms": ["h:*"]})
    broker = server.app[BROKER]
    reading, release = asyncio.Event(), asyncio.Event()
    read = broker.history_position

    async def held_read(room: str) -> Any:  # the history read of the client's subscribe, held
        reading.set()
        await release.wait()
        return await read(room)

    broker.history_position = held_read  # type: ignore[method-assign]
    alice = await user(server, "alice")
    await alice.send({"type": "subscribe", "room": "h:1", "id": 1})
    await wait_until(reading)
    assert await post(server, "/api/unsubscribe", {"room": "h:1", "client_id": alice.id}) == (
        200,
        {"local_clients": 1, "refused": [], "nodes": 1},
    )
    release.set()
    answer = await alice.recv()  # its request answered: subscribed, then the server's unsubscribed
    assert (answer["type"], answer["id"], "server" in answer) == ("subscribed", 1, False)
    server_message(await raw(alice), "unsubscribed", "h:1", {"room": "h:1"})
    await nothing_more(alice)
    assert server.gateway.client(alice.id).rooms == set()  # type: ignore[union-attr]


async def test_a_server_subscribe_after_a_waiting_unsubscribe_has_the_last_word(wsgate_server: StartServer) -> None:
    """Second review: an unsubscribe held until the client's subscribe in flight was answered ran after a later
    subscribe, so the client ended out of the room although subscribe came last."""
    server = await gateway(wsgate_server, history={"rooms": ["h:*"]})
    broker = server.app[BROKER]
    reading, release = asyncio.Event(), asyncio.Event()
    read = broker.history_position

    async def held_read(room: str) -> Any:
        reading.set()
        await release.wait()
        return await read(room)

    broker.history_position = held_read
    alice = await user(server, "alice")
    await alice.send({"type": "subscribe", "room": "h:1", "id": 1})
    await wait_until(reading)
    assert (await post(server, "/api/unsubscribe", {"room": "h:1", "client_id": alice.id}))[0] == 200
    assert (await post(server, "/api/subscribe", {"room": "h:1", "client_id": alice.id}))[0] == 200
    release.set()
    assert json.loads(await raw(alice))["id"] == 1  # its own subscribe's answer
    await nothing_more(alice)
    assert server.gateway.client(alice.id).rooms == {"h:1"}  # type: ignore[union-attr]


async def test_an_unsubscribe_during_a_server_subscribes_authorization_comes_after_it(
    wsgate_server: StartServer,
) -> None:
    """Second review: a server subscribe (here the token's subs, at connect) was not in flight until its
    authorization returned: an unsubscribe meanwhile found nothing to do, and the client stayed in the room."""
    held = HeldAuthorizer(room="r")
    server = await gateway(wsgate_server, held)
    alice = await user(server, "alice", subs=["r"])
    await wait_until(held.entered)
    assert (await post(server, "/api/unsubscribe", {"room": "r", "client_id": alice.id}))[0] == 200
    held.release.set()
    server_message(await raw(alice), "subscribed", "r", {"room": "r", "client_count": 1})
    server_message(await raw(alice), "unsubscribed", "r", {"room": "r"})
    assert server.gateway.client(alice.id).rooms == set()  # type: ignore[union-attr]


async def test_a_subscribe_that_runs_out_of_time_while_joining_leaves_no_member_behind(
    wsgate_server: StartServer,
) -> None:
    """Second review: the time limit fired inside the join (Redis slow to confirm the room), after the hub had
    taken the client in: it stayed in a room it was never told about."""
    server = await gateway(wsgate_server, plugins={"hook_timeout": "0.2s"})
    never = asyncio.Event()

    async def stalled(room: str) -> None:
        await never.wait()  # (Redis never confirms the room: the deadline ends it)

    server.app[BROKER].wait_receiving = stalled
    alice = await user(server, "alice")
    status, answer = await post(server, "/api/subscribe", {"room": "late", "client_id": alice.id})
    assert status == 200 and answer["refused"][0]["error"] == "internal error"
    await nothing_more(alice)
    assert server.gateway.client(alice.id).rooms == set()  # type: ignore[union-attr]
    assert "late" not in server.hub.rooms


async def test_a_command_handed_over_without_an_answer_is_carried_out_once_or_answered_504(
    wsgate_server: StartServer,
) -> None:
    """Second review: a command whose PUBLISH timed out was taken as never sent and applied here from the local
    queue, though Redis may have run it: then it was applied twice, out of Redis's order."""
    from wsgate.broker.base import OutcomeUnknown

    server = await gateway(wsgate_server)
    broker = server.app[BROKER]
    sent = broker.command

    async def went_out_unanswered(payload: bytes) -> int:
        await sent(payload)  # it went out (it comes back through the channel)...
        raise OutcomeUnknown("Redis did not answer within 2s")  # ...but no answer said so

    async def lost(payload: bytes) -> int:
        raise OutcomeUnknown("Redis did not answer within 2s")

    alice = await user(server, "alice")
    broker.command = went_out_unanswered
    assert await post(server, "/api/subscribe", {"room": "r", "client_id": alice.id}) == (
        200,
        {"local_clients": 1, "refused": [], "nodes": 1},
    )
    server_message(await raw(alice), "subscribed", "r", {"room": "r", "client_count": 1})
    await nothing_more(alice)  # once
    server.app[COMMANDS]._answer_wait = 0.2  # (nothing comes back: the wait ends at its bound)
    broker.command = lost
    status, answer = await post(server, "/api/unsubscribe", {"room": "r", "client_id": alice.id})
    assert (status, answer["error"]) == (504, "command outcome unknown")
    await nothing_more(alice)
    assert server.gateway.client(alice.id).rooms == {"r"}  # type: ignore[union-attr]
