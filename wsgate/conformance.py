"""An echo server for the RFC 6455 conformance suite (Autobahn|Testsuite), through wsgate's own wire path.

    python -m wsgate.conformance [--port 9001] [--compression]

It serves `/echo` and nothing else a client could reach in a normal run: every text
or binary message is sent back through the same path as live traffic (a frame built
by `wsgate.wire`, the client's bounded outbox, the Flusher's one write per turn, the
writer task when the socket is full or deflate is on), frames are read by the connection
the socket is handed to after the upgrade, and pings and closes are answered by wsgate's
own control frames. The suite's 9.* cases send messages of up to 16 MB, so
the message limit and outbox here are larger than a gateway's defaults. `make
conformance` runs it (docs/faults.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from functools import partial

from aiohttp import web

from .admission import GatewayRunner
from .aiohttp_private import DetachedResponse, take_over
from .app import create_app
from .clients import GatewayConnection
from .config import load_settings
from .hub import Hub
from .keys import FLUSHER, GATEWAY, HUB, METRICS, SCHEDULE, SETTINGS
from .views import client_left, upgrade
from .wire import BINARY_OPCODE, TEXT_OPCODE, data_frame

MAX_MESSAGE = 32 * 1024 * 1024  # above the suite's largest (16 MB)


async def echo_view(request: web.Request) -> web.StreamResponse:
    """Echo every data message through the client's outbox; pings, pongs and closes as the gateway answers
    them: the socket is handed to its connection after the upgrade, as `/ws` does (`aiohttp_private.take_over`)."""
    app = request.app
    settings = app[SETTINGS].websocket
    ws = DetachedResponse(
        max_msg_size=settings.max_message_size,
        compress=settings.compression,
        autoping=False,
        autoclose=False,
        timeout=settings.write_wait,
    )
    stream = await upgrade(ws, request)
    if stream is None:
        return client_left()
    hub = app[HUB]
    conn = GatewayConnection(
        request.transport,
        remote=request.remote,
        settings=settings,
        flusher=app[FLUSHER],
        schedule=app[SCHEDULE],
        metrics=app[METRICS],
        on_drop=hub.remove,
        gateway=app[GATEWAY],
        compressed=bool(ws.compress),
    )
    hub.admit(conn)
    upgraded = take_over(request, ws, conn)
    conn.write_head(upgraded.head)
    conn.start()
    conn.attach(upgraded, _echo_text, _echo_binary, partial(_gone, hub))
    return ws


async def _echo_text(conn: GatewayConnection, text: str) -> None:
    conn.put(data_frame(text.encode(), TEXT_OPCODE))


def _echo_binary(conn: GatewayConnection, data: bytes) -> None:
    conn.put(data_frame(data, BINARY_OPCODE))


async def _gone(hub: Hub, conn: GatewayConnection) -> None:
    hub.remove(conn)


async def serve(port: int, compression: bool) -> None:
    settings = load_settings(
        overrides={
            "websocket": {
                "enabled": True,
                "max_message_size": MAX_MESSAGE,
                "send_queue_size": 100_000,
                "send_queue_bytes": 8 * MAX_MESSAGE,
                "compression": compression,
                "write_wait": "30s",
                "ping_interval": "1h",
                "pong_wait": "2h",
            },
            "metrics": {"enabled": False},
        }
    )
    app = await create_app(settings)
    app.router.add_get("/echo", echo_view)
    runner = GatewayRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(
        f"conformance echo server on ws://127.0.0.1:{port}/echo (compression {'on' if compression else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--compression", action="store_true", help="negotiate permessage-deflate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port, args.compression))


if __name__ == "__main__":
    main()
