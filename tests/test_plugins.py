"""The built-in message types go through the plugin path; conflicts name both plugins."""

from __future__ import annotations

import pytest

from wsgate.registry import HandlerRegistry, PluginError
from wsgate.testing import StartServer


async def handler(client: object, message: object) -> None:
    return None


def test_two_plugins_claiming_one_type_name_both() -> None:
    registry = HandlerRegistry()
    registry.register("messages", {"ping": handler})
    with pytest.raises(PluginError, match="message type 'ping' is claimed by both plugin 'messages' and plugin 'mine'"):
        registry.register("mine", {"ping": handler})


@pytest.mark.parametrize(
    ("handlers", "message"),
    [
        (["ping"], "wsgate_message_handlers must return a mapping, not list"),
        ({"": handler}, "registers an invalid message type ''"),
        ({"x": "not callable"}, "registers a non-callable handler for 'x'"),
    ],
)
def test_malformed_registrations_are_refused(handlers: object, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        HandlerRegistry().register("bad", handlers)


async def test_builtin_types_are_registered_by_the_messages_plugin(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    owners = server.registry.owners()
    builtin = {kind: owner for kind, owner in owners.items() if owner == "messages"}
    assert builtin == dict.fromkeys(["subscribe", "unsubscribe", "publish", "broadcast", "ping", "history", "presence"], "messages")


async def test_disabling_the_builtin_plugin_removes_its_types(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins={"disabled": ["messages"]})
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["error"] == "unknown message type"
