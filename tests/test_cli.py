"""`python -m wsgate` as a real process: flags, start-up errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from .processes import ROOT, environment, publish_then_sigterm, run_wsgate, spawn, start_wsgate


async def test_help_lists_the_flags() -> None:
    process = await spawn(sys.executable, "-m", "wsgate", "--help", stdout=True)
    out, _ = await process.proc.communicate()
    assert process.proc.returncode == 0
    for flag in ("--host", "--port", "--settings FILE", "--help"):
        assert flag in out.decode()


async def test_serves_the_protocol_on_the_requested_port_and_settings(tmp_path: Path) -> None:
    settings = tmp_path / "custom.toml"
    settings.write_text("[websocket]\nenabled = true\n[websocket.limits]\nmax_connections_per_room = 1\n")
    server = await start_wsgate("--settings", str(settings))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url("/ws")) as a, session.ws_connect(server.url("/ws")) as b:
                assert (await a.receive_json())["type"] == "connected"
                assert (await b.receive_json())["type"] == "connected"
                await a.send_json({"type": "subscribe", "room": "solo"})
                assert (await a.receive_json())["type"] == "subscribed"
                await b.send_json({"type": "subscribe", "room": "solo"})
                assert (await b.receive_json())["error"] == "room is at maximum capacity"
    finally:
        await server.kill()


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            (),
            {"WEBSOCKET_PORT": "abc"},
            "wsgate: invalid setting websocket.port (WEBSOCKET_PORT) = 'abc': expected an integer",
        ),
        (
            (),
            {"WEBSOCKET_PING_INTERVAL": "5 parsecs"},
            "wsgate: invalid setting websocket.ping_interval (WEBSOCKET_PING_INTERVAL) = '5 parsecs'",
        ),
        (
            ("--settings", "/nonexistent/settings.toml"),
            {},
            "wsgate: settings file '/nonexistent/settings.toml' not found",
        ),
        (
            (),
            {"WSGATE_WEBSOCKET__LIMITS__MAX_CONNECTIONS": "-1"},
            "wsgate: invalid setting websocket.limits.max_connections"
            " (WSGATE_WEBSOCKET__LIMITS__MAX_CONNECTIONS) = '-1'",
        ),
        (
            (),
            {"WSGATE_PLUGINS__DISABLED": "[1]"},
            "wsgate: invalid setting plugins.disabled (WSGATE_PLUGINS__DISABLED) = '[1]': expected a list of strings",
        ),
        (
            (),
            {"WSGATE_AUTH__JWT__SECRET": "too-short"},  # checked by the built-in plugin as it loads
            "wsgate: invalid setting auth.jwt.secret: expected at least 32 bytes",
        ),
    ],
)
async def test_a_bad_setting_exits_2_with_one_line(args: tuple[str, ...], env: dict[str, str], line: str) -> None:
    code, stderr = await run_wsgate(*args, env=environment(**env))
    assert code == 2
    assert stderr.strip().startswith(line), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr


async def test_a_bad_flag_exits_2() -> None:
    code, stderr = await run_wsgate("--port", "abc")
    assert code == 2
    assert "invalid int value: 'abc'" in stderr


async def test_a_busy_port_is_one_line() -> None:
    server = await start_wsgate()
    try:
        code, stderr = await run_wsgate("--host", "127.0.0.1", "--port", str(server.port))
        assert code == 1
        assert stderr.strip().splitlines()[-1].startswith(f"wsgate: cannot listen on 127.0.0.1:{server.port}")
        assert "Traceback" not in stderr
    finally:
        await server.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_every_client_with_1001_and_exits_0(signum: int) -> None:
    server = await start_wsgate(env=environment(WEBSOCKET_TIMEOUT="5s"))
    try:
        async with aiohttp.ClientSession() as session:
            clients = [await session.ws_connect(server.url("/ws")) for _ in range(3)]
            for ws in clients:
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "subscribe", "room": "r"})
                assert (await ws.receive_json())["type"] == "subscribed"
            started = asyncio.get_running_loop().time()
            server.proc.send_signal(signum)
            for ws in clients:
                closing = await ws.receive(timeout=5)
                assert closing.type is aiohttp.WSMsgType.CLOSE
                assert (closing.data, closing.extra) == (1001, "server shutting down")
        assert await server.finish(timeout=5) == 0
        assert asyncio.get_running_loop().time() - started < 5
        assert "Traceback" not in "".join(server.lines)
    finally:
        await server.kill()


async def test_make_run_settings_file_is_the_default() -> None:
    server = await start_wsgate()  # cwd is the repository: ./settings.toml enables /ws
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url("/ws")) as ws:
                assert (await ws.receive_json())["data"]["message"] == "Connected to WebSocket server"
            async with session.get(server.url("/health")) as resp:
                assert {k: v for k, v in (await resp.json()).items() if k in ("status", "clients", "rooms")} == {
                    "status": "healthy",
                    "clients": 0,
                    "rooms": 0,
                }
    finally:
        await server.kill()
    assert (ROOT / "settings.toml").is_file()


def fake_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str] | None = None) -> Path:
    """A distribution visible to importlib.metadata through PYTHONPATH, without installing anything."""
    info = root / f"{name}-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[wsgate]\n{entry_points}\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


@pytest.mark.parametrize(
    ("entry_points", "modules", "line"),
    [
        (
            "broken = no_such_module",
            {},
            "wsgate: plugin 'broken' (entry point no_such_module from wsgate_fake 0.0) failed to load: "
            "ModuleNotFoundError: No module named 'no_such_module'",
        ),
        (
            "raising = raising_plugin",
            {"raising_plugin": "raise RuntimeError('boom at import')\n"},
            "wsgate: plugin 'raising' (entry point raising_plugin from wsgate_fake 0.0) failed to load: "
            "RuntimeError: boom at import",
        ),
        (
            "typo = typo_plugin",
            {"typo_plugin": "from wsgate import hookimpl\n\n@hookimpl\ndef wsgate_mesage_handlers():\n    return {}\n"},
            "wsgate: plugin 'typo': unknown hook 'wsgate_mesage_handlers'",
        ),
        (
            "clash = clash_plugin",
            {
                "clash_plugin": "from wsgate import hookimpl\n\nasync def h(c, m):\n    pass\n\n"
                "@hookimpl\ndef wsgate_message_handlers():\n    return {'ping': h}\n"
            },
            "wsgate: message type 'ping' is claimed by both plugin 'messages' and plugin 'clash'",
        ),
        (
            "failing = failing_plugin",
            {
                "failing_plugin": "from wsgate import hookimpl\n\n"
                "@hookimpl\ndef wsgate_message_handlers():\n    return 1 / 0\n"
            },
            "wsgate: plugin 'failing': wsgate_message_handlers raised ZeroDivisionError: division by zero",
        ),
    ],
)
async def test_a_broken_plugin_stops_start_up_with_one_line(
    tmp_path: Path, entry_points: str, modules: dict[str, str], line: str
) -> None:
    root = fake_distribution(tmp_path, "wsgate_fake", entry_points, modules)
    code, stderr = await run_wsgate(env=environment(PYTHONPATH=str(root)))
    assert code == 2, stderr
    assert stderr.strip().startswith(line), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


async def test_a_disabled_broken_plugin_is_not_loaded(tmp_path: Path) -> None:
    root = fake_distribution(tmp_path, "wsgate_fake", "broken = no_such_module")
    server = await start_wsgate(env=environment(PYTHONPATH=str(root), WSGATE_PLUGINS__DISABLED='["broken"]'))
    await server.kill()


async def test_unrelated_wsgate_variables_are_not_settings() -> None:
    server = await start_wsgate(env=environment(WSGATE_TEST_REDIS_URL="redis://127.0.0.1:6379", WSGATE_FOO="1"))
    await server.kill()


async def test_plugins_command_lists_sources_hooks_and_message_types(tmp_path: Path) -> None:
    process = await spawn(sys.executable, "-m", "wsgate", "plugins", stdout=True)
    out, err = await process.proc.communicate()
    assert process.proc.returncode == 0, err.decode()
    text = out.decode()
    assert (
        "messages: builtin\n  hooks: wsgate_message_handlers\n"
        "  message types: subscribe, unsubscribe, publish, broadcast, ping, history, presence\n" in text
    )
    assert "echo: entry point wsgate_echo from wsgate-echo 0.1.0\n" in text
    assert (
        "users: entry point wsgate_users from wsgate-users 0.1.0\n  hooks: wsgate_message_handlers, wsgate_services\n"
        in text
    )


EXAMPLES = ("echo", "users", "token_auth")


async def _plugins_listed(env: dict[str, str]) -> list[str]:
    """The plugin names `python -m wsgate plugins` lists (its unindented lines) in the environment `env`."""
    process = await spawn(sys.executable, "-m", "wsgate", "plugins", env=env, stdout=True)
    out, err = await process.proc.communicate()
    assert process.proc.returncode == 0, err.decode()
    return [line.split(":", 1)[0] for line in out.decode().splitlines() if line and not line[0].isspace()]


async def test_make_run_serves_no_example_plugin_while_the_tests_load_them() -> None:
    """Issue 23: `make test` installs the example plugins for the test run only (the venv's test-plugins
    directory, put on PYTHONPATH by conftest.py); `make run`, the same venv's python without it, loads the
    built-ins alone, exactly as on a fresh clone (no token_auth answering 401 to valid JWTs)."""
    test_path = str(Path(sys.prefix) / "test-plugins")
    assert test_path in os.environ["PYTHONPATH"].split(os.pathsep)
    assert set(EXAMPLES) <= set(await _plugins_listed(environment()))
    plain = environment()
    plain["PYTHONPATH"] = os.pathsep.join(p for p in plain["PYTHONPATH"].split(os.pathsep) if p != test_path)
    assert await _plugins_listed(plain) == ["messages"]  # what `.venv/bin/python -m wsgate` loads by default


@pytest.mark.slow
async def test_an_installed_distribution_adds_its_message_type_without_settings(tmp_path: Path) -> None:
    """Build a plugin distribution from scratch, pip-install it into this venv, use it, uninstall it."""
    project = tmp_path / "wsgate-shout"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "wsgate-shout"\nversion = "1.0"\n\n'
        '[project.entry-points.wsgate]\nshout = "wsgate_shout"\n\n'
        '[tool.setuptools]\npy-modules = ["wsgate_shout"]\n'
    )
    (project / "wsgate_shout.py").write_text(
        "from wsgate import hookimpl\n\n"
        "async def shout(client, message):\n"
        "    await client.send({'type': 'shout', 'data': str(message.data).upper()})\n\n"
        "@hookimpl\ndef wsgate_message_handlers():\n    return {'shout': shout}\n"
    )
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet")
    install = await spawn(*pip, "install", "--no-deps", str(project))
    assert await install.finish(timeout=120) == 0, "".join(install.lines)
    try:
        server = await start_wsgate()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(server.url("/ws")) as ws:
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "shout", "data": "hello"})
                assert (await ws.receive_json())["data"] == "HELLO"
        finally:
            await server.kill()
    finally:
        uninstall = await spawn(*pip, "uninstall", "--yes", "wsgate-shout")
        assert await uninstall.finish(timeout=60) == 0, "".join(uninstall.lines)


@pytest.mark.slow
async def test_a_start_up_hook_that_hangs_stops_the_process_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "slow_start.py").write_text(
        "import asyncio\nfrom wsgate import hookimpl\n\n"
        "@hookimpl\nasync def wsgate_startup(gateway):\n    await asyncio.Event().wait()\n"
    )
    env = environment(
        PYTHONPATH=str(tmp_path), WSGATE_PLUGINS__MODULES='["slow_start"]', WSGATE_PLUGINS__STARTUP_TIMEOUT='"300ms"'
    )
    code, stderr = await run_wsgate("--port", "0", env=env)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1] == (
        "wsgate: plugin 'slow_start': wsgate_startup did not finish within plugins.startup_timeout (0.3s)"
    )
    assert "Traceback" not in stderr


async def test_runtime_uvloop_serves_both_handshake_paths_and_shuts_down() -> None:
    """On uvloop (its transports are no asyncio.Transport): the front door's plain handshake and aiohttp's (a
    subprotocol offer, declined by the front door), /health, a publish between them, then SIGTERM's 1001."""
    server = await start_wsgate(env=environment(WSGATE_RUNTIME__UVLOOP="true", WEBSOCKET_TIMEOUT="5s"))
    try:
        assert any("event loop: uvloop" in line for line in server.lines), server.lines
        async with aiohttp.ClientSession() as session:
            plain = await session.ws_connect(server.url("/ws"))
            offered = await session.ws_connect(server.url("/ws"), protocols=("chat",))
            for ws in (plain, offered):
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "subscribe", "room": "r"})
                assert (await ws.receive_json())["type"] == "subscribed"
            async with session.get(server.url("/health")) as health:
                assert health.status == 200
            await publish_then_sigterm(server, (plain, offered), "r", timeout=5)
    finally:
        await server.kill()


async def test_runtime_uvloop_without_uvloop_installed_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")  # shadows the installed one
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = environment(WSGATE_RUNTIME__UVLOOP="true", PYTHONPATH=path)
    for command in ((), ("check",)):
        code, stderr = await run_wsgate(*command, env=env)
        assert code == 2, stderr
        assert stderr.strip().splitlines()[-1] == (
            "wsgate: runtime.uvloop = true: uvloop is not installed (pip install 'wsgate[speed]', or set it to false)"
        ), stderr
        assert "Traceback" not in stderr
