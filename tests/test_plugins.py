"""The built-in message types go through the plugin path; conflicts name both plugins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wsgate import hookimpl
from wsgate.app import create_app
from wsgate.registry import HandlerRegistry, PluginError
from wsgate.testing import StartServer, make_settings

from .processes import environment, run_wsgate, start_wsgate


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
    assert builtin == dict.fromkeys(
        ["subscribe", "unsubscribe", "publish", "broadcast", "ping", "history", "presence"], "messages"
    )


async def test_disabling_the_builtin_plugin_removes_its_types(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins={"disabled": ["messages"]})
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["error"] == "unknown message type"


# --- settings that name things: a name that names nothing is reported, never silent ----------------


async def test_an_unknown_disabled_name_is_a_warning_naming_the_closest_plugin(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await wsgate_server(plugins={"disabled": ["dashbord", "messages"]})  # a built-in left off by its settings
    line = "plugins.disabled names 'dashbord', which is no plugin here; did you mean 'dashboard'?"
    assert server.plugins.problems == (line,)
    assert line in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_a_plugin_table_naming_no_plugin_is_reported(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins={"mesages": {"x": 1}, "zzz": {"y": 2}, "messages": {"z": 3}})
    assert len(server.plugins.problems) == 2, server.plugins.problems
    assert server.plugins.problems[0] == "settings table plugins.mesages names no plugin here; did you mean 'messages'?"
    assert server.plugins.problems[1].startswith("settings table plugins.zzz names no plugin here (plugins: ")


class Unmarked:
    """Forgot @hookimpl: pluggy ignores the function without a word."""

    def wsgate_message_handlers(self) -> dict[str, object]:
        return {}


async def test_a_plugin_implementing_no_hook_is_reported_by_name(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Unmarked())
    assert server.plugins.problems == (
        "plugin 'Unmarked' (registered by the application) implements no wsgate hook "
        "(not marked with @wsgate.hookimpl: wsgate_message_handlers)",
    )


async def test_a_misspelt_hook_names_the_closest_hook() -> None:
    class Typo:
        @hookimpl
        def wsgate_autorize(self) -> None:
            return None

    with pytest.raises(
        PluginError, match=r"^plugin 'Typo': unknown hook 'wsgate_autorize'.*; did you mean 'wsgate_authorize'\?$"
    ):
        await create_app(make_settings(), plugins=[Typo()])


async def test_wsgate_check_exits_2_on_a_disabled_typo_and_the_server_warns() -> None:
    """The handed input: `ecko` in plugins.disabled (the example plugin `echo` is installed by `make test`)."""
    env = environment(WSGATE_PLUGINS__DISABLED='["ecko"]')
    line = "plugins.disabled names 'ecko', which is no plugin here; did you mean 'echo'?"
    code, stderr = await run_wsgate("check", env=env)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1] == f"wsgate: {line}", stderr
    server = await start_wsgate(env=env)  # a settings file shared by deployments may name a plugin one lacks
    try:
        assert any(line in logged for logged in server.lines), server.lines
    finally:
        await server.kill()


async def test_wsgate_check_exits_2_on_a_module_implementing_no_hook(tmp_path: Path) -> None:
    (tmp_path / "idle_plugin.py").write_text("def helper():\n    return 1\n")
    env = environment(PYTHONPATH=str(tmp_path), WSGATE_PLUGINS__MODULES='["idle_plugin"]')
    code, stderr = await run_wsgate("check", env=env)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1] == (
        "wsgate: plugin 'idle_plugin' (settings: plugins.modules) implements no wsgate hook"
    ), stderr


async def test_wsgate_check_exits_2_on_a_variable_that_is_no_setting() -> None:
    code, stderr = await run_wsgate("check", env=environment(WEBSOCKET_PORTT="9000"))
    assert code == 2, stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("wsgate: environment variable WEBSOCKET_PORTT is not a setting and is ignored; did you mean")
    ), stderr
