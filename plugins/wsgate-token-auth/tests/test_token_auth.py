"""Token authentication before the upgrade and private rooms, over real connections."""

from __future__ import annotations

import aiohttp
import pytest
import wsgate_token_auth

from wsgate.testing import StartServer

SETTINGS = {"token_auth": {"tokens": {"t-alice": "alice"}, "private_rooms": ["private-*"]}}


async def test_a_valid_token_becomes_the_identity(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_token_auth, plugins=SETTINGS)
    client = await server.connect(headers={"Authorization": "Bearer t-alice"})
    hello = await client.recv()
    assert hello == {"type": "authenticated", "data": {"user": "alice"}, "timestamp": hello["timestamp"]}
    assert server.hub.connections[client.id].identity == {"user": "alice"}
    assert (await client.subscribe("private-ops"))["room"] == "private-ops"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Authorization": "Bearer wrong"}, "invalid token"),
        ({"Authorization": "Basic t-alice"}, "invalid token"),
        ({}, "missing token"),
    ],
)
async def test_refused_before_the_upgrade_with_401(
    wsgate_server: StartServer, headers: dict[str, str], reason: str
) -> None:
    server = await wsgate_server(
        wsgate_token_auth, plugins={"token_auth": {**SETTINGS["token_auth"], "required": True}}
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(headers=headers)
    assert refused.value.status == 401
    async with server.session.get(server.url("/ws"), headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": reason}
    assert (await server.health())[1]["clients"] == 0


async def test_anonymous_clients_stay_out_of_private_rooms(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_token_auth, plugins=SETTINGS)
    anonymous = await server.connect()
    assert (await anonymous.request({"type": "subscribe", "room": "private-ops"}))["error"] == "not allowed"
    assert (await anonymous.subscribe("lobby"))["room"] == "lobby"
    assert server.metrics.error_count("not_allowed") == 1


async def test_private_room_patterns_with_many_stars(wsgate_server: StartServer) -> None:
    """Issue 20, item 7: patterns are globs matched without regular expressions (`wsgate.rooms.glob_match`);
    the answers stay fnmatch's, for a pattern whose regex translation backtracks on runs of colons."""
    settings = {"token_auth": {"tokens": {"t-alice": "alice"}, "private_rooms": ["*:*:*:*:audit", "ops-[0-9]"]}}
    server = await wsgate_server(wsgate_token_auth, plugins=settings)
    anonymous = await server.connect()
    for room in (":" * 200 + "audit", "a:b:c:d:audit", "ops-7"):
        assert (await anonymous.request({"type": "subscribe", "room": room}))["error"] == "not allowed", room
    for room in (":" * 250, ":" * 200 + "audix", "a:b:c:audit", "ops-x"):
        assert (await anonymous.subscribe(room))["room"] == room
    alice = await server.connect(headers={"Authorization": "Bearer t-alice"})
    await alice.recv()  # authenticated
    assert (await alice.subscribe("a:b:c:d:audit"))["room"] == "a:b:c:d:audit"


@pytest.mark.parametrize("given", ["t-alic", "t-alice2", "T-ALICE", "", "t-alice t-alice"])
async def test_only_the_exact_token_is_accepted(wsgate_server: StartServer, given: str) -> None:
    server = await wsgate_server(wsgate_token_auth, plugins=SETTINGS)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(headers={"Authorization": f"Bearer {given}"})
    assert refused.value.status == 401
