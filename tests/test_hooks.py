"""Every plugin hook through a real gateway and real connections, and every way a plugin can fail."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wsgate import Client, Message, hookimpl
from wsgate.app import create_app
from wsgate.gateway import Gateway
from wsgate.registry import PluginError
from wsgate.testing import StartServer, make_settings, wait_until

NO_EXAMPLES = {"disabled": ["echo", "users", "token_auth"]}  # the installed example plugins stay out


class Recorder:
    """A plugin that records the hook calls it receives (hooks may be sync or async)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.disconnected = asyncio.Event()

    @hookimpl
    async def wsgate_startup(self, gateway: Gateway) -> None:
        await asyncio.sleep(0)  # genuinely async
        self.calls.append(("startup", gateway))

    @hookimpl
    def wsgate_shutdown(self, gateway: Gateway) -> None:
        self.calls.append(("shutdown", gateway))

    @hookimpl
    async def wsgate_client_connected(self, client: Client) -> None:
        self.calls.append(("connected", client.id))

    @hookimpl
    def wsgate_client_disconnected(self, client: Client) -> None:
        self.calls.append(("disconnected", (client.id, frozenset(client.rooms))))
        self.disconnected.set()


async def test_life_cycle_hooks(wsgate_server: StartServer) -> None:
    recorder = Recorder()
    server = await wsgate_server(recorder, plugins=NO_EXAMPLES)
    assert recorder.calls == [("startup", server.gateway)]
    client = await server.connect()
    await client.subscribe("r")
    await client.ws.close()
    await wait_until(recorder.disconnected)
    assert recorder.calls[1:] == [("connected", client.id), ("disconnected", (client.id, frozenset()))]
    await server.test_server.close()
    assert recorder.calls[-1] == ("shutdown", server.gateway)


async def boom(client: Client, message: Message) -> None:
    raise RuntimeError("handler bug")


class Failing:
    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Any]:
        return {"boom": boom}


async def test_a_handler_that_raises_answers_internal_error_and_keeps_everything_running(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(Failing())
    client = await server.connect()
    reply = await client.request({"type": "boom"})
    assert (reply["type"], reply["error"]) == ("error", "internal error")
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert client.id in tracebacks[0].getMessage() and "'boom'" in tracebacks[0].getMessage()
    assert server.metrics.error_count("handler_error") == 1


class Sender:
    """Handlers may await client.send or not; both deliver."""

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Any]:
        async def twice(client: Client, message: Message) -> None:
            client.send({"type": "first"})
            await client.send({"type": "second", "timestamp": 1})
            await client.gateway.publish("room", message.data, type="third")

        return {"twice": twice}


async def test_handlers_see_the_client_the_message_and_the_gateway(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Sender())
    client = await server.connect()
    await client.subscribe("room")
    await client.send({"type": "twice", "room": "room", "data": {"x": 1}})
    first, second, third = [await client.recv() for _ in range(3)]
    assert first["type"] == "first" and isinstance(first["timestamp"], int)
    assert second == {"type": "second", "timestamp": 1}
    assert (third["type"], third["room"], third["data"]) == ("third", "room", {"x": 1})


class Auth:
    """Accepts `?user=NAME`, refuses `?user=mallory` with 403, crashes on `?user=crash`."""

    @hookimpl
    async def wsgate_authenticate(self, request: web.Request) -> object | None:
        user = request.query.get("user")
        if user == "mallory":
            raise web.HTTPForbidden(text="go away")
        if user == "crash":
            raise RuntimeError("auth bug")
        if user == "latin1":  # a body that is no UTF-8
            refusal = web.HTTPUnauthorized(content_type="text/plain")
            refusal.body = "nicht erlaubt: \xe4".encode("latin-1")
            raise refusal
        return {"user": user} if user else None


class Guard:
    """Denies `secret` with a text, `closed` with False; allows everything else (no opinion)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    @hookimpl
    async def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool | str | None:
        self.asked.append((action, room))
        if room == "secret":
            return "members only"
        if room == "closed" or (action == "broadcast" and client.identity is None):
            return False
        return None


async def test_authentication_attaches_an_identity_or_refuses_before_the_upgrade(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(Auth(), plugins=NO_EXAMPLES)
    client = await server.connect(params={"user": "ada"})
    assert server.hub.connections[client.id].identity == {"user": "ada"}
    anonymous = await server.connect()
    assert server.hub.connections[anonymous.id].identity is None
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(params={"user": "mallory"})
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as crashed:
        await server.raw(params={"user": "crash"})
    assert crashed.value.status == 500
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info and r.exc_info[1]] == [("auth bug",)]
    assert (await server.health())[1]["clients"] == 2


async def test_a_refused_client_is_logged_naming_the_plugin_and_its_reason(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: whatever plugin refuses a client is named in the log line (its registered name), with why."""
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await wsgate_server(Auth(), plugins=NO_EXAMPLES)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await server.raw(params={"user": "mallory"})
    refusals = [r for r in caplog.records if "refused a WebSocket" in r.getMessage()]
    assert [(r.levelno, r.getMessage(), r.plugin) for r in refusals] == [  # type: ignore[attr-defined]
        (logging.INFO, "plugin 'Auth' refused a WebSocket from 127.0.0.1: 403 Forbidden: go away", "Auth")
    ]


async def test_authorization_of_subscribe_publish_and_broadcast(wsgate_server: StartServer) -> None:
    guard = Guard()
    server = await wsgate_server(Auth(), guard, plugins=NO_EXAMPLES)
    client = await server.connect()
    assert (await client.request({"type": "subscribe", "room": "secret"}))["error"] == "members only"
    assert (await client.request({"type": "subscribe", "room": "closed"}))["error"] == "not allowed"
    assert (await client.request({"type": "broadcast", "data": 1}))["error"] == "not allowed"
    await client.subscribe("open")
    assert (await client.request({"type": "publish", "room": "open", "data": 2}))["data"] == 2
    member = await server.connect(params={"user": "ada"})
    assert (await member.request({"type": "broadcast", "data": 3}))["data"] == 3
    assert guard.asked == [
        ("subscribe", "secret"),
        ("subscribe", "closed"),
        ("broadcast", None),
        ("subscribe", "open"),
        ("publish", "open"),
        ("broadcast", None),
    ]


async def test_firstresult_is_decided_after_awaiting(wsgate_server: StartServer) -> None:
    class Allow:
        @hookimpl(tryfirst=True)
        async def wsgate_authorize(self) -> bool:
            return True  # asked first: its (awaited) answer decides

    guard = Guard()
    server = await wsgate_server(guard, Allow(), plugins=NO_EXAMPLES)
    client = await server.connect()
    assert (await client.subscribe("secret"))["room"] == "secret"
    assert guard.asked == []


async def test_per_message_hooks_are_skipped_when_nobody_implements_them(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins=NO_EXAMPLES)
    plugins = server.plugins
    assert (plugins.authenticates, plugins.authorizes, plugins.watches_clients) == (False, False, False)
    guarded = await wsgate_server(Guard(), plugins=NO_EXAMPLES)
    assert guarded.plugins.authorizes is True


class Clock:
    """A service with a start/close life cycle, provided through wsgate_services."""

    def __init__(self) -> None:
        self.state = "new"

    async def start(self) -> None:
        self.state = "started"

    async def close(self) -> None:
        self.state = "closed"

    def now(self) -> str:
        return "tea time"


class ClockPlugin:
    def __init__(self) -> None:
        self.clock = Clock()

    @hookimpl
    def wsgate_services(self, gateway: Gateway) -> Mapping[str, object]:
        return {"clock": self.clock}

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Any]:
        async def time(client: Client, message: Message) -> None:
            await client.send({"type": "time", "data": client.gateway.services["clock"].now()})  # type: ignore[attr-defined]

        return {"time": time}


async def test_services_are_reachable_and_their_life_cycle_is_owned_by_the_gateway(wsgate_server: StartServer) -> None:
    plugin = ClockPlugin()
    server = await wsgate_server(plugin)
    assert plugin.clock.state == "started"
    assert server.gateway.services["clock"] is plugin.clock
    client = await server.connect()
    assert (await client.request({"type": "time"}))["data"] == "tea time"
    await server.test_server.close()
    assert plugin.clock.state == "closed"


async def test_two_plugins_providing_one_service_name_are_refused() -> None:
    class Other:
        @hookimpl
        def wsgate_services(self) -> Mapping[str, object]:
            return {"clock": object()}

    with pytest.raises(
        PluginError, match="service 'clock' is provided by both plugin '.*ClockPlugin' and plugin '.*Other'"
    ):
        await create_app(make_settings(), plugins=[ClockPlugin(), Other()])


class SlowStart:
    @hookimpl
    async def wsgate_startup(self) -> None:
        await asyncio.Event().wait()  # never finishes


class BrokenStart:
    @hookimpl
    def wsgate_startup(self) -> None:
        raise OSError("database unreachable")


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (SlowStart(), r"plugin 'SlowStart': wsgate_startup did not finish within plugins.startup_timeout \(0.2s\)"),
        (BrokenStart(), r"plugin 'BrokenStart': wsgate_startup raised OSError: database unreachable"),
    ],
)
async def test_a_start_up_hook_that_hangs_or_fails_stops_start_up_naming_the_plugin(
    aiohttp_server: Any, plugin: object, message: str
) -> None:
    recorder = Recorder()
    # pluggy's order: the last registered starts first, so the recorder starts before the failing plugin
    app = await create_app(make_settings(plugins={"startup_timeout": "200ms"}), plugins=[plugin, recorder])
    with pytest.raises(PluginError, match=message):
        await aiohttp_server(app)
    # what had started was shut down again
    assert [call for call, _ in recorder.calls] == ["startup", "shutdown"]


async def test_a_failing_shutdown_hook_is_logged_and_the_others_still_run(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    class BadShutdown:
        @hookimpl
        def wsgate_shutdown(self) -> None:
            raise RuntimeError("cannot close")

    recorder = Recorder()
    server = await wsgate_server(recorder, BadShutdown())
    await server.test_server.close()
    assert recorder.calls[-1][0] == "shutdown"
    assert any("cannot close" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_failing_client_hooks_are_logged_and_the_client_is_served(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Grumpy:
        @hookimpl
        def wsgate_client_connected(self) -> None:
            raise RuntimeError("grumpy")

    server = await wsgate_server(Grumpy())
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["grumpy"]


async def test_plugin_settings_tables_are_readable_and_read_only(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins={"mine": {"greeting": "hi", "nested": {"list": [1, 2]}}})
    options = server.gateway.plugin_settings("mine")
    assert options["greeting"] == "hi"
    assert options["nested"]["list"] == (1, 2)
    with pytest.raises(TypeError):
        options["greeting"] = "changed"  # type: ignore[index]
    assert server.gateway.plugin_settings("absent") == {}


async def test_plugins_modules_loads_a_module_without_packaging(
    wsgate_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dev_plugin.py").write_text(
        "from wsgate import hookimpl\n\n"
        "async def hello(client, message):\n    await client.send({'type': 'hello', 'data': message.data})\n\n"
        "@hookimpl\ndef wsgate_message_handlers():\n    return {'hello': hello}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dev_plugin", raising=False)
    server = await wsgate_server(plugins={"modules": ["dev_plugin"]})
    client = await server.connect()
    assert (await client.request({"type": "hello", "data": 1}))["data"] == 1
    assert server.plugins.sources["dev_plugin"] == "settings: plugins.modules"


async def test_a_module_that_fails_to_import_is_skipped_when_not_strict(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PluginError, match="plugin 'no_such_plugin_module' .* failed to load: ModuleNotFoundError"):
        await create_app(make_settings(plugins={"modules": ["no_such_plugin_module"]}))
    caplog.set_level(logging.WARNING)
    server = await wsgate_server(plugins={"modules": ["no_such_plugin_module"], "strict": False})
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no_such_plugin_module" in w and "skipped" in w for w in warnings)


def test_hook_specifications_document_themselves() -> None:
    from wsgate import hookspecs

    specs = [name for name in dir(hookspecs) if name.startswith("wsgate_")]
    assert len(specs) == 8
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc or "called" in doc, name
        assert len(doc.split()) > 15, name


async def test_table_hooks_must_not_be_async() -> None:
    class AsyncHandlers:
        @hookimpl
        async def wsgate_message_handlers(self) -> Mapping[str, Any]:
            return {}

    with pytest.raises(
        PluginError, match="plugin 'AsyncHandlers': wsgate_message_handlers must be a plain function, not async"
    ):
        await create_app(make_settings(), plugins=[AsyncHandlers()])


@pytest.mark.parametrize(
    ("verdict", "error"), [("", "not allowed"), (0, "not allowed"), ([], "not allowed"), ("no", "no")]
)
async def test_authorization_fails_closed_on_odd_answers(
    wsgate_server: StartServer, verdict: object, error: str
) -> None:
    class Odd:
        @hookimpl
        def wsgate_authorize(self) -> object:
            return verdict

    server = await wsgate_server(Odd(), plugins=NO_EXAMPLES)
    client = await server.connect()
    assert (await client.request({"type": "subscribe", "room": "r"}))["error"] == error


async def test_a_hanging_client_hook_is_cut_off_and_the_client_served(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Hanging:
        @hookimpl
        async def wsgate_client_connected(self) -> None:
            await asyncio.Event().wait()

    server = await wsgate_server(Hanging(), plugins={"hook_timeout": "200ms"})  # (client hooks: not startup_timeout)
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert any("wsgate_client_connected did not finish within" in r.getMessage() for r in caplog.records)


async def test_a_service_whose_plain_start_raises_stops_start_up_naming_it(aiohttp_server: Any) -> None:
    class Broken:
        def start(self) -> None:
            raise OSError("disk full")

    class Provider:
        @hookimpl
        def wsgate_services(self) -> Mapping[str, object]:
            return {"broken": Broken()}

    app = await create_app(make_settings(), plugins=[Provider()])
    with pytest.raises(PluginError, match="service 'broken': start raised OSError: disk full"):
        await aiohttp_server(app)


async def test_services_hook_sees_an_empty_services_mapping(wsgate_server: StartServer) -> None:
    class Peek:
        seen: object = None

        @hookimpl
        def wsgate_services(self, gateway: Gateway) -> Mapping[str, object]:
            Peek.seen = dict(gateway.services)
            return {}

    await wsgate_server(Peek())
    assert Peek.seen == {}


async def test_a_refusal_the_log_cannot_read_is_still_the_refusal(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: a body that is no UTF-8 made the log line raise, and the 401 became a 500."""
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await wsgate_server(Auth(), plugins=NO_EXAMPLES)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(params={"user": "latin1"})
    assert refused.value.status == 401
    assert any("refused a WebSocket" in r.getMessage() and "nicht erlaubt" in r.getMessage() for r in caplog.records)


def test_refusals_are_logged_one_by_one_up_to_a_burst_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Unauthenticated clients choose how often a plugin refuses: the log holds at most a burst per second."""
    from wsgate.plugins import REFUSAL_LOG_BURST, RefusalLog

    caplog.set_level(logging.INFO, logger="wsgate")
    now = [0.0]
    refusals = RefusalLog(clock=lambda: now[0])
    for _ in range(REFUSAL_LOG_BURST + 500):
        refusals("Auth", web.HTTPForbidden(text="go away"), None)
    now[0] = 1.0
    refusals("Auth", web.HTTPForbidden(text="go away"), None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == REFUSAL_LOG_BURST + 2
    assert lines[-2] == "plugin 'Auth' refused 500 more WebSockets (not logged one by one)"
