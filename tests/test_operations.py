"""CORS on the HTTP endpoints, logging formats, and the config / check commands."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from wsgate.config import LoggingSettings
from wsgate.logs import JsonFormatter, configure_logging
from wsgate.testing import StartServer

from .conftest import PrivateRedis
from .processes import environment, run_wsgate, spawn, start_wsgate

ORIGIN = "https://dashboard.example.com"


@pytest.mark.parametrize("path", ["/health", "/metrics"])
async def test_cors_preflight_and_request_from_an_allowed_origin(wsgate_server: StartServer, path: str) -> None:
    server = await wsgate_server(cors={"allowed_origins": [ORIGIN]})
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    async with server.session.options(server.url(path), headers=preflight) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    async with server.session.get(server.url(path), headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_no_cors_for_other_origins_or_by_default(wsgate_server: StartServer) -> None:
    configured = await wsgate_server(cors={"allowed_origins": [ORIGIN]})
    default = await wsgate_server()
    for server, origin in ((configured, "https://evil.example.com"), (default, ORIGIN)):
        preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
        async with server.session.options(server.url("/health"), headers=preflight) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with server.session.get(server.url("/health"), headers={"Origin": origin}) as resp:
            assert resp.status == 200  # served, but a browser may not read it
            assert "Access-Control-Allow-Origin" not in resp.headers


def test_json_log_lines_carry_context_fields() -> None:
    record = logging.LogRecord("wsgate.views", logging.INFO, __file__, 1, "client %s connected", ("abc",), None)
    record.client_id = "abc"
    record.room = "chat"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO"
    assert line["logger"] == "wsgate.views"
    assert line["message"] == "client abc connected"
    assert (line["client_id"], line["room"]) == ("abc", "chat")
    assert line["timestamp"].endswith("+00:00")


def test_configure_logging_installs_its_handler_once_and_respects_others() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        for handler in saved[1]:
            root.removeHandler(handler)
        configure_logging(LoggingSettings(level="WARNING", format="json"))
        configure_logging(LoggingSettings(level="WARNING", format="json"))  # replaces its own handler
        assert root.level == logging.WARNING
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        foreign = logging.NullHandler()
        root.removeHandler(root.handlers[0])
        root.addHandler(foreign)  # e.g. gunicorn --log-config: kept, only the level changes
        configure_logging(LoggingSettings(level="ERROR", format="text"))
        assert root.handlers == [foreign] and root.level == logging.ERROR
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(saved[0])
        for handler in saved[1]:
            root.addHandler(handler)


@pytest.mark.parametrize("access_log", [True, False])
async def test_json_logs_from_a_real_process_with_connection_open_and_close(access_log: bool) -> None:
    env = environment(WSGATE_LOGGING__FORMAT="json", WSGATE_LOGGING__ACCESS_LOG=str(access_log).lower())
    process = await spawn(sys.executable, "-m", "wsgate", "--host", "127.0.0.1", "--port", "0", env=env)
    try:
        line = json.loads((await process.wait_for_line(r"listening on 127\.0\.0\.1:\d+")).string)
        process.port = int(line["message"].rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as session, session.ws_connect(process.url("/ws")) as ws:
            client_id = (await ws.receive_json())["data"]["client_id"]
        opened = json.loads((await process.wait_for_line(r" connected from ")).string)
        closed = json.loads((await process.wait_for_line(r" disconnected ")).string)
        assert opened["client_id"] == closed["client_id"] == client_id
        assert opened["remote"] == "127.0.0.1"
        assert closed["close_code"] == 1000
        process.proc.send_signal(signal.SIGTERM)  # everything the server logs is in by the time it exits
        assert await process.finish(timeout=10) == 0
        access = [seen for seen in process.lines if '"logger": "aiohttp.access"' in seen]
        assert bool(access) is access_log
        assert all(json.loads(line) for line in "".join(process.lines).splitlines() if line.strip())
    finally:
        await process.kill()


async def test_config_command_shows_values_sources_and_masks_secrets(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text(
        '[websocket]\nenabled = true\nport = 9000\n[plugins.token_auth]\ntokens = { "t0p" = "alice" }\n'
    )
    env = environment(
        WEBSOCKET_PING_INTERVAL="30s",
        WEBSOCKET_PONG_WAIT="35s",
        WSGATE_LOGGING__LEVEL="debug",
        WEBSOCKET_LIMITS_MESSAGES_PER_SECOND="2.5",
    )
    process = await spawn(
        sys.executable,
        "-m",
        "wsgate",
        "config",
        "--settings",
        str(settings),
        "--host",
        "10.0.0.1",
        env=env,
        stdout=True,
    )
    out, err = await process.proc.communicate()
    assert process.proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert f"websocket.port = 9000  # file {settings}" in lines
    assert 'websocket.host = "10.0.0.1"  # command line' in lines
    assert 'websocket.ping_interval = "30s"  # environment WEBSOCKET_PING_INTERVAL' in lines
    assert 'logging.level = "DEBUG"  # environment WSGATE_LOGGING__LEVEL' in lines
    assert 'websocket.write_wait = "10s"  # default' in lines
    assert "websocket.limits.messages_per_second = 2.5  # environment WEBSOCKET_LIMITS_MESSAGES_PER_SECOND" in lines
    assert f"plugins.token_auth.tokens = ***  # file {settings}" in lines
    assert "alice" not in out.decode() and "t0p" not in out.decode()


@pytest.mark.slow
async def test_check_command() -> None:
    code, stderr = await run_wsgate("check")
    assert code == 0, stderr
    code, stderr = await run_wsgate("check", env=environment(WEBSOCKET_PORT="-1"))
    assert (code, stderr.strip()) == (
        2,
        "wsgate: invalid setting websocket.port (WEBSOCKET_PORT) = '-1': expected a value from 0 to 65535",
    )
    code, stderr = await run_wsgate("check", env=environment(WSGATE_PLUGINS__MODULES='["nowhere_module"]'))
    assert code == 2 and stderr.startswith("wsgate: plugin 'nowhere_module'"), stderr


async def test_check_prints_a_summary() -> None:
    process = await spawn(sys.executable, "-m", "wsgate", "check", stdout=True)
    out, _ = await process.proc.communicate()
    assert out.decode().startswith("ok: ")


async def _broker_shown(env: dict[str, str]) -> tuple[list[str], dict[str, object]]:
    """A real `python -m wsgate`: its start-up lines and its `/health` body."""
    process = await start_wsgate(env=env)
    try:
        async with aiohttp.ClientSession() as session, session.get(process.url("/health")) as resp:
            return process.lines, await resp.json()
    finally:
        await process.kill()


@pytest.mark.slow
async def test_the_start_up_lines_and_health_say_the_broker_is_memory() -> None:
    lines, health = await _broker_shown(environment())
    assert [line.split(" wsgate: ", 1)[1].strip() for line in lines if " INFO wsgate: broker: " in line] == [
        "broker: memory"
    ]
    assert (health["broker"], health["broker_backend"]) == ("ok", "memory")


@pytest.mark.slow
async def test_the_start_up_lines_and_health_show_the_redis_url_with_its_password_masked(
    private_redis: PrivateRedis,
) -> None:
    import redis.asyncio as aioredis

    password = "n0t-for-the-log"
    client = aioredis.from_url(private_redis.url)
    await client.config_set("requirepass", password)
    await client.aclose()
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    lines, health = await _broker_shown(environment(WSGATE_BROKER__URL=url))
    shown = f"redis://:***@127.0.0.1:{private_redis.port}/0"
    assert [line.split(" wsgate: ", 1)[1].strip() for line in lines if " INFO wsgate: broker: " in line] == [
        f"broker: {shown}"
    ]
    assert (health["broker"], health["broker_backend"]) == ("ok", shown)
    assert password not in "".join(lines)


async def test_health_names_the_broker_in_process(wsgate_server: StartServer, redis_url: str) -> None:
    """`broker_backend` is added to /health: the keys it had keep their values (`broker` is the state)."""
    memory = await wsgate_server()
    assert (await memory.health())[1]["broker_backend"] == "memory"
    shared = await wsgate_server(broker={"url": redis_url})
    status, body = await shared.health()
    assert (status, body["broker"], body["broker_backend"]) == (200, "ok", redis_url)
    assert list(body) == [
        "status", "clients", "rooms", "broker", "broker_backend", "tasks", "uptime_seconds", "version"
    ]  # fmt: skip
