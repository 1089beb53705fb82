"""The operator dashboard: settings, login and sessions, operator messages and live figures.

In a browser: test_browser.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest
import yarl

from wsgate.config import ConfigError
from wsgate.dashboard.sessions import LoginThrottle
from wsgate.keys import DASHBOARD as DASHBOARD_PLUGIN
from wsgate.testing import Peer, Server, StartServer, eventually

PASSWORD = "correct horse battery staple"
SECRET = "dashboard-test-secret-" + "x" * 40
DASHBOARD = {"enabled": True, "password": PASSWORD}


async def login(server: Server, secret: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(server.url("/dashboard/login"), data={"secret": secret}, allow_redirects=False)
        resp.release()
        return resp


async def operator(server: Server, cookie: str, **headers: str) -> Peer:
    client = Peer(await server.raw(headers={"Cookie": f"wsgate_dashboard={cookie}", **headers}))
    client.id = (await client.recv())["data"]["client_id"]
    return client


async def answer(client: Peer, request: dict[str, Any], kind: str) -> dict[str, Any]:
    """Send `request` and return the first `kind` (or error) message: dashboard_stats arrive every second too."""
    await client.send(request)
    while (message := await client.recv())["type"] not in (kind, "error"):
        pass
    return message


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
async def test_a_dashboard_needs_a_way_to_log_in(
    wsgate_server: StartServer, dashboard: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await wsgate_server(dashboard=dashboard)
    assert str(caught.value).startswith(message)


async def test_login_sets_an_http_only_session_and_no_secret_reaches_the_page(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    refused = await login(server, "wrong password")
    assert (refused.status, refused.headers["Location"]) == (302, "/dashboard?failed=1")
    assert "Set-Cookie" not in refused.headers
    assert server.metrics.error_count("dashboard_login_failed") == 1
    accepted = await login(server, PASSWORD)
    assert accepted.status == 302
    cookie = accepted.cookies["wsgate_dashboard"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    async with server.session.get(server.url("/dashboard")) as resp:
        assert "Log in" in await resp.text()  # no cookie: the login form
    async with server.session.get(
        server.url("/dashboard"), headers={"Cookie": f"wsgate_dashboard={cookie.value}"}
    ) as resp:
        page = await resp.text()
        assert (
            resp.headers["Cache-Control"] == "no-store"
            and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        )
    assert 'id="chart"' in page and PASSWORD not in page and cookie.value not in page
    for name in ("dashboard.js", "chart.js", "dashboard.css"):
        async with server.session.get(server.url(f"/dashboard/{name}")) as resp:
            assert resp.status == 200 and PASSWORD not in await resp.text()
    async with server.session.get(server.url("/dashboard/settings.toml")) as resp:
        assert resp.status == 404


async def test_an_admin_jwt_logs_in_too(wsgate_server: StartServer) -> None:
    server = await wsgate_server(
        dashboard={"enabled": True}, auth={"jwt": {"secret": SECRET}}, plugins={"disabled": ["token_auth"]}
    )
    now = int(time.time())
    admin = jwt.encode({"sub": "root", "exp": now + 60, "admin": True}, SECRET, algorithm="HS256")
    user = jwt.encode({"sub": "bob", "exp": now + 60}, SECRET, algorithm="HS256")
    assert "wsgate_dashboard" in (await login(server, admin)).cookies
    assert "wsgate_dashboard" not in (await login(server, user)).cookies
    # an admin token also works on the WebSocket itself, without the cookie
    client = Peer(await server.raw(headers={"Authorization": f"Bearer {admin}"}))
    await client.recv()
    assert (await client.request({"type": "dashboard_watch"}))["type"] == "dashboard_watching"


async def test_no_claim_a_user_can_put_in_a_token_makes_an_operator(wsgate_server: StartServer) -> None:
    server = await wsgate_server(
        dashboard={"enabled": True}, auth={"jwt": {"secret": SECRET}}, plugins={"disabled": ["token_auth"]}
    )
    now = int(time.time())
    for claims in ({"operator": True}, {"dashboard_session": "guessed"}, {"admin": "yes"}):
        forged = jwt.encode({"sub": "mallory", "exp": now + 60, **claims}, SECRET, algorithm="HS256")
        client = Peer(await server.raw(headers={"Authorization": f"Bearer {forged}"}))
        await client.recv()
        assert (await client.request({"type": "dashboard_watch"}))["error"] == "not allowed", claims


GUARDED = {"rooms": ["ops:* = nobody", "private-* = identity"]}  # a tail only an operator may have, an identity room


async def logout(server: Server, cookie: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            server.url("/dashboard/logout"), headers={"Cookie": f"wsgate_dashboard={cookie}"}, allow_redirects=False
        ) as resp:
            assert resp.status == 302


async def granted(server: Server, cookie: str) -> Peer:
    """An operator socket that tails `ops:secret` and is in `private-1`: what a login grants."""
    ops = await operator(server, cookie)
    assert (await ops.request({"type": "dashboard_tail", "room": "ops:secret"}))["type"] == "dashboard_tailing"
    await ops.subscribe("private-1")
    return ops


async def assert_closed_at_once(server: Server, ops: Peer, reason: str) -> None:
    """The next frame is the close (1008, reason): a message published to its tail after the end never arrives."""
    await server.gateway.publish("ops:secret", "after the end")
    msg = await ops.ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    assert (msg.data, msg.extra) == (1008, f"dashboard session ended: {reason}")
    await eventually(lambda: not server.hub.rooms.get("ops:secret"))


async def test_logging_out_closes_every_socket_opened_with_the_login(wsgate_server: StartServer) -> None:
    """The security review: after logout, the socket still got `ops:secret` and could join `private-*` rooms."""
    server = await wsgate_server(dashboard=DASHBOARD, auth=GUARDED)
    cookie = (await login(server, PASSWORD)).cookies["wsgate_dashboard"].value
    tails, watcher = await granted(server, cookie), await operator(server, cookie)
    assert (await watcher.request({"type": "dashboard_watch"}))["type"] == "dashboard_watching"
    await server.gateway.publish("ops:secret", "before")
    assert (await tails.recv())["data"] == "before"
    await logout(server, cookie)
    await assert_closed_at_once(server, tails, "logged out")
    closing = await watcher.closed()
    assert (closing.data, closing.extra) == (1008, "dashboard session ended: logged out")
    late = await operator(server, cookie)  # the old cookie opens an ordinary socket now
    assert (await late.request({"type": "dashboard_tail", "room": "ops:secret"}))["error"] == "not allowed"
    assert (await late.request({"type": "subscribe", "room": "ops:secret"}))["error"] == "not allowed"


async def test_a_login_that_expires_closes_its_sockets(wsgate_server: StartServer) -> None:
    """`session_ttl` (60 s at least: here a login made shorter, as an admin JWT's is) ends on open sockets too."""
    server = await wsgate_server(dashboard=DASHBOARD, auth=GUARDED)
    lifetime = 2.0  # room for the connect and the grants below on a loaded machine
    started = time.monotonic()
    cookie = server.app[DASHBOARD_PLUGIN].sessions.create(lifetime=lifetime)
    ops = await granted(server, cookie)
    closing = await ops.closed()
    assert (closing.data, closing.extra) == (1008, "dashboard session ended: expired")
    assert time.monotonic() - started < lifetime + 1.5  # at the login's end, not at some later check
    assert not server.hub.rooms.get("ops:secret")


@pytest.mark.slow
async def test_an_admin_token_login_ends_with_the_token(wsgate_server: StartServer) -> None:
    """The security review: a dashboard login made with an admin JWT outlived the token on open sockets."""
    server = await wsgate_server(
        dashboard={"enabled": True}, auth={"jwt": {"secret": SECRET}, **GUARDED}, plugins={"disabled": ["token_auth"]}
    )
    admin = jwt.encode({"sub": "root", "exp": int(time.time()) + 3, "admin": True}, SECRET, algorithm="HS256")
    cookie = (await login(server, admin)).cookies["wsgate_dashboard"].value
    ops = await granted(server, cookie)
    closing = await ops.closed()
    assert (closing.data, closing.extra) == (1008, "dashboard session ended: expired")
    assert time.time() < jwt.decode(admin, options={"verify_signature": False})["exp"] + 1.5


async def test_a_new_login_from_the_same_browser_ends_the_old_one(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD, auth=GUARDED)
    old = (await login(server, PASSWORD)).cookies["wsgate_dashboard"].value
    ops = await granted(server, old)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            server.url("/dashboard/login"),
            data={"secret": PASSWORD},
            allow_redirects=False,
            headers={"Cookie": f"wsgate_dashboard={old}"},
        ) as resp:
            new = resp.cookies["wsgate_dashboard"].value
    await assert_closed_at_once(server, ops, "replaced by a new login")
    assert not server.app[DASHBOARD_PLUGIN].sessions.valid(old) and new != old
    assert (await (await granted(server, new)).request({"type": "ping"}))["type"] == "pong"


async def test_other_sites_cannot_use_an_operator_login(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD, security={"allowed_origins": ["https://app.example.com"]})
    async with aiohttp.ClientSession() as session:  # login CSRF: a form on another site
        async with session.post(
            server.url("/dashboard/login"),
            data={"secret": PASSWORD},
            allow_redirects=False,
            headers={"Origin": "https://evil.example"},
        ) as resp:
            assert resp.status == 403 and "Set-Cookie" not in resp.headers
    cookie = (await login(server, PASSWORD)).cookies["wsgate_dashboard"].value
    # a page of an allowed origin, with the operator's cookie riding along, gets an ordinary connection
    app_page = await operator(server, cookie, Origin="https://app.example.com")
    assert (await app_page.request({"type": "dashboard_watch"}))["error"] == "not allowed"
    # the dashboard's own page is allowed even though allowed_origins does not list this host
    own_page = await operator(server, cookie, Origin=server.url("/").rstrip("/"))
    assert (await own_page.request({"type": "dashboard_watch"}))["type"] == "dashboard_watching"


@pytest.mark.slow
async def test_operators_watch_publish_tail_and_disconnect(
    wsgate_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("wsgate.dashboard.plugin.TOP_ROOMS_EVERY", 1)  # (every report finds them: see test_browser)
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
    published = await answer(
        ops, {"type": "dashboard_publish", "room": "chat:ops", "data": {"note": "maintenance"}}, "dashboard_published"
    )
    assert published == {
        "type": "dashboard_published",
        "room": "chat:ops",
        "data": {"delivered": 3},
        "timestamp": published["timestamp"],
    }
    assert (await members[0].recv())["data"] == {"note": "maintenance"}
    assert (await answer(ops, {"type": "dashboard_tail", "room": "chat:ops"}, "dashboard_tailing"))[
        "room"
    ] == "chat:ops"
    await members[1].send({"type": "publish", "room": "chat:ops", "data": "seen by the operator"})
    while (message := await ops.recv())["type"] != "message":
        pass  # dashboard_stats keep coming
    assert message["data"] == "seen by the operator"
    gone = await answer(ops, {"type": "dashboard_disconnect", "client_id": members[2].id}, "dashboard_disconnected")
    assert gone["data"] == {"client_id": members[2].id, "found": True}
    closing = await members[2].closed()
    assert (closing.data, closing.extra) == (1008, "disconnected by an operator")


async def test_dashboard_messages_are_for_operators_only(wsgate_server: StartServer) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    stranger = await server.connect()
    for request in (
        {"type": "dashboard_watch"},
        {"type": "dashboard_disconnect", "client_id": stranger.id},
        {"type": "dashboard_publish", "room": "r", "data": 1},
    ):
        answer = await stranger.request(request)
        assert (answer["error"], answer["detail"]) == ("not allowed", "dashboard messages are for operators")
    forged = Peer(await server.raw(headers={"Cookie": "wsgate_dashboard=forged"}))
    await forged.recv()
    assert (await forged.request({"type": "dashboard_watch"}))["error"] == "not allowed"


@pytest.mark.slow
async def test_with_redis_the_dashboard_lists_every_node(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
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
    assert nodes == {a.broker.node_id.decode(): 1, b.broker.node_id.decode(): 2}  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_the_nodes_table_lists_nodes_that_do_not_run_the_dashboard(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """Issue 23: every node with the Redis broker reports its figures (task `figures`), not only the dashboard's;
    a node that stops is gone from the table within STATS_TTL, and the hash expires once nobody reports."""
    import redis.asyncio as aioredis

    from wsgate.presence.redis import STATS_TTL

    broker = {"url": redis_url, "prefix": broker_prefix}
    a = await wsgate_server(broker=broker, dashboard=DASHBOARD)
    plain = await wsgate_server(broker=broker)  # no dashboard here
    assert plain.plugins.get("dashboard") is None
    on_plain = [await plain.connect() for _ in range(3)]
    ops = await operator(a, (await login(a, PASSWORD)).cookies["wsgate_dashboard"].value)
    await ops.request({"type": "dashboard_watch"})
    a_id, plain_id = a.broker.node_id.decode(), plain.broker.node_id.decode()  # type: ignore[attr-defined]

    async def table() -> dict[str, int]:
        while (stats := await ops.recv())["type"] != "dashboard_stats":
            pass
        return {node["node"]: node["clients"] for node in stats["data"]["nodes"]}

    async with asyncio.timeout(10):
        while (nodes := await table()) != {a_id: 1, plain_id: len(on_plain)}:  # figures up to a second old
            pass
    client = aioredis.from_url(redis_url)
    try:
        ttl = await client.pttl(f"{broker_prefix}:stats")
        assert 0 < ttl <= STATS_TTL * 1000  # bounded: it goes when every node stops reporting
        await plain.test_server.close()  # the plain node stops: its row goes once it is STATS_TTL old
        async with asyncio.timeout(STATS_TTL + 5):
            while plain_id in (nodes := await table()):
                pass
        assert nodes == {a_id: 1}
    finally:
        await client.aclose()


class Clock:
    """A monotonic clock the test moves: the throttle's waits without waiting them out."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_guessing_the_password_is_slowed_but_the_operator_is_never_locked_out(
    wsgate_server: StartServer,
) -> None:
    server = await wsgate_server(dashboard=DASHBOARD)
    clock = Clock()
    server.app[DASHBOARD_PLUGIN].throttle = LoginThrottle(free=3, base=0.2, most=0.4, clock=clock)  # 3, 1 s, 30 s
    for _ in range(3):  # the free attempts
        assert (await login(server, "a wrong guess")).status == 302
    refused = await login(server, PASSWORD)  # now every attempt waits its turn, even the right password's
    assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
    clock.now += 0.25  # the first wait (0.2 s) is over
    assert (await login(server, "another wrong guess")).status == 302
    clock.now += 0.3  # the next wait doubled: 0.4 s
    assert (await login(server, PASSWORD)).status == 429
    for _ in range(5):  # a guesser keeps going: each failure doubles the wait, up to `most`
        clock.now += 0.45
        assert (await login(server, "another wrong guess")).status == 302
    clock.now += 0.45  # never more than `most` after the last failure
    accepted = await login(server, PASSWORD)
    assert (accepted.status, accepted.headers["Location"]) == (302, "/dashboard")
    assert "wsgate_dashboard" in accepted.cookies


async def test_a_burst_of_slow_logins_gets_only_the_free_attempts_checked(wsgate_server: StartServer) -> None:
    """The security review: 200 logins holding their bodies for a second, released together: all were checked.
    Each attempt is counted as its form arrives, with no await before its check: only the free ones are checked.
    (The throttle's clock stands still: however long the burst takes here, no wait ends during it.)"""
    server = await wsgate_server(dashboard=DASHBOARD)
    server.app[DASHBOARD_PLUGIN].throttle = LoginThrottle(clock=Clock())
    held = [await open_attempt(server, b"secret=a+wrong+guess", held=5) for _ in range(200)]
    for _, writer in held:
        writer.write(b"guess")
    statuses = [await status_of(reader) for reader, _ in held]
    assert statuses.count(429) == 197 and statuses.count(302) == 3  # only the free ones were checked
    for _, writer in held:
        writer.close()


async def open_attempt(
    server: Server, body: bytes, *, held: int = 0, cookie: str = "", expect: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A login over a raw socket that sends its form but its last `held` bytes (`expect`: asks for
    `100 Continue`, which aiohttp sends as the login view is called)."""
    url = yarl.URL(server.url("/"))
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST /dashboard/login HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        + (f"Cookie: {cookie}\r\n" if cookie else "")
        + ("Expect: 100-continue\r\n" if expect else "")
        + "\r\n"
    )
    writer.write(head.encode() + body[: len(body) - held])
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the next response on a raw socket (a `100 Continue` is skipped)."""
    async with asyncio.timeout(10):
        while True:
            line = await reader.readline()
            assert line.startswith(b"HTTP/1.1 "), line
            status = int(line.split()[1])
            while (await reader.readline()).strip():
                pass  # the headers
            if status != 100:
                return status


async def test_logins_held_open_hold_no_door_shut(wsgate_server: StartServer) -> None:
    """The security review: attempts were reserved before their forms were read, so unfinished forms kept the
    right password out. An attempt now counts once its form has arrived: 50 held open, the operator gets in."""
    server = await wsgate_server(dashboard=DASHBOARD)
    held = [await open_attempt(server, b"secret=a+wrong+guess", held=5, expect=True) for _ in range(50)]
    for reader, _ in held:  # every one reached the login view (aiohttp answers 100 Continue as it calls it)
        assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
    accepted = await login(server, PASSWORD)
    assert (accepted.status, accepted.headers["Location"]) == (302, "/dashboard")
    for _, writer in held:
        writer.close()


@pytest.mark.slow
async def test_a_guesser_timing_its_attempts_cannot_keep_the_operator_out(wsgate_server: StartServer) -> None:
    """The security review: a guesser at the operator's address holds forms open and sends the next attempt the
    moment a wait ends; the right password got in 0 times in 40. The operator's browser, which logged in before,
    carries a device cookie and is counted on its own; an admin JWT is never throttled."""
    server = await wsgate_server(
        dashboard=DASHBOARD, auth={"jwt": {"secret": SECRET}}, plugins={"disabled": ["token_auth"]}
    )
    server.app[DASHBOARD_PLUGIN].throttle = LoginThrottle(free=3, base=0.2, most=0.4)  # the defaults: 3, 1 s, 30 s
    device = (await login(server, PASSWORD)).cookies["wsgate_dashboard_device"].value  # the operator, last week
    answers: dict[int, int] = {}
    enough, stop = asyncio.Event(), asyncio.Event()

    async def guesser() -> None:
        holding = [await open_attempt(server, b"secret=guess", held=1) for _ in range(10)]
        async with asyncio.timeout(20):
            while not stop.is_set():  # as fast as it can: each wait's end is taken by its next attempt
                reader, writer = await open_attempt(server, b"secret=guess")
                status = await status_of(reader)
                writer.close()
                answers[status] = answers.get(status, 0) + 1
                if answers.get(429, 0) >= 20 and answers.get(302, 0) >= 6:  # waits ended and were taken
                    enough.set()
        for _, writer in holding:
            writer.close()

    task = asyncio.create_task(guesser())
    await asyncio.wait_for(enough.wait(), 15)
    started = time.monotonic()
    reader, writer = await open_attempt(
        server, f"secret={PASSWORD.replace(' ', '+')}".encode(), cookie=f"wsgate_dashboard_device={device}"
    )
    assert await status_of(reader) == 302  # at the first attempt, while the guesser goes on
    writer.close()
    admin = jwt.encode({"sub": "root", "exp": int(time.time()) + 60, "admin": True}, SECRET, algorithm="HS256")
    assert "wsgate_dashboard" in (await login(server, admin)).cookies  # a new browser, with an admin JWT
    assert time.monotonic() - started < 5
    stop.set()
    await task
    assert answers[429] >= 20  # the guesser was slowed all along
