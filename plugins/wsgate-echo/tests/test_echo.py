"""The echo plugin over a real connection (fixtures from wsgate's pytest plugin, wsgate.testing)."""

from __future__ import annotations

import wsgate_echo

from wsgate.testing import StartServer


async def test_echo_answers_with_the_same_data(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_echo)
    client = await server.connect()
    reply = await client.request({"type": "echo", "data": {"nested": [1, "two", None]}})
    assert reply["type"] == "echo"
    assert reply["data"] == {"nested": [1, "two", None]}
    assert isinstance(reply["timestamp"], int)


async def test_echo_without_data_is_an_error(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_echo)
    client = await server.connect()
    reply = await client.request({"type": "echo"})
    assert (reply["type"], reply["error"]) == ("error", "nothing to echo")
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # still connected


async def test_echo_is_discovered_through_its_entry_point(wsgate_server: StartServer) -> None:
    server = await wsgate_server()  # no explicit plugin: the installed entry point provides it
    assert server.registry.owners()["echo"] == "echo"
