"""Every hook in every form pluggy defines: called in pluggy's order, or refused at start-up with one line.

Forms: plain, tryfirst, trylast (called per pluggy's rules), wrapper=True and hookwrapper=True
(refused on every hook: wsgate awaits each implementation, so a wrapper could not see results).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from typing import Any

import aiohttp
import pluggy
import pytest
from aiohttp import web

from wsgate import hookimpl, hookspecs
from wsgate.app import create_app
from wsgate.plugins import HOOKS, TABLE_HOOKS
from wsgate.registry import PluginError
from wsgate.testing import StartServer, make_settings, wait_until

from .processes import environment, run_wsgate

NO_EXAMPLES = {"disabled": ["echo", "users", "token_auth"]}
ORDERED_FORMS: dict[str, dict[str, bool]] = {"plain": {}, "tryfirst": {"tryfirst": True}, "trylast": {"trylast": True}}
WRAPPER_FORMS: dict[str, dict[str, bool]] = {
    "wrapper=True": {"wrapper": True},
    "hookwrapper=True": {"hookwrapper": True},
}


class Impersonator:
    """The handed input: a new-style wrapper on wsgate_authenticate, a form pluggy documents."""

    @hookimpl(wrapper=True)
    def wsgate_authenticate(self, request: web.Request) -> Generator[None, object, object]:
        identity = yield
        return identity


async def test_a_wrapper_on_authenticate_stops_start_up_naming_plugin_and_hook() -> None:
    with pytest.raises(PluginError) as refused:
        await create_app(make_settings(auth={"required": True}), plugins=[Impersonator()])
    message = str(refused.value)
    assert message.startswith(
        "plugin 'Impersonator': wsgate_authenticate is a hook wrapper (wrapper=True), which wsgate does not support"
    ), message
    assert "\n" not in message


async def test_a_skipped_wrapper_gives_no_anonymous_client_an_identity(wsgate_server: StartServer) -> None:
    """plugins.strict = false skips the plugin: an anonymous client is still refused by auth.required."""
    server = await wsgate_server(Impersonator(), plugins={**NO_EXAMPLES, "strict": False}, auth={"required": True})
    assert server.plugins.get("Impersonator") is None
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw()
    assert refused.value.status == 401


class Calls(list[tuple[str, str]]):
    """(hook, plugin label) in call order; `disconnected` is set once three plugins saw a client leave."""

    def __init__(self) -> None:
        super().__init__()
        self.disconnected = asyncio.Event()

    def append(self, call: tuple[str, str]) -> None:
        super().append(call)
        if sum(hook == "wsgate_client_disconnected" for hook, _ in self) == 3:
            self.disconnected.set()


def _plugin(label: str, calls: Calls, forms: dict[str, dict[str, bool]]) -> object:
    """An object named `label` implementing every hook; `forms[hook]` are that hook's hookimpl options.

    Each implementation records (hook, label) and returns what asks nothing of anyone: {} for the
    table hooks, None for the others. Wrappers are generators, as pluggy requires.
    """
    namespace: dict[str, Any] = {}
    for hook in HOOKS:
        opts = forms.get(hook, {})
        result: object = {} if hook in TABLE_HOOKS else None

        if opts.get("wrapper") or opts.get("hookwrapper"):

            def impl(self: object, _hook: str = hook) -> Iterator[None]:
                calls.append((_hook, label))
                yield
        else:

            def impl(self: object, _hook: str = hook, _result: object = result) -> object:  # type: ignore[misc]
                calls.append((_hook, label))
                return _result

        namespace[hook] = hookimpl(
            impl,
            tryfirst=opts.get("tryfirst", False),
            trylast=opts.get("trylast", False),
            wrapper=opts.get("wrapper", False),
            hookwrapper=opts.get("hookwrapper", False),
        )
    plugin: object = type(label, (), namespace)()
    return plugin


def _pluggy_order(hook: str, form: dict[str, bool]) -> list[str]:
    """The order in which pluggy itself calls A, B (in `form`) and C, registered in that order."""
    calls = Calls()
    pm = pluggy.PluginManager("wsgate")
    pm.add_hookspecs(hookspecs)
    for label in "ABC":
        pm.register(_plugin(label, calls, {hook: form} if label == "B" else {}), name=label)
    caller = getattr(pm.hook, hook)
    caller(**dict.fromkeys(caller.spec.argnames))
    return [label for _, label in calls]


@pytest.mark.parametrize("form", ORDERED_FORMS)
@pytest.mark.parametrize("hook", HOOKS)
async def test_each_hook_follows_pluggys_order(wsgate_server: StartServer, hook: str, form: str) -> None:
    calls = Calls()
    plugins = [_plugin(label, calls, {hook: ORDERED_FORMS[form]} if label == "B" else {}) for label in "ABC"]
    server = await wsgate_server(*plugins, plugins=NO_EXAMPLES)
    client = await server.connect()  # authenticate, client_connected
    await client.subscribe("r")  # authorize
    await client.ws.close()
    await wait_until(calls.disconnected)  # client_disconnected
    await server.test_server.close()  # shutdown
    called = [label for name, label in calls if name == hook]
    if hook in TABLE_HOOKS:  # merged tables: order cannot change the outcome, registration order is kept
        assert called == ["A", "B", "C"]
    else:
        assert called == _pluggy_order(hook, ORDERED_FORMS[form])
    expected = {"plain": ["C", "B", "A"], "tryfirst": ["B", "C", "A"], "trylast": ["C", "A", "B"]}[form]
    assert _pluggy_order(hook, ORDERED_FORMS[form]) == expected  # what pluggy's rules say, spelled out


@pytest.mark.parametrize("form", WRAPPER_FORMS)
@pytest.mark.parametrize("hook", HOOKS)
async def test_each_hook_refuses_wrappers_with_one_line(hook: str, form: str) -> None:
    calls = Calls()
    with pytest.raises(PluginError) as refused:
        await create_app(make_settings(), plugins=[_plugin("Wrapping", calls, {hook: WRAPPER_FORMS[form]})])
    assert str(refused.value).startswith(f"plugin 'Wrapping': {hook} is a hook wrapper ({form}), ")
    assert "\n" not in str(refused.value)
    assert calls == []  # refused before anything was called


class PlainGenerator:
    """A generator that forgot wrapper=True: its generator object would be the identity."""

    @hookimpl
    def wsgate_authenticate(self) -> Iterator[object]:
        yield {"user": "admin"}


class AsyncGenerator:
    @hookimpl
    async def wsgate_authorize(self) -> Any:
        yield True


@pytest.mark.parametrize(
    ("plugin", "line"),
    [
        (PlainGenerator(), "plugin 'PlainGenerator': wsgate_authenticate is a generator function"),
        (AsyncGenerator(), "plugin 'AsyncGenerator': wsgate_authorize is a generator function"),
    ],
)
async def test_generator_implementations_are_refused(plugin: object, line: str) -> None:
    with pytest.raises(PluginError, match=f"^{line}"):
        await create_app(make_settings(), plugins=[plugin])


async def test_wsgate_check_refuses_a_wrapper_with_one_line(tmp_path: Any) -> None:
    (tmp_path / "wrapping_plugin.py").write_text(
        "from wsgate import hookimpl\n\n"
        "@hookimpl(hookwrapper=True)\ndef wsgate_authorize(client, action, room):\n    yield\n"
    )
    env = environment(PYTHONPATH=str(tmp_path), WSGATE_PLUGINS__MODULES='["wrapping_plugin"]')
    code, stderr = await run_wsgate("check", env=env)
    assert code == 2, stderr
    assert stderr.strip().startswith(
        "wsgate: plugin 'wrapping_plugin': wsgate_authorize is a hook wrapper (hookwrapper=True)"
    ), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
