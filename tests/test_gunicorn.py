"""`wsgate.app:create_app` under gunicorn's aiohttp worker, as a real process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from .processes import Process, environment, publish_then_sigterm, spawn

pytestmark = pytest.mark.slow  # gunicorn processes started and stopped


async def one_worker(settings: Path, *options: str) -> Process:
    """gunicorn with one wsgate worker on a free port (`server.port` set once it listens), settings from `settings`."""
    server = await spawn(
        sys.executable,
        "-m",
        "gunicorn",
        "wsgate.app:create_app",
        "--worker-class",
        "wsgate.worker.GatewayWorker",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        *options,
        env=environment(WSGATE_SETTINGS=str(settings)),
    )
    try:
        server.port = int((await server.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
    except BaseException:
        await server.kill()
        raise
    return server


async def test_gunicorn_serves_the_protocol_and_shuts_down_gracefully(tmp_path: Path) -> None:
    settings = tmp_path / "gunicorn.toml"
    settings.write_text("[websocket]\nenabled = true\n[websocket.limits]\nmax_connections = 10\n")
    server = await one_worker(settings, "--graceful-timeout", "10")
    try:
        await server.wait_for_line(r"Booting worker")
        async with aiohttp.ClientSession() as session:
            # the worker may still be importing the app: the first request waits for it
            async with session.get(server.url("/health")) as resp:
                assert {k: v for k, v in (await resp.json()).items() if k in ("status", "clients", "rooms")} == {
                    "status": "healthy",
                    "clients": 0,
                    "rooms": 0,
                }
            async with session.ws_connect(server.url("/ws")) as a, session.ws_connect(server.url("/ws")) as b:
                for ws in (a, b):
                    assert (await ws.receive_json())["type"] == "connected"
                    await ws.send_json({"type": "subscribe", "room": "g"})
                    assert (await ws.receive_json())["data"]["room"] == "g"
                await publish_then_sigterm(server, (a, b), "g", timeout=15)
    finally:
        await server.kill()


async def test_a_worker_serves_upgrades_at_the_front_door_and_counts_them_for_max_requests(tmp_path: Path) -> None:
    """Without an authentication plugin or access log, gunicorn's worker answers the plain upgrade at the front
    door (`wsgate.frontdoor`); each counts as a request for `--max-requests`, as aiohttp's requests do."""
    settings = tmp_path / "gunicorn.toml"
    settings.write_text('[websocket]\nenabled = true\n[plugins]\ndisabled = ["token_auth", "users", "echo"]\n')
    server = await one_worker(settings, "--max-requests", "2")
    try:
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(server.url("/ws")) for _ in range(3)]
            for ws in sockets:
                assert (await ws.receive_json())["type"] == "connected"
            await server.wait_for_line(r"Max requests, shutting down")  # 3 upgrades, none of them aiohttp's request
            for ws in sockets:
                await ws.close()
        assert "Traceback" not in "".join(server.lines)
    finally:
        await server.kill()


async def test_runtime_uvloop_under_gunicorn_is_said_to_do_nothing(tmp_path: Path) -> None:
    """The worker's event loop is made before the settings are read: asyncio's, said at start-up, not silently."""
    settings = tmp_path / "gunicorn.toml"
    settings.write_text("[websocket]\nenabled = true\n[runtime]\nuvloop = true\n")
    server = await one_worker(settings)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url("/ws")) as ws:
                assert (await ws.receive_json())["type"] == "connected"
        await server.wait_for_line(r"runtime\.uvloop has no effect under gunicorn")
    finally:
        await server.kill()


async def test_two_workers_scrape_shows_the_sum_and_sigterm_closes_everyone(tmp_path: Path) -> None:
    """gunicorn -w 2 with the config module and PROMETHEUS_MULTIPROC_DIR: /metrics sums both workers."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics_dir = tmp_path / "prometheus"
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
        "2",
        "--graceful-timeout",
        "10",
        env=environment(
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), WSGATE_BROKER__UNSHARED_WORKERS="true"
        ),  # metrics only
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
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:wsgate.gunicorn_conf",
        "wsgate.app:create_app",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
        env=environment(WEBSOCKET_ENABLED="true"),
    )
    code = await process.finish(30)
    log = "".join(process.lines)
    assert code != 0 and "with the in-memory broker would split every room between them: set broker.url" in log, log


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"


@pytest.mark.parametrize(
    "how",
    [("-c", "python:wsgate.gunicorn_conf"), ("--worker-class", "wsgate.worker.GatewayWorker")],
    ids=["conf", "worker"],
)
async def test_the_gunicorn_access_log_masks_tokens_like_python_m_wsgate(tmp_path: Path, how: tuple[str, str]) -> None:
    """Issue 20: under gunicorn the access log wrote `?token=<jwt>` in full, while `python -m wsgate` masked it.
    Its siblings: other secret-named parameters, a URL's user information in a header the format logs."""
    server = await spawn(
        sys.executable,
        "-m",
        "gunicorn",
        *how,
        "wsgate.app:create_app",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--access-logfile",
        "-",
        "--access-logformat",
        '%a "%r" %s "%{Referer}i" "%{Authorization}i"',
        env=environment(WEBSOCKET_ENABLED="true"),
        stdout=True,
    )
    try:
        server.port = int((await server.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
        query = f"?token={TOKEN}&access_token=Hunter11-token&api_key=Hunter12&room=r"
        headers = {"Referer": "https://u:p@ss-Hunter13@app.example/", "Authorization": "Bearer Hunter14-0123456789"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url("/health" + query), headers=headers) as resp,
        ):
            assert resp.status == 200
        assert server.proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await server.proc.stdout.readline()).decode()  # the access log goes to stdout
        assert "GET /health?token=***&access_token=***&api_key=***&room=r HTTP/1.1" in line, line
        assert '"https://u:***@app.example/" "Bearer ***"' in line, line
        for secret in ("eyJ", "Hunter"):
            assert secret not in line, line
    finally:
        await server.kill()


def test_gunicorns_own_logs_are_masked_before_any_settings_are_read() -> None:
    """`wsgate.gunicorn_conf`'s logger class: the arbiter's and a booting worker's lines (a traceback of a bad
    setting) follow the same rule, before a worker has read the settings."""
    import logging

    from gunicorn.config import Config

    from wsgate.gunicorn_conf import RedactingLogger

    logger = RedactingLogger(Config())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.error_log.addHandler(handler)
    try:
        logger.error("bad setting broker.url = %r", "redis://user:p@ss-Hunter15@h/0")
        logger.access_log.addHandler(handler)
        logger.access_log.info("GET /ws?token=%s", TOKEN)
    finally:
        logger.error_log.removeHandler(handler)
        logger.access_log.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["bad setting broker.url = 'redis://user:***@h/0'", "GET /ws?token=***"]
