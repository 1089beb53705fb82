"""Abuse resistance: the Origin check (Cross-Site WebSocket Hijacking)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from wsgate.origins import origin_allowed
from wsgate.testing import StartServer


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        ("https://app.example.com", ("https://app.example.com",), True),
        ("https://app.example.com.evil.com", ("https://app.example.com",), False),  # no prefix matching
        ("https://evil-app.example.com", ("https://app.example.com",), False),
        ("http://app.example.com", ("https://app.example.com",), False),  # the scheme counts
        ("https://anything.test", ("*",), True),
        ("http://gateway:8081", (), True),  # same host as the request
        ("http://GATEWAY:8081", (), True),
        ("http://gateway:9999", (), False),
        ("null", (), False),
    ],
)
def test_origin_rules(origin: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, "gateway:8081", allowed) is ok


async def test_a_foreign_origin_gets_403_before_the_upgrade(wsgate_server: StartServer) -> None:
    server = await wsgate_server(security={"allowed_origins": ["https://app.example.com"]})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(headers={"Origin": "https://evil.example.com"})
    assert refused.value.status == 403
    async with server.session.get(server.url("/ws"), headers={"Origin": "https://evil.example.com"}) as resp:
        assert (resp.status, await resp.json()) == (403, {"error": "origin not allowed"})
    assert server.metrics.error_count("origin_rejected") == 2
    allowed = await server.connect(headers={"Origin": "https://app.example.com"})
    assert (await allowed.request({"type": "ping"}))["type"] == "pong"
    without = await server.connect()  # non-browser clients send no Origin
    assert (await without.request({"type": "ping"}))["type"] == "pong"
    assert (await server.counts())[1]["clients"] == 2


async def test_by_default_only_the_same_host_may_connect(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    host = f"127.0.0.1:{server.test_server.port}"
    same = await server.connect(headers={"Origin": f"http://{host}"})
    assert (await same.request({"type": "ping"}))["type"] == "pong"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(headers={"Origin": "https://elsewhere.example.com"})
    assert refused.value.status == 403


async def test_a_wildcard_allows_any_origin_and_warns(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await wsgate_server(security={"allowed_origins": ["*"]})
    client = await server.connect(headers={"Origin": "https://anywhere.example.com"})
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert any('allowed_origins is ["*"]' in r.getMessage() for r in caplog.records)


async def test_allowed_hosts_refuses_a_dns_rebinding_page(wsgate_server: StartServer) -> None:
    """The security review: with no allow-list, a page on evil.example resolving to this server sends
    Host: evil.example and Origin: http://evil.example, and the same-host check accepted it."""
    import aiohttp

    rebinding = {"Host": "evil.example", "Origin": "http://evil.example"}
    open_server = await wsgate_server()
    ws = await open_server.raw(headers=rebinding)  # the documented default: any Host
    await ws.close()
    server = await wsgate_server(security={"allowed_hosts": ["127.0.0.1"]})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(headers=rebinding)
    assert refused.value.status == 421
    async with server.session.get(server.url("/health"), headers={"Host": "evil.example"}) as resp:
        assert (resp.status, await resp.json()) == (421, {"error": "unknown host"})
    client = await server.connect()  # Host: 127.0.0.1:<port>, allowed whatever the port
    assert (await client.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("host", ["http://gw.example", "gw.example/path", "gw.example:0", ":8081", "a b"])
def test_an_allowed_host_that_cannot_match_is_refused_at_start_up(host: str) -> None:
    from wsgate.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"security.allowed_hosts entry"):
        load_settings(overrides={"security": {"allowed_hosts": [host]}})
