"""Rooms spanning gateways over a real Redis: in-process nodes, real processes, gunicorn workers, the API."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from wsgate.broker.redis import RedisBroker
from wsgate.sdk.publisher import HttpPublisher, PublishError, RedisPublisher
from wsgate.testing import Peer, Server, StartServer, eventually

from .conftest import PrivateRedis
from .processes import environment, run_wsgate, spawn, start_wsgate

Cluster = Callable[..., Awaitable[Server]]
KEY = "test-api-key"


@pytest.fixture
def node(wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> Cluster:
    """`await node()` starts one more gateway of a cluster sharing Redis (and an API key)."""

    async def start(**tables: object) -> Server:
        broker = {"url": redis_url, "prefix": broker_prefix, **tables.pop("broker", {})}  # type: ignore[dict-item]
        api = {"key": KEY, **tables.pop("api", {})}  # type: ignore[dict-item]
        return await wsgate_server(broker=broker, api=api, **tables)

    return start


async def joined(server: Server, room: str) -> Peer:
    client = await server.connect()
    await client.subscribe(room)  # answered once this node receives the room from Redis
    return client


async def test_room_messages_and_broadcasts_reach_every_node_exactly_once_in_order(node: Cluster) -> None:
    a, b, c = await node(), await node(), await node()
    on_a, on_b, on_c = await joined(a, "chat"), await joined(b, "chat"), await joined(c, "chat")
    for n in range(100):
        await on_a.send({"type": "publish", "room": "chat", "data": {"n": n, "from": "a"}})
    await on_b.send({"type": "broadcast", "data": "hello from b"})
    for client in (on_a, on_b, on_c):
        got = [await client.recv() for _ in range(101)]
        from_a = [m for m in got if m.get("room") == "chat"]
        broadcasts = [m for m in got if "room" not in m]
        assert [m["data"] for m in from_a] == [{"n": n, "from": "a"} for n in range(100)]  # a's order kept
        assert {m["client_id"] for m in from_a} == {on_a.id}
        assert [m["data"] for m in broadcasts] == ["hello from b"]
        assert (await client.request({"type": "ping"}))["type"] == "pong"  # nothing more: exactly once


async def test_the_same_frame_reaches_every_node(node: Cluster) -> None:
    a, b = await node(), await node()
    on_a, on_b = await joined(a, "r"), await joined(b, "r")
    await on_b.send({"type": "publish", "room": "r", "data": [1, 2.5, "x"]})
    got_a, got_b = await on_a.recv(), await on_b.recv()
    assert got_a == got_b  # same client_id, timestamp and data: encoded once, relayed as bytes


async def test_health_and_metrics_show_the_broker(node: Cluster) -> None:
    a = await node()
    status, body = await a.health()
    assert (status, body["broker"]) == (200, "ok")


async def test_redis_restart_keeps_clients_and_local_delivery_then_recovers(
    private_redis: PrivateRedis,
    wsgate_server: StartServer,
    broker_prefix: str,  # Redis outlives the gateways
) -> None:
    settings = {"url": private_redis.url, "prefix": broker_prefix}
    a, b = await wsgate_server(broker=settings), await wsgate_server(broker=settings)
    on_a, also_on_a, on_b = await joined(a, "r"), await joined(a, "r"), await joined(b, "r")
    await private_redis.stop()
    await eventually(lambda: a.broker.state == "degraded")
    assert (await a.health())[1]["broker"] == "degraded"
    await on_a.send({"type": "publish", "room": "r", "data": "during"})
    assert (await on_a.recv())["data"] == "during"
    assert (await also_on_a.recv())["data"] == "during"  # local delivery never stopped
    await private_redis.start()
    for server in (a, b):
        broker = server.broker
        assert isinstance(broker, RedisBroker)
        await asyncio.wait_for(broker.receiving.wait(), 15)
        await broker.wait_receiving("r")
    await eventually(lambda: a.broker.state == "ok")
    await on_a.send({"type": "publish", "room": "r", "data": "after"})
    assert (await on_b.recv())["data"] == "after"  # cross-node delivery is back
    for client in (on_a, also_on_a, on_b):  # nobody was dropped
        while (msg := await client.request({"type": "ping"}))["type"] != "pong":
            assert msg["data"] == "after"
    assert (await a.health())[1]["broker"] == "ok"


async def test_api_publishes_cluster_wide_and_counts_local_recipients(node: Cluster) -> None:
    a, b = await node(api={"server_id": "billing"}), await node()
    on_a, on_b = await joined(a, "orders"), await joined(b, "orders")
    headers = {"Authorization": f"Bearer {KEY}"}
    async with a.session.post(a.url("/api/publish"), json={"room": "orders", "data": {"id": 7}}, headers=headers) as r:
        assert (r.status, await r.json()) == (200, {"local_clients": 1, "delivered": 1})
    for client in (on_a, on_b):
        msg = await client.recv()
        assert (msg["type"], msg["room"], msg["data"], msg["client_id"]) == ("message", "orders", {"id": 7}, "billing")
    body = {"data": {"event": "deploy"}, "type": "notification"}
    async with b.session.post(b.url("/api/broadcast"), json=body, headers=headers) as r:
        assert (r.status, await r.json()) == (200, {"local_clients": 1, "delivered": 1})
    for client in (on_a, on_b):
        msg = await client.recv()
        assert (msg["type"], msg["data"]) == ("notification", {"event": "deploy"})
        assert "client_id" not in msg or msg["client_id"] is None


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/api/publish", b'{"room":"r","data":1}', {"Authorization": "Bearer wrong"}, 401, "invalid API key"),
        ("/api/publish", b'{"room":"r","data":1}', {}, 401, "invalid API key"),
        ("/api/publish", b"{not json", {"Authorization": f"Bearer {KEY}"}, 400, "invalid JSON format"),
        ("/api/publish", b"[1]", {"Authorization": f"Bearer {KEY}"}, 400, "invalid JSON format"),
        ("/api/publish", b'{"data":1}', {"Authorization": f"Bearer {KEY}"}, 400, "room name is required"),
        ("/api/publish", b'{"room":5}', {"Authorization": f"Bearer {KEY}"}, 400, "invalid JSON format"),
        ("/api/publish", b'{"room":"r","type":""}', {"Authorization": f"Bearer {KEY}"}, 400, "invalid JSON format"),
        (
            "/api/broadcast",
            b'{"data":"' + b"x" * 2000 + b'"}',
            {"Authorization": f"Bearer {KEY}"},
            413,
            "request body too large",
        ),
    ],
)
async def test_api_errors_are_precise(
    node: Cluster, path: str, body: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    server = await node(api={"max_body_size": 1000})
    async with server.session.post(server.url(path), data=body, headers=headers) as resp:
        assert resp.status == status
        assert (await resp.json())["error"] == error


async def test_api_is_off_without_a_key(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    async with server.session.post(server.url("/api/publish"), json={"room": "r"}) as resp:
        assert resp.status == 404


async def test_python_publishers(node: Cluster, redis_url: str, broker_prefix: str) -> None:
    a, b = await node(), await node()
    on_a, on_b = await joined(a, "news"), await joined(b, "news")
    http = HttpPublisher(str(a.test_server.make_url("/")), KEY)
    through_redis = RedisPublisher(redis_url, prefix=broker_prefix, server_id="cron")
    try:
        assert await http.publish("news", "via http") == 1
        assert await through_redis.publish("news", "via redis") == 2  # two nodes subscribed
        assert await through_redis.broadcast("to all", type="notification") >= 2
        for client in (on_a, on_b):  # three publishers: no order between them
            got = {m["data"]: m for m in [await client.recv() for _ in range(3)]}
            assert set(got) == {"via http", "via redis", "to all"}
            assert got["via redis"]["client_id"] == "cron"
            assert got["to all"]["type"] == "notification"
        with pytest.raises(PublishError) as refused:
            await HttpPublisher(str(a.test_server.make_url("/")), "wrong").publish("news", 1)
        assert (refused.value.status, str(refused.value)) == (401, "invalid API key")
    finally:
        await http.close()
        await through_redis.close()


# --- real processes -----------------------------------------------------------------------


@pytest.mark.slow
async def test_two_gateway_processes_share_rooms(redis_url: str, broker_prefix: str) -> None:
    env = environment(WSGATE_BROKER__URL=redis_url, WSGATE_BROKER__PREFIX=broker_prefix)
    one, two = await start_wsgate(env=env), await start_wsgate(env=env)
    try:
        async with aiohttp.ClientSession() as session:
            clients = [await session.ws_connect(p.url("/ws")) for p in (one, two)]
            for ws in clients:
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "subscribe", "room": "x"})
                assert (await ws.receive_json())["type"] == "subscribed"
            for n in range(50):
                await clients[n % 2].send_json({"type": "publish", "room": "x", "data": n})
            await clients[1].send_json({"type": "broadcast", "data": "end"})
            for ws in clients:
                got = [(await ws.receive_json(timeout=5))["data"] for _ in range(51)]
                assert [d for d in got if d != "end" and d % 2 == 0] == list(range(0, 50, 2))  # one's order
                assert [d for d in got if d != "end" and d % 2 == 1] == list(range(1, 50, 2))  # two's order
                assert got.count("end") == 1
            for ws in clients:
                await ws.close()
    finally:
        await one.kill()
        await two.kill()


@pytest.mark.slow
async def test_gunicorn_three_workers_with_redis(redis_url: str, broker_prefix: str, tmp_path: Path) -> None:
    settings = tmp_path / "cluster.toml"
    settings.write_text(f'[websocket]\nenabled = true\n[broker]\nurl = "{redis_url}"\nprefix = "{broker_prefix}"\n')
    server = await spawn(
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:wsgate.gunicorn_conf",
        "wsgate.app:create_app",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "3",
        env=environment(WSGATE_SETTINGS=str(settings)),
    )
    try:
        server.port = int((await server.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
        async with aiohttp.ClientSession() as session:
            clients = []
            for _ in range(30):
                ws = await session.ws_connect(server.url("/ws"))
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "subscribe", "room": "all"})
                assert (await ws.receive_json())["type"] == "subscribed"
                clients.append(ws)
            await clients[0].send_json({"type": "publish", "room": "all", "data": "room message"})
            await clients[-1].send_json({"type": "broadcast", "data": "broadcast"})
            for ws in clients:
                got = {(await ws.receive_json(timeout=10))["data"] for _ in range(2)}
                assert got == {"room message", "broadcast"}
            server.proc.send_signal(signal.SIGTERM)
            for ws in clients:
                closing = await ws.receive(timeout=15)
                assert closing.data == 1001
                await ws.close()
        assert await server.finish(timeout=30) == 0
    finally:
        await server.kill()


@pytest.mark.slow
async def test_unreachable_redis_stops_start_up_with_one_line() -> None:
    env = environment(WSGATE_BROKER__URL="redis://127.0.0.1:1/0", WSGATE_BROKER__CONNECT_TIMEOUT="1s")
    code, stderr = await run_wsgate("--port", "0", env=env)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("wsgate: cannot reach Redis at redis://127.0.0.1:1/0: ")
    assert "Traceback" not in stderr
    lenient = await start_wsgate(
        env=environment(
            WSGATE_BROKER__URL="redis://127.0.0.1:1/0",
            WSGATE_BROKER__CONNECT_TIMEOUT="1s",
            WSGATE_BROKER__REQUIRED="false",
        )
    )
    try:
        async with aiohttp.ClientSession() as session, session.get(lenient.url("/health")) as resp:
            assert (resp.status, (await resp.json())["broker"]) == (200, "degraded")
    finally:
        await lenient.kill()
