"""`wsgate.app:create_app` under gunicorn's aiohttp worker, as a real process."""

from __future__ import annotations

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
        "--worker-class", "aiohttp.GunicornWebWorker", "--bind", "127.0.0.1:0", "--workers", "1",
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
