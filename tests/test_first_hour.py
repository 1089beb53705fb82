"""What a new user trips over in the first hour, each made clear: refused origins, variables, a /ws that is off."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from pathlib import Path

import pytest

from wsgate.config import ConfigError, inert_settings, load_settings, unknown_variables
from wsgate.testing import StartServer

from .processes import environment, start_wsgate


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/app",
        "127.0.0.1:8000",
        "HTTP://Example.com",
        "http://x?y=1",
        "http://a.com:",
        "http://a.com:80",
        "https://a.com:443",
        "http://a.com#",
        "http://u@a.com",
    ],
)
@pytest.mark.parametrize("key", ["security", "cors"])
def test_an_origin_that_cannot_match_is_refused_at_start_up(origin: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.allowed_origins entry .*: expected an origin as browsers send it"):
        load_settings(overrides={key: {"allowed_origins": [origin]}})


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("http://*.example.com", "wildcards are not matched"),
        ("https://*", "wildcards are not matched"),
        ("ws://127.0.0.1:8000", "not the WebSocket's own URL"),
        ("wss://gw.example.com", "not the WebSocket's own URL"),
        ("null", "every page without an origin of its own"),
        ("http://bücher.example", "as browsers send it"),
    ],
)
def test_an_origin_no_browser_sends_is_refused_with_the_reason(origin: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=rf"security.allowed_origins entry .*: expected .*{re.escape(reason)}"):
        load_settings(overrides={"security": {"allowed_origins": [origin]}})


async def test_a_refused_origin_is_logged_with_the_setting_to_change(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    import aiohttp

    server = await wsgate_server()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await server.raw(headers={"Origin": "http://127.0.0.1:8000"})
    assert (
        "add it to security.allowed_origins (e.g. WSGATE_SECURITY__ALLOWED_ORIGINS='[\"http://127.0.0.1:8000\"]')"
        in caplog.text
    )
    caplog.clear()
    with pytest.raises(aiohttp.WSServerHandshakeError):  # what file:// and sandboxed pages send
        await server.raw(headers={"Origin": "null"})
    assert "security.allowed_origins cannot list it: expected the origin of a page served over http(s)" in caplog.text
    assert "add it to" not in caplog.text


@pytest.mark.parametrize(
    ("text", "value"), [("0", False), ("1", True), ("no", False), ("yes", True), ("false", False), ("True", True)]
)
def test_booleans_from_variables_follow_the_readme(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    monkeypatch.setenv("WSGATE_METRICS__ENABLED", text)
    assert load_settings().metrics.enabled is value


def test_a_variable_for_a_whole_table_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Found in review: dynaconf put WSGATE_SECURITY in place of the file's [security], which then vanished
    (and with it allowed_hosts, the DNS-rebinding guard) without a word."""
    settings = tmp_path / "settings.toml"
    settings.write_text('[security]\nallowed_hosts = ["gw.example.com"]\n')
    monkeypatch.setenv("WSGATE_SECURITY", '{request_timeout="5s"}')
    with pytest.raises(
        ConfigError,
        match=r"^environment variable WSGATE_SECURITY would replace the whole \[security\] "
        r"table: set WSGATE_SECURITY__<KEY> for each key instead$",
    ):
        load_settings(settings)


def test_an_error_names_the_variable_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_HISTORY__SIZE", "lots")
    with pytest.raises(ConfigError, match=r"invalid setting history.size \(WSGATE_HISTORY__SIZE\) = 'lots'"):
        load_settings()


def test_variables_that_are_no_setting_are_named_with_the_closest_one() -> None:
    warnings = unknown_variables(
        {
            "WEBSOCKET_PROT": "8082",
            "WSGATE_WEBSOCKET_PORT": "9999",
            "WEBSOCKET_PORT": "1",
            "WSGATE_SETTINGS": "x",
            "WSGATE_PLUGINS__USERS__DATABASE": "db",
            "HOME": "/",
        }
    )
    assert warnings == [
        "environment variable WEBSOCKET_PROT is not a setting and is ignored; did you mean WEBSOCKET_PORT?",
        "environment variable WSGATE_WEBSOCKET_PORT is not a setting and is ignored; "
        "did you mean WSGATE_WEBSOCKET__PORT?",
    ]
    assert unknown_variables({"WSGATE_SETINGS": "x", "WSGATE_SETTINGSS": "x", "WSGATE_TEST_REDIS_URL": "x"}) == [
        "environment variable WSGATE_SETINGS is not a setting and is ignored; did you mean WSGATE_SETTINGS?",
        "environment variable WSGATE_SETTINGSS is not a setting and is ignored; did you mean WSGATE_SETTINGS?",
    ]


async def test_ws_while_disabled_says_why_and_inert_settings_are_warned(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"enabled": False})
    async with server.session.get(server.url("/ws")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "the WebSocket endpoint is off"
    settings = load_settings(overrides={"history": {"rooms": ["chat:*"]}})
    assert inert_settings(settings)[1] == "history.rooms is set, but takes effect only on /ws, which is off"
    settings = load_settings(overrides={"presence": {"events": True}, "auth": {"jwt": {"secret": "s" * 40}}})
    assert inert_settings(settings)[1] == "presence.events, auth.jwt are set, but take effect only on /ws, which is off"


async def test_start_up_lists_plugins_and_warns_about_typos() -> None:
    process = await start_wsgate(env=environment(WEBSOCKET_ENABLED="true", WEBSOCKET_PROT="8082"))
    try:
        process.proc.send_signal(signal.SIGINT)  # at once after "listening": drained, exit 0
        code = await process.finish(20)
    finally:
        await process.kill()
    log = "".join(process.lines)
    assert code == 0, log
    assert "plugins: messages (builtin)" in log
    assert "WEBSOCKET_PROT is not a setting and is ignored; did you mean WEBSOCKET_PORT?" in log


async def test_a_close_without_a_status_code_is_logged_as_1005(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wsgate.connection")
    server = await wsgate_server()
    client = await server.connect()
    await client.ws._writer.send_frame(b"", 0x8)  # type: ignore[attr-defined]  # a close frame with no body
    async with asyncio.timeout(5):
        while "disconnected" not in caplog.text:
            await asyncio.sleep(0.01)  # the server logs as it finishes: nothing to wait on from here
    assert f"client {client.id} disconnected (code 1005)" in caplog.text


def test_a_secret_setting_never_appears_in_its_error(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("[api]\nkey = 123456789012345\n")  # a number where text is expected
    with pytest.raises(ConfigError) as refused:
        load_settings(settings)
    assert "123456789012345" not in str(refused.value) and "api.key = ***: expected a string" in str(refused.value)
