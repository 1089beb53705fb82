"""Shared fixtures: hermetic settings, a default gateway, a client that never reads.

Gateways and clients come from wsgate's own pytest plugin, `wsgate.testing`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import settings as hypothesis_settings

from faults.harness import RedisServer
from wsgate.connection import Connection
from wsgate.testing import TIMEOUT, Peer, Server, StartServer

# Property tests run on shared CI machines: no per-example deadline (their cost is the example count).
hypothesis_settings.register_profile("wsgate", deadline=None)
hypothesis_settings.load_profile("wsgate")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The event loops a test runs on: asyncio's; also uvloop's (`runtime.uvloop`) for a test marked `every_loop`,
    code whose transports and callbacks uvloop gives otherwise (its transports are no asyncio.Transport)."""
    if item.get_closest_marker("every_loop") is not None:
        return LOOPS
    return {"asyncio": LOOPS["asyncio"]}


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WEBSOCKET_* / WSGATE_* variable or ./settings.toml from the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith(("WEBSOCKET_", "WSGATE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """A test whose app configures logging (`create_app()` without settings, as gunicorn calls it) leaves the root
    logger's level and the handlers' filters as they were: else every later test logs at INFO into pytest's
    capture, which holds it all in memory (the fuzz test's heap bound saw 3 MB of it)."""
    root = logging.getLogger()
    level, filters = root.level, {handler: list(handler.filters) for handler in root.handlers}
    yield
    root.setLevel(level)
    for handler, kept in filters.items():
        handler.filters[:] = kept


@pytest.fixture
async def server(wsgate_server: StartServer) -> Server:
    """A gateway with default settings."""
    return await wsgate_server()


class StalledClient:
    """A client that completes the handshake, subscribes, reads its answer and then never reads again."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)

    async def join(self, port: int, room: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, handshake.encode())
        await self.send(0x1, f'{{"type":"subscribe","room":"{room}"}}'.encode())
        seen = b""
        async with asyncio.timeout(TIMEOUT):
            while b'"subscribed"' not in seen:
                chunk = await loop.sock_recv(self.sock, 4096)
                assert chunk, "server closed the connection"
                seen += chunk

    async def send(self, opcode: int, payload: bytes) -> None:
        """Send one frame (text 0x1, ping 0x9, ...), masked as clients must."""
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(
            self.sock, bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked
        )

    def close(self) -> None:
        self.sock.close()

    async def stuck_in_flood(self, server: Server) -> tuple[Peer, Connection]:
        """Join `flood` on `server` and let a publisher flood it until this client's socket is full.

        Needs a large `send_queue_size`, `send_queue_bytes` and `write_wait`. Returns the publisher and the server's
        connection object for this client, whose outbox then holds frames it cannot write.
        """
        publisher = await server.connect()
        await publisher.subscribe("flood")
        await self.join(server.test_server.port, "flood")  # type: ignore[arg-type]
        conn = next(c for c in server.hub.rooms["flood"] if c.id != publisher.id)
        for n in range(2_000):  # far more than the socket buffers between us hold
            await publisher.send({"type": "publish", "room": "flood", "data": [n, "x" * 8192]})
            await publisher.recv()
        assert conn._outbox, "the stalled client's socket should be full"
        return publisher, conn


# Read before the hermetic fixture removes WSGATE_* variables.
REDIS_URL = os.environ.get("WSGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture
async def redis_url() -> str:
    """The test Redis (WSGATE_TEST_REDIS_URL); a test that needs it fails, never skips, without it."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        pytest.fail(
            f"these tests need Redis at {REDIS_URL} (WSGATE_TEST_REDIS_URL): {exc}; "
            'start one with: redis-server --daemonize yes --port 6379 --save "" --appendonly no'
        )
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def broker_prefix() -> AsyncIterator[str]:
    """A channel and key prefix of this test's own, so runs sharing one Redis never see each other; the keys
    the test left (history, presence, figures, settings) are deleted afterwards."""
    prefix = f"wsgate-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    except (OSError, aioredis.RedisError):
        pass  # the test's own Redis (private_redis) is gone already, or there is none: nothing left behind
    finally:
        await client.aclose()


PrivateRedis = RedisServer
"""A redis-server of the test's own on a free port, which the test may stop and restart (the fault model's)."""


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    await server.stop()
