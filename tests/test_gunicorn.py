"""`wsgate.app:create_app` under gunicorn's aiohttp worker, as a real process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from .processes import environment, spawn


async def test_gunicorn_serves_the_protocol_and_shuts_down_gracefully(tmp_path: Path) -> None:
    settings = tmp_path / "gunicorn.toml"
    settings.write_text("[websocket]\nenabled = true\n[websocket.limits]\nmax_connections = 10\n")
    server = await spawn(
        sys.executable, "-m", "gunicorn", "wsgate.app:create_app",
        "--worker-class", "wsgate.worker.GatewayWorker", "--bind", "127.0.0.1:0", "--workers", "1",
        "--graceful-timeout", "10",
        env=environment(WSGATE_SETTINGS=str(settings)),
    )
    try:
        server.port = int((await server.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
        await server.wait_for_line(r"Booting worker")
        async with aiohttp.ClientSession() as session:
            # the worker may still be importing the app: the first request waits for it
            async with session.get(server.url("/health")) as resp:
                assert {k: v for k, v in (await resp.json()).items() if k in ("status", "clients", "rooms")} == {
                    "status": "healthy", "clients": 0, "rooms": 0}
            async with session.ws_connect(server.url("/ws")) as a, session.ws_connect(server.url("/ws")) as b:
                for ws in (a, b):
                    assert (await ws.receive_json())["type"] == "connected"
                    await ws.send_json({"type": "subscribe", "room": "g"})
                    assert (await ws.receive_json())["data"]["room"] == "g"
                await a.send_json({"type": "publish", "room": "g", "data": "hi"})
                for ws in (a, b):
                    assert (await ws.receive_json())["data"] == "hi"
                server.proc.send_signal(signal.SIGTERM)
                for ws in (a, b):
                    closing = await ws.receive(timeout=10)
                    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert await server.finish(timeout=15) == 0
        assert "Traceback" not in "".join(server.lines)
    finally:
        await server.kill()


async def test_two_workers_scrape_shows_the_sum_and_sigterm_closes_everyone(tmp_path: Path) -> None:
    """gunicorn -w 2 with the config module and PROMETHEUS_MULTIPROC_DIR: /metrics sums both workers."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics_dir = tmp_path / "prometheus"
    server = await spawn(
        sys.executable, "-m", "gunicorn", "-c", "python:wsgate.gunicorn_conf", "wsgate.app:create_app",
        "--bind", "127.0.0.1:0", "--workers", "2", "--graceful-timeout", "10",
        env=environment(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), WSGATE_BROKER__UNSHARED_WORKERS="true"),  # metrics only
    )
    try:
        server.port = int((await server.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def sample(name: str) -> float:
                async with session.get(server.url("/metrics")) as resp:
                    text = await resp.text()
                return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

            async def local_clients() -> int:  # whichever worker answers reports only its own clients
                async with session.get(server.url("/health")) as resp:
                    return int((await resp.json())["clients"])

            clients: list[aiohttp.ClientWebSocketResponse] = []
            seen: set[int] = set()
            async with asyncio.timeout(30):
                # connect until both workers hold clients (two different local counts that add up)
                while not (len(clients) >= 10 and any(0 < a < len(clients) and len(clients) - a in seen for a in seen)):
                    ws = await session.ws_connect(server.url("/ws"))
                    assert (await ws.receive_json())["type"] == "connected"
                    clients.append(ws)
                    seen = {await local_clients() for _ in range(6)}
                total = len(clients)
                assert await sample("websocket_connections_opened_total") == total
                while await sample("websocket_clients_total") != total:  # each worker refreshes its gauge every second
                    await asyncio.sleep(0.2)
            server.proc.send_signal(signal.SIGTERM)
            for ws in clients:
                closing = await ws.receive(timeout=15)
                assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
                await ws.close()
        assert await server.finish(timeout=20) == 0
    finally:
        await server.kill()


async def test_several_workers_without_a_shared_broker_refuse_to_start(tmp_path: Path) -> None:
    """The first hour: `gunicorn -w 2` with the in-memory broker silently split rooms (5 of 8 subscribers got a
    publish). Now it stops with one line saying what to do, unless allowed explicitly."""
    process = await spawn(
        sys.executable, "-m", "gunicorn", "-c", "python:wsgate.gunicorn_conf", "wsgate.app:create_app",
        "--bind", "127.0.0.1:0", "--workers", "2", env=environment(WEBSOCKET_ENABLED="true"),
    )
    code = await process.finish(30)
    log = "".join(process.lines)
    assert code != 0 and "with the in-memory broker would split every room between them: set broker.url" in log, log
