"""The JavaScript client (`/client.js`) in a real browser: Debian's Chromium, driven by Playwright.

Never a downloaded browser: Playwright launches /usr/bin/chromium (`apt-get install chromium`;
`.ci/run` installs it). Without it these tests are skipped with a loud reason, except under
CI=true, where a missing browser fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsgate.testing import StartServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HISTORY = {"rooms": ["chat:*"], "size": 1000}


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = "BROWSER TESTS DID NOT RUN: Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


START = """async () => {
    const { WsgateClient } = await import("/client.js");
    const client = new WsgateClient(location.origin.replace(/^http/, "ws") + "/ws", { minBackoff: 10, maxBackoff: 100 });
    window.client = client;
    window.received = [];
    window.events = [];
    client.on("message", (message) => window.received.push(message.data));
    for (const event of ["open", "close", "recovered", "recovery_failed"]) client.on(event, () => window.events.push(event));
    await client.connect();
    const subscribed = await client.subscribe("chat:browser");
    return { clientId: client.clientId, subscribed };
}"""


async def test_the_js_client_recovers_what_it_missed_after_a_disconnection(
    wsgate_server: StartServer, page: Any
) -> None:
    server = await wsgate_server(history=HISTORY)
    await page.goto(server.url("/health"))  # same origin as /ws and /client.js
    started = await page.evaluate(START)
    assert started["subscribed"]["offset"] == 0
    publisher = await server.connect()
    await publisher.subscribe("chat:browser")
    for n in range(10):
        await publisher.request({"type": "publish", "room": "chat:browser", "data": n})
    await page.wait_for_function("window.received.length >= 10")
    server.gateway.hub.connections[started["clientId"]].drop(1012, "service restart")  # the network blips
    for n in range(10, 60):  # published while it is away, or coming back
        await publisher.request({"type": "publish", "room": "chat:browser", "data": n})
    await page.wait_for_function("window.received.length >= 60 && window.client.connects === 2")
    assert await page.evaluate("window.received") == list(range(60))  # every message once, in order
    assert await page.evaluate("window.events") == ["open", "close", "recovered", "open"]
    assert await page.evaluate("window.client.ping()") > 0


async def test_subscribe_rejects_with_the_gateway_error(wsgate_server: StartServer, page: Any) -> None:
    server = await wsgate_server(websocket={"limits": {"max_room_name_length": 4}})
    await page.goto(server.url("/health"))
    error = await page.evaluate("""async () => {
        const { WsgateClient, GatewayError } = await import("/client.js");
        const client = new WsgateClient(location.origin.replace(/^http/, "ws") + "/ws");
        await client.connect();
        try { await client.subscribe("much-too-long"); return "subscribed"; }
        catch (error) { return [error instanceof GatewayError, error.text, error.detail]; }
    }""")
    assert error == [True, "room name is too long", "room names are at most 4 characters"]


async def test_client_js_is_served_as_a_module(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    async with server.session.get(server.url("/client.js")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert "export class WsgateClient" in await resp.text()
