"""Authorization is not decided once, at the handshake: a token's rights end at its `exp`, on open sockets too.

A connection opened with a token is closed at `exp` (plus `auth.jwt.leeway`) with 4001 "token expired",
unless the client sent a fresh token first (`refresh`). Tokens here live a second or two: the tests wait
for the close frame itself, bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from wsgate.sdk.client import GatewayClient
from wsgate.testing import Peer, Server, StartServer

from .test_auth import NO_EXAMPLE_AUTH, SECRET, bearer, refusal, token


async def expiring_server(wsgate_server: StartServer, **auth: Any) -> Server:
    return await wsgate_server(auth={"jwt": {"secret": SECRET, "leeway": "0s"}, **auth}, plugins=NO_EXAMPLE_AUTH)


def short_token(seconds: float = 1.5, **claims: Any) -> str:
    return token(exp=int(time.time() + seconds) + 1, **claims)  # whole seconds: exp is an integer


@pytest.mark.slow
async def test_a_connection_is_closed_when_its_token_expires(wsgate_server: StartServer) -> None:
    """The field report: a JWT expiring in 2 s still subscribed to an identity-only room 3 s later."""
    server = await expiring_server(wsgate_server, rooms=["private-* = identity"])
    expiring = short_token()
    client = Peer(await server.raw(**bearer(expiring)))
    hello = await client.recv()
    # told when, in milliseconds: the token's exp (leeway 0 s)
    assert hello["data"]["expires_at"] == jwt.decode(expiring, options={"verify_signature": False})["exp"] * 1000
    await client.subscribe("private-1")
    closing = await client.closed()
    assert (closing.data, closing.extra) == (4001, "token expired")
    assert time.time() >= hello["data"]["expires_at"] / 1000 - 0.05  # not before its time
    status, body = await refusal(server, **bearer(expiring))  # a new connection with it: refused alike
    assert (status, body["detail"]) == (401, "the token has expired")
    assert (
        server.metrics.registry.get_sample_value("websocket_connections_closed_total", {"reason": "token_expired"}) == 1
    )


@pytest.mark.slow
async def test_a_refreshed_token_keeps_the_connection_open(wsgate_server: StartServer) -> None:
    server = await expiring_server(wsgate_server)
    client = Peer(await server.raw(**bearer(short_token(1))))
    first = (await client.recv())["data"]["expires_at"]
    answer = await client.request({"type": "refresh", "token": token(exp=int(time.time()) + 600)})
    assert answer["type"] == "refreshed" and answer["data"]["expires_at"] > first + 500_000
    await asyncio.sleep(max(0.0, first / 1000 - time.time()) + 0.3)  # past the first token's expiry: time itself
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_refresh_must_be_a_valid_token_of_the_same_user(wsgate_server: StartServer) -> None:
    server = await expiring_server(wsgate_server)
    client = Peer(await server.raw(**bearer(short_token(60))))
    await client.recv()
    for request, error, detail in [
        ({"type": "refresh"}, "invalid JSON format", "field 'token' must be a non-empty string"),
        ({"type": "refresh", "token": "not.a.token"}, "invalid token", "the token is malformed"),
        ({"type": "refresh", "token": token(exp=int(time.time()) - 10)}, "invalid token", "the token has expired"),
        (
            {"type": "refresh", "token": token(sub="mallory")},
            "not allowed",
            "the new token is for another user (its sub differs)",
        ),
    ]:
        answer = await client.request(request)
        assert (answer["error"], answer.get("detail")) == (error, detail)
    anonymous = await server.connect()
    answer = await anonymous.request({"type": "refresh", "token": token()})
    assert (answer["error"], answer["detail"]) == ("not allowed", "this connection was not opened with a token")


async def test_rooms_the_new_claims_no_longer_allow_are_left(wsgate_server: StartServer) -> None:
    server = await expiring_server(wsgate_server)
    client = Peer(await server.raw(**bearer(token(rooms=["a*", "b*"]))))
    await client.recv()
    await client.subscribe("a1")
    await client.subscribe("b1")
    await client.send({"type": "refresh", "token": token(rooms=["a*"])})
    left = await client.recv()
    assert (left["type"], left["room"]) == ("unsubscribed", "b1")
    assert (await client.recv())["type"] == "refreshed"
    assert next(iter(server.hub.connections.values())).rooms == {"a1"}


@pytest.mark.slow
async def test_an_operators_admin_token_ends_too(wsgate_server: StartServer) -> None:
    """The field report: a dashboard socket with an admin JWT expiring in 2 s could still tail, publish and
    disconnect 8 s later."""
    server = await wsgate_server(
        auth={"jwt": {"secret": SECRET, "leeway": "0s"}},
        plugins=NO_EXAMPLE_AUTH,
        dashboard={"enabled": True, "password": "a-long-operator-password"},
    )
    operator = Peer(await server.raw(**bearer(short_token(admin=True))))
    await operator.recv()
    assert (await operator.request({"type": "dashboard_tail", "room": "private"}))["type"] == "dashboard_tailing"
    closing = await operator.closed()
    assert (closing.data, closing.extra) == (4001, "token expired")


async def test_a_refresh_with_fewer_rights_loses_the_tails_and_rooms_of_the_old_token(
    wsgate_server: StartServer,
) -> None:
    """Every grant of the old token ends with it: an operator's tail of a `nobody` room, the rooms its claims
    allowed, its operator messages."""
    server = await wsgate_server(
        auth={"jwt": {"secret": SECRET}, "rooms": ["ops:* = nobody", "team-* = claim:team"]},
        plugins=NO_EXAMPLE_AUTH,
        dashboard={"enabled": True, "password": "a-long-operator-password"},
    )
    client = Peer(await server.raw(**bearer(token(admin=True, team=True))))
    await client.recv()
    assert (await client.request({"type": "dashboard_tail", "room": "ops:secret"}))["type"] == "dashboard_tailing"
    await client.subscribe("team-1")
    await client.subscribe("public")
    await client.send({"type": "refresh", "token": token()})  # the same user, no longer admin nor in the team
    left = [await client.recv(), await client.recv()]
    assert sorted((m["type"], m["room"]) for m in left) == [("unsubscribed", "ops:secret"), ("unsubscribed", "team-1")]
    assert (await client.recv())["type"] == "refreshed"
    await server.gateway.publish("ops:secret", "for operators")
    await server.gateway.publish("team-1", "for the team")
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # neither arrived first
    refused = await client.request({"type": "dashboard_tail", "room": "ops:secret"})
    assert (refused["error"], refused["detail"]) == ("not allowed", "dashboard messages are for operators")
    assert next(iter(server.hub.connections.values())).rooms == {"public"}


@pytest.mark.slow
async def test_the_python_client_refreshes_by_itself(wsgate_server: StartServer) -> None:
    server = await expiring_server(wsgate_server)
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(short_token(1.5))
        return issued[-1]

    async with GatewayClient(server.url("/ws"), get_token=get_token) as client:
        expires = client.expires_at
        assert expires is not None
        async with asyncio.timeout(10):
            while client.refreshes < 2:  # two refreshes: past two expiries on one connection
                await asyncio.sleep(0.05)  # the client's own timer works: there is no event to wait on
        assert client.connects == 1 and len(issued) >= 3  # (a third refresh may be on its way: the loop polls)
        await client.ping()


async def test_anonymous_connections_never_expire(server: Server) -> None:
    client = await server.connect()
    assert "expires_at" not in (await client.request({"type": "ping"}))
    assert server.hub.connections[client.id]._expiry is None
