"""Zero-loss rolling restart: `shutdown.mode = "restart"`, and clients resuming on another node."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsgate.sdk.client import GatewayClient
from wsgate.testing import TIMEOUT, Server, StartServer

HISTORY = {"rooms": ["chat:*"], "size": 1000}


@pytest.fixture
async def cluster(wsgate_server: StartServer, redis_url: str, broker_prefix: str) -> tuple[Server, Server]:
    """Two gateways sharing Redis and history; the first restarts in restart mode."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    restarting = await wsgate_server(broker=broker, history=HISTORY, shutdown={"mode": "restart", "window": "500ms"})
    staying = await wsgate_server(broker=broker, history=HISTORY)
    return restarting, staying


async def received_until(client: GatewayClient, last: int) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(TIMEOUT * 3):
        while not got or got[-1] != last:
            message = await client.receive()
            assert message["type"] == "message", message  # a failed recovery would show up here
            got.append(message["data"])
    return got


async def test_restarting_one_of_two_nodes_while_publishing_loses_and_repeats_nothing(
    cluster: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    restarting, staying = cluster
    urls = [restarting.url("/ws"), staying.url("/ws")]
    clients = [GatewayClient(urls, backoff=(0.01, 0.2)) for _ in range(12)]
    for client in clients:
        await client.connect()
        await client.subscribe("chat:live")
    assert len(restarting.hub.connections) == 12
    publisher = await staying.connect()
    await publisher.subscribe("chat:live")
    caplog.set_level(logging.INFO, "wsgate.hub")
    n, drain, after_drain = 0, None, 0
    while after_drain < 50:  # publish before, during and after the restart
        await publisher.send({"type": "publish", "room": "chat:live", "data": n})
        assert (await publisher.recv())["data"] == n  # paced by its own round trip
        if n == 100:  # SIGTERM: /health turns 503, new clients are refused, clients get 1012 in batches
            drain = asyncio.create_task(restarting.drain(5.0))
        elif drain is not None and drain.done():
            after_drain += 1
        n += 1
    assert drain is not None
    await drain
    for client in clients:
        assert await received_until(client, n - 1) == list(range(n))  # every message, once, in order
        await client.connected()
        assert client.connects == 2 and client.url == urls[1]
    assert (await restarting.health())[0] == 503
    restarted = restarting.metrics.registry.get_sample_value(
        "websocket_connections_closed_total", {"reason": "restart"}
    )
    assert restarted == 12
    assert "draining: closing 12 clients (restart, 5 batches)" in caplog.text
    for client in clients:
        await client.close()


@pytest.mark.slow
async def test_sigterm_in_restart_mode_closes_with_1012_and_exits_0() -> None:
    import signal

    import aiohttp

    from .processes import environment, start_wsgate

    server = await start_wsgate(
        env=environment(WEBSOCKET_TIMEOUT="8s", WSGATE_SHUTDOWN__MODE="restart", WSGATE_SHUTDOWN__WINDOW="500ms")
    )
    try:
        async with aiohttp.ClientSession() as session:
            clients = [await session.ws_connect(server.url("/ws")) for _ in range(10)]
            for ws in clients:
                assert (await ws.receive_json())["type"] == "connected"
            server.proc.send_signal(signal.SIGTERM)
            for ws in clients:
                closing = await ws.receive(timeout=5)
                assert (closing.type, closing.data, closing.extra) == (aiohttp.WSMsgType.CLOSE, 1012, "service restart")
        assert await server.finish(timeout=8) == 0
        assert "draining: closing 10 clients (restart, 5 batches)" in "".join(server.lines)
    finally:
        await server.kill()
