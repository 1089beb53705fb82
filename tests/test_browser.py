"""The JavaScript client (`/client.js`) in a real browser: Debian's Chromium, driven by Playwright.

Never a downloaded browser: Playwright launches /usr/bin/chromium (`apt-get install chromium`;
`.ci/run` installs it). Without it these tests are skipped with a loud reason, except under
CI=true, where a missing browser fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsgate.history import later_epoch, new_epoch
from wsgate.testing import StartServer

from .processes import require_tool
from .test_client import Closer, Silent

pytestmark = pytest.mark.slow  # Chromium started for each test

try:
    from playwright.async_api import expect
except ImportError:  # pragma: no cover - the test extra installs it
    expect = None

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HISTORY = {"rooms": ["chat:*"], "size": 1000}


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    require_tool(
        os.path.exists(CHROMIUM), "BROWSER TESTS", "Debian's chromium is not installed (apt-get install chromium)"
    )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


START = """async () => {
    const { WsgateClient } = await import("/client.js");
    const url = location.origin.replace(/^http/, "ws") + "/ws";
    const client = new WsgateClient(url, { minBackoff: 10, maxBackoff: 100 });
    window.client = client;
    window.received = [];
    window.events = [];
    client.on("message", (message) => window.received.push(message.data));
    for (const event of ["open", "close", "recovered", "recovery_failed"])
        client.on(event, () => window.events.push(event));
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
    server.hub.connections[started["clientId"]].drop(1012, "service restart")  # the network blips
    for n in range(10, 60):  # published while it is away, or coming back
        await publisher.request({"type": "publish", "room": "chat:browser", "data": n})
    await page.wait_for_function("window.received.length >= 60 && window.client.connects === 2")
    assert await page.evaluate("window.received") == list(range(60))  # every message once, in order
    assert await page.evaluate("window.events") == ["open", "close", "recovered", "open"]
    assert await page.evaluate("window.client.ping()") > 0


async def test_the_js_client_refreshes_its_token_by_itself(wsgate_server: StartServer, page: Any) -> None:
    from .test_auth import NO_EXAMPLE_AUTH, SECRET, token

    server = await wsgate_server(auth={"jwt": {"secret": SECRET, "leeway": "0s"}}, plugins=NO_EXAMPLE_AUTH)
    await page.goto(server.url("/health"))
    # made once the page is loaded: the first expires in 5-6 s, ample for the handshake on a loaded machine;
    # the client refreshes it a fifth of its life (at least 1 s) before that
    tokens = [token(exp=int(time.time()) + 6 + 60 * n) for n in range(4)]
    await page.evaluate(
        """async (tokens) => {
        const { WsgateClient } = await import("/client.js");
        window.issued = 0;
        const getToken = async () => tokens[window.issued++];
        window.client = new WsgateClient(location.origin.replace(/^http/, "ws") + "/ws", { getToken });
        window.closes = [];
        window.client.on("close", (event) => window.closes.push(event.code));
        await window.client.connect();
    }""",
        tokens,
    )
    await page.wait_for_function("window.client.refreshes >= 1", timeout=20_000)
    assert await page.evaluate("[window.client.connects, window.issued, window.closes]") == [1, 2, []]
    assert await page.evaluate("window.client.expiresAt") > (time.time() + 30) * 1000


async def test_a_page_on_another_origin_imports_the_client_and_connects(
    wsgate_server: StartServer, page: Any, aiohttp_server: Any
) -> None:
    """The first hour: `import { WsgateClient } from "http://gateway/client.js"` from another origin was blocked
    by CORS, and the WebSocket refused; with the page's origin allowed, both work."""
    from aiohttp import web

    async def app_page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    other = web.Application()
    other.router.add_get("/", app_page)
    app_server = await aiohttp_server(other)
    page_origin = f"http://127.0.0.1:{app_server.port}"
    server = await wsgate_server(security={"allowed_origins": [page_origin]})
    await page.goto(page_origin + "/")
    connected = await page.evaluate(
        """async (gateway) => {
        const { WsgateClient } = await import(gateway + "/client.js");
        const client = new WsgateClient(gateway.replace(/^http/, "ws") + "/ws");
        await client.connect();
        return (await client.subscribe("lobby")).client_count;
    }""",
        server.url("/").rstrip("/"),
    )
    assert connected == 1
    async with server.session.get(server.url("/client.js"), headers={"Origin": page_origin}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == page_origin
    async with server.session.get(server.url("/client.js"), headers={"Origin": "http://elsewhere.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


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


ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
PASSWORD = "correct horse battery staple"


async def test_the_dashboard_shows_live_figures_and_acts(
    wsgate_server: StartServer, page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the largest rooms are searched every 10th report: every report, so the room subscribed after the page loads
    # (which can take seconds on a loaded machine) shows within the locator's 5 s
    monkeypatch.setattr("wsgate.dashboard.plugin.TOP_ROOMS_EVERY", 1)
    server = await wsgate_server(dashboard={"enabled": True, "password": PASSWORD})
    await page.goto(server.url("/dashboard"))
    await page.get_by_label("Password, or an admin JWT").fill("not it")
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("alert").wait_for()  # refused, and told so
    await page.get_by_label("Password, or an admin JWT").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    assert PASSWORD not in await page.content()

    clients = [await server.connect() for _ in range(5)]
    for client in clients:
        await client.subscribe("chat:live")
    # (locator assertions, not evaluated strings: the page's Content-Security-Policy forbids eval)
    await expect(page.locator("#clients")).to_have_text("6")  # 5 + the dashboard itself, and it says so:
    await expect(page.locator("#operators")).to_have_text("incl. 1 dashboard")
    await expect(page.locator("#rooms")).to_have_text("1")
    await expect(page.locator("#room-table")).to_contain_text("chat:live")
    await expect(page.locator("#chart-in")).to_have_attribute("points", re.compile(r"^\S+ \S+ \S+"))  # it moves
    points = await page.locator("#chart-in").get_attribute("points")
    assert points is not None and points.split()[-1].startswith("600.0,")  # the newest at the right edge, "now"

    # publish from the form: a subscribed client gets it
    await page.get_by_label("Room", exact=True).first.fill("chat:live")
    await page.get_by_label("Data (JSON)").fill('{"from": "operator"}')
    await page.get_by_role("button", name="Publish").click()
    assert (await clients[0].recv())["data"] == {"from": "operator"}

    # tail a room: its traffic appears
    await page.locator("#tail-room").fill("chat:live")
    await page.get_by_role("button", name="Tail").click()
    await expect(page.locator("#tail-status")).to_have_text("Tailing chat:live")  # in the tail card itself
    await clients[1].send({"type": "publish", "room": "chat:live", "data": "tailed"})
    await expect(page.locator("#tail-log")).to_contain_text("tailed")
    for n in range(12):  # item numbers of two digits stay visible
        await clients[1].send({"type": "publish", "room": "chat:live", "data": n})
    await expect(page.locator("#tail-log li")).to_have_count(13)
    await expect(page.locator("#tail-log")).to_have_css("padding-left", "56px")  # room for "13." (it clipped "1.")
    async with server.session.get(server.url("/favicon.ico")) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "image/svg+xml")

    # disconnect a client, after confirming
    page.once("dialog", lambda dialog: dialog.accept())
    await page.locator("#disconnect-id").fill(clients[4].id)
    await page.get_by_role("button", name="Disconnect").click()
    closing = await clients[4].closed()
    assert (closing.data, closing.extra) == (1008, "disconnected by an operator")
    await expect(page.locator("#clients")).to_have_text("5")

    await page.set_viewport_size({"width": 1280, "height": 1100})
    os.makedirs(ARTIFACTS, exist_ok=True)
    await page.screenshot(path=os.path.join(ARTIFACTS, "dashboard.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-phone.png"), full_page=True)


async def test_the_js_client_recovers_after_the_server_restarts(
    wsgate_server: StartServer, page: Any, redis_url: str, broker_prefix: str, aiohttp_server: Any
) -> None:
    """With Redis, history outlives a gateway: the client comes back to the restarted gateway and catches up."""
    from aiohttp.test_utils import TestServer

    from wsgate.app import create_app
    from wsgate.testing import make_settings

    tables = {"broker": {"url": redis_url, "prefix": broker_prefix}, "history": HISTORY}
    first = TestServer(await create_app(make_settings(**tables)))
    await first.start_server()
    port = first.port
    publisher_node = await wsgate_server(**tables)
    publisher = await publisher_node.connect()
    await publisher.subscribe("chat:browser")
    try:
        await page.goto(str(first.make_url("/health")))
        await page.evaluate(START)
        for n in range(5):
            await publisher.request({"type": "publish", "room": "chat:browser", "data": n})
        await page.wait_for_function("window.received.length >= 5")
        await first.close()  # the gateway goes away
        for n in range(5, 30):
            await publisher.request({"type": "publish", "room": "chat:browser", "data": n})
        second = TestServer(await create_app(make_settings(**tables)), port=port)
        await second.start_server()  # and comes back on the same address
        try:
            await page.wait_for_function("window.received.length >= 30")
            assert await page.evaluate("window.received") == list(range(30))
            assert await page.evaluate("window.events.includes('recovered')")
        finally:
            await second.close()
    finally:
        await first.close()


async def test_the_js_client_subscribes_again_to_a_room_the_gateway_could_not_recover_yet(
    wsgate_server: StartServer, page: Any, private_redis: Any, broker_prefix: str
) -> None:
    """As tests/test_client.py for the Python client: while Redis restarts, the re-subscription after a
    network blip answers `history is unavailable`; the JS client tries again, on the same connection."""
    server = await wsgate_server(
        broker={"url": private_redis.url, "prefix": broker_prefix, "required": False}, history=HISTORY
    )
    publisher = await server.connect()
    await publisher.subscribe("chat:browser")
    await page.goto(server.url("/health"))
    started = await page.evaluate(START)
    await publisher.request({"type": "publish", "room": "chat:browser", "data": 1})
    await page.wait_for_function("window.received.length >= 1")
    await private_redis.stop()
    server.hub.connections[started["clientId"]].drop(1012, "service restart")  # the network blips
    # back, without the room for now: "open" comes once its re-subscription was answered (`connects` counts
    # before it is sent, and the gateway holds the room while it reads the history)
    await page.wait_for_function("window.events.filter((event) => event === 'open').length === 2")
    assert "chat:browser" not in server.hub.connections[await page.evaluate("window.client.clientId")].rooms
    await private_redis.start()
    await page.wait_for_function("window.events.includes('recovery_failed')", timeout=20_000)  # told, not silently
    await publisher.request({"type": "publish", "room": "chat:browser", "data": 3})
    await page.wait_for_function("window.received.includes(3)", timeout=20_000)
    assert await page.evaluate("window.client.connects") == 2  # in the room again, on the same connection


async def test_the_js_client_matches_replies_by_request_id(wsgate_server: StartServer, page: Any) -> None:
    """Issue 24: an error caused by a fire-and-forget publish no longer fails the next request (it is an
    "error" event); a reply no request waits for is passed on with a console.debug line; a request without
    a reply rejects with a RequestTimeout after `requestTimeout`."""
    server = await wsgate_server(Silent(), history=HISTORY)
    logged: list[tuple[str, str]] = []
    page.on("console", lambda message: logged.append((message.type, message.text)))
    await page.goto(server.url("/health"))
    outcome = await page.evaluate("""async () => {
        const { WsgateClient, GatewayError, RequestTimeout } = await import("/client.js");
        const client = new WsgateClient(location.origin.replace(/^http/, "ws") + "/ws", { requestTimeout: 10000 });
        const errors = [];
        client.on("error", (error) => errors.push([error instanceof GatewayError, error.text]));
        await client.connect();
        client.publish("not-joined", "lost");
        const rtt = await client.ping();  // answered by its pong, not by the publish's error
        client.send({ type: "ping", id: 1e9 });  // a reply no request waits for
        const [subscribed, history] = await Promise.all([client.subscribe("chat:a"), client.history("chat:a")]);
        let timedOut;
        client.options.requestTimeout = 200;  // (only here: every reply before it may take long on a loaded machine)
        try { await client.request({ type: "silent" }); }
        catch (error) { timedOut = [error instanceof RequestTimeout, error.message]; }
        return { rtt: rtt >= 0, errors, room: subscribed.room, messages: history.messages, timedOut };
    }""")
    assert outcome["rtt"] and outcome["errors"] == [[True, "not subscribed to this room"]]
    assert (outcome["room"], outcome["messages"]) == ("chat:a", [])
    assert outcome["timedOut"][0] is True
    assert re.fullmatch(r"no reply to silent \(id \d+\) within 200 ms", outcome["timedOut"][1])
    assert any(kind == "debug" and "no request waits for" in text for kind, text in logged), logged


async def test_the_js_client_follows_the_reconnect_advice(wsgate_server: StartServer, page: Any) -> None:
    """Issue 24: back at once after a restart (its backoff here is a minute, and its jitter always the longest),
    stopped for good after an operator's disconnect (`connect()` rejects with GatewayClosed); errors carry their
    code; a relative URL works (resolved against the page)."""
    server = await wsgate_server(Closer())
    await page.goto(server.url("/health"))
    outcome = await page.evaluate("""async () => {
        Math.random = () => 1;  // every backoff waits its longest: a minute
        const { WsgateClient, GatewayError, GatewayClosed } = await import("/client.js");
        const client = new WsgateClient("/ws", { minBackoff: 60000, maxBackoff: 60000 });
        const closes = [];
        const stopped = new Promise((resolve) => client.on("close", (info) => {
            closes.push(info);
            if (info.reconnect === "no") resolve();
        }));
        await client.connect();
        let coded;
        try { await client.unsubscribe("never-joined"); }
        catch (error) { coded = [error instanceof GatewayError, error.code, error.temporary]; }
        const reopened = new Promise((resolve) => client.on("open", resolve));
        client.send({ type: "close_me", data: "SERVICE_RESTART" });
        await reopened;
        const connects = client.connects;
        client.send({ type: "close_me", data: "OPERATOR_DISCONNECT" });
        await stopped;
        let refused;
        try { await client.connect(); }
        catch (error) { refused = [error instanceof GatewayClosed, error.code, error.reason]; }
        return { protocol: client.protocol, coded, connects, closes, refused };
    }""")
    assert outcome["protocol"] == 2 and outcome["coded"] == [True, 103, False]
    assert outcome["connects"] == 2
    assert outcome["closes"] == [
        {"code": 1012, "reason": "service restart [reconnect=now]", "reconnect": "now"},
        {"code": 1008, "reason": "disconnected by an operator [reconnect=no]", "reconnect": "no"},
    ]
    assert outcome["refused"] == [True, 1008, "disconnected by an operator [reconnect=no]"]
    assert len(server.hub.connections) == 0


async def test_the_js_clients_position_only_moves_forward(wsgate_server: StartServer, page: Any) -> None:
    """As tests/test_idempotency.py for the Python client: a retried key gets nothing back, and a copy of an
    earlier message (the answer a duplicate publish got before) leaves the position where it is, so the next
    reconnection replays nothing twice. `laterEpoch` orders epochs as the gateway does."""
    from .test_idempotency import StaleCopy

    server = await wsgate_server(StaleCopy(), history=HISTORY)
    await page.goto(server.url("/health"))
    started = await page.evaluate(START)
    await page.evaluate("""() => {
        for (const data of ["a", "a"]) window.client.publish("chat:browser", data, { idempotencyKey: "k" });
        window.client.publish("chat:browser", "b");
    }""")
    await page.wait_for_function("window.received.length >= 2")
    await page.evaluate("""() => window.client.send({ type: "stale", room: "chat:browser" })""")
    await page.wait_for_function("window.received.length >= 3")
    assert await page.evaluate("window.received") == ["a", "b", "a"]  # the retry: nothing; then the stale copy
    assert await page.evaluate("window.client.positions.get('chat:browser').offset") == 2  # not moved back
    server.hub.connections[started["clientId"]].drop(1012, "service restart")
    await page.wait_for_function("window.client.connects === 2 && window.events.includes('recovered')")
    await page.evaluate("""() => window.client.publish("chat:browser", "c")""")
    await page.wait_for_function("window.received.length >= 4")
    assert await page.evaluate("window.received") == ["a", "b", "a", "c"]  # "b" not replayed
    assert await page.evaluate("window.client.positions.get('chat:browser').offset") == 3
    epochs = [new_epoch(), new_epoch(), "", "123456789012"]  # (12 digits: an epoch from before they were timed)
    pairs = [[one, other] for one in epochs for other in epochs]
    later = await page.evaluate(
        """async (pairs) => {
        const { laterEpoch } = await import("/client.js");
        return pairs.map(([epoch, than]) => laterEpoch(epoch, than));
    }""",
        pairs,
    )
    assert later == [later_epoch(epoch, than) for epoch, than in pairs]


async def test_after_a_failed_recovery_the_js_client_takes_the_rooms_position(
    wsgate_server: StartServer, page: Any
) -> None:
    """Second review: a recovery answered `recovered: false` with a lower offset in the same epoch (a failover
    that lost the history's tail) kept the client's higher position, and a later resume skipped messages."""
    server = await wsgate_server(history=HISTORY)
    await page.goto(server.url("/health"))
    started = await page.evaluate(START)
    publisher = await server.connect()
    await publisher.subscribe("chat:browser")
    await publisher.request({"type": "publish", "room": "chat:browser", "data": 1})
    await page.wait_for_function("window.received.length >= 1")
    await page.evaluate("""() => {
        const at = window.client.positions.get("chat:browser");
        window.client.positions.set("chat:browser", { offset: at.offset + 5, epoch: at.epoch });  // ahead of it
    }""")
    server.hub.connections[started["clientId"]].drop(1012, "service restart")
    await page.wait_for_function("window.events.includes('recovery_failed')")
    assert await page.evaluate("window.client.positions.get('chat:browser').offset") == 1
