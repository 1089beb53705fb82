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


@pytest.mark.parametrize(("headers", "reason"), [
    ({"Authorization": "Bearer wrong"}, "invalid token"),
    ({"Authorization": "Basic t-alice"}, "invalid token"),
    ({}, "missing token"),
])
async def test_refused_before_the_upgrade_with_401(wsgate_server: StartServer, headers: dict[str, str], reason: str) -> None:
    server = await wsgate_server(wsgate_token_auth, plugins={"token_auth": {**SETTINGS["token_auth"], "required": True}})
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
