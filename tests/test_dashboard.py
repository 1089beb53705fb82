"""The operator dashboard: settings, login and sessions, operator messages and live figures (browser: test_browser.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from wsgate.config import ConfigError
from wsgate.testing import Client, Server, StartServer

PASSWORD = "correct horse battery staple"
SECRET = "dashboard-test-secret-" + "x" * 40
DASHBOARD = {"enabled": True, "password": PASSWORD}


async def login(server: Server, secret: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(server.url("/dashboard/login"), data={"secret": secret}, allow_redirects=False)
        resp.release()
        return resp


async def operator(server: Server, cookie: str) -> Client:
    client = Client(await server.raw(headers={"Cookie": f"wsgate_dashboard={cookie}"}))
    client.id = (await client.recv())["data"]["client_id"]
    return client


async def test_the_dashboard_is_off_by_default(server: Server) -> None:
    async with server.session.get(server.url("/dashboard")) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("dashboard", "message"),
    [
        ({"enabled": True}, "invalid setting dashboard.enabled = true: expected dashboard.password (or the JWT"),
        ({"enabled": True, "password": "short"}, "invalid setting dashboard.password: expected at least 12 characters"),
    ],
)
async def test_a_dashboard_needs_a_way_to_log_in(wsgate_server: StartServer, dashboard: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await wsgate_server(dashboard=dashboard)
    assert str(caught.value).startswith(message)


async def test_login_sets_an_http_only_session_and_no_secret_reaches_the_page(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    refused = await login(server, "wrong password")
    assert (refused.status, refused.headers["Location"]) == (302, "/dashboard?failed=1")
    assert "Set-Cookie" not in refused.headers
    assert server.gateway.metrics.error_count("dashboard_login_failed") == 1
    accepted = await login(server, PASSWORD)
    assert accepted.status == 302
    cookie = accepted.cookies["wsgate_dashboard"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    async with server.session.get(server.url("/dashboard")) as resp:
        assert "Log in" in await resp.text()  # no cookie: the login form
    async with server.session.get(server.url("/dashboard"), headers={"Cookie": f"wsgate_dashboard={cookie.value}"}) as resp:
        page = await resp.text()
        assert resp.headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert 'id="chart"' in page and PASSWORD not in page and cookie.value not in page
    for name in ("dashboard.js", "chart.js", "dashboard.css"):
        async with server.session.get(server.url(f"/dashboard/{name}")) as resp:
            assert resp.status == 200 and PASSWORD not in await resp.text()
    async with server.session.get(server.url("/dashboard/settings.toml")) as resp:
        assert resp.status == 404


async def test_an_admin_jwt_logs_in_too(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard={"enabled": True}, auth={"jwt": {"secret": SECRET}},
                                 plugins={"disabled": ["token_auth"]})
    now = int(time.time())
    admin = jwt.encode({"sub": "root", "exp": now + 60, "admin": True}, SECRET, algorithm="HS256")
    user = jwt.encode({"sub": "bob", "exp": now + 60}, SECRET, algorithm="HS256")
    assert "wsgate_dashboard" in (await login(server, admin)).cookies
    assert "wsgate_dashboard" not in (await login(server, user)).cookies
    # an admin token also works on the WebSocket itself, without the cookie
    client = Client(await server.raw(headers={"Authorization": f"Bearer {admin}"}))
    await client.recv()
    assert (await client.request({"type": "dashboard_watch"}))["type"] == "dashboard_watching"


async def test_operators_watch_publish_tail_and_disconnect(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    cookie = (await login(server, PASSWORD)).cookies["wsgate_dashboard"].value
    ops = await operator(server, cookie)
    members = [await server.connect() for _ in range(3)]
    for member in members:
        await member.subscribe("chat:ops")
    assert (await ops.request({"type": "dashboard_watch"}))["type"] == "dashboard_watching"
    stats = await ops.recv()
    assert stats["type"] == "dashboard_stats"
    node = stats["data"]["node"]
    assert (node["clients"], node["rooms"], node["top_rooms"], node["broker"]) == (4, 1, [["chat:ops", 3]], "ok")
    assert stats["data"]["nodes"] == [node]
    answer = await ops.request({"type": "dashboard_publish", "room": "chat:ops", "data": {"note": "maintenance"}})
    assert answer == {"type": "dashboard_published", "room": "chat:ops", "data": {"delivered": 3},
                      "timestamp": answer["timestamp"]}
    assert (await members[0].recv())["data"] == {"note": "maintenance"}
    tailing = await ops.request({"type": "dashboard_tail", "room": "chat:ops"})
    assert tailing["type"] == "dashboard_tailing"
    await members[1].send({"type": "publish", "room": "chat:ops", "data": "seen by the operator"})
    while (message := await ops.recv())["type"] != "message":
        pass  # dashboard_stats keep coming
    assert message["data"] == "seen by the operator"
    gone = await ops.request({"type": "dashboard_disconnect", "client_id": members[2].id})
    while gone["type"] != "dashboard_disconnected":
        gone = await ops.recv()
    assert gone["data"] == {"client_id": members[2].id, "found": True}
    closing = await members[2].closed()
    assert (closing.data, closing.extra) == (1008, "disconnected by an operator")


async def test_dashboard_messages_are_for_operators_only(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    stranger = await server.connect()
    for request in ({"type": "dashboard_watch"}, {"type": "dashboard_disconnect", "client_id": stranger.id},
                    {"type": "dashboard_publish", "room": "r", "data": 1}):
        answer = await stranger.request(request)
        assert (answer["error"], answer["detail"]) == ("not allowed", "dashboard messages are for operators")
    forged = Client(await server.raw(headers={"Cookie": "wsgate_dashboard=forged"}))
    await forged.recv()
    assert (await forged.request({"type": "dashboard_watch"}))["error"] == "not allowed"


async def test_with_redis_the_dashboard_lists_every_node(wsgate_server: StartServer, redis_url: str,
                                                         broker_prefix: str) -> None:
    tables = {"broker": {"url": redis_url, "prefix": broker_prefix}, "dashboard": DASHBOARD}
    a, b = await wsgate_server(**tables), await wsgate_server(**tables)
    on_b = [await b.connect() for _ in range(2)]
    cookie = (await login(a, PASSWORD)).cookies["wsgate_dashboard"].value
    ops = await operator(a, cookie)
    await ops.request({"type": "dashboard_watch"})
    async with asyncio.timeout(10):
        while True:  # b reports its figures once a second
            stats = await ops.recv()
            nodes = {node["node"]: node["clients"] for node in stats["data"]["nodes"]}
            if sorted(nodes.values()) == [1, len(on_b)]:  # figures up to a second old: wait for current ones
                break
    assert nodes == {a.gateway.broker.node_id.decode(): 1, b.gateway.broker.node_id.decode(): 2}  # type: ignore[attr-defined]
