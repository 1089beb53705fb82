"""Shared fixtures: real gateways on free ports, real WebSocket clients, hermetic settings."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wsgate.app import create_app
from wsgate.config import Settings, load_settings
from wsgate.gateway import Gateway
from wsgate.keys import GATEWAY

TIMEOUT = 5.0  # upper bound on waiting for an event that must happen


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WEBSOCKET_* / WSGATE_* variable or ./settings.toml from the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith(("WEBSOCKET_", "WSGATE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def make_settings(**tables: dict[str, Any]) -> Settings:
    """Settings from defaults plus `tables` (e.g. websocket={"port": 0}); /ws always enabled."""
    websocket = {"enabled": True, **tables.pop("websocket", {})}
    return load_settings(overrides={"websocket": websocket, **tables})


class Client:
    """A real WebSocket client that reads JSON messages with a bounded wait."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = ""

    async def send(self, obj: Any) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg}"
        result: dict[str, Any] = json.loads(msg.data)
        return result

    async def request(self, obj: Any) -> dict[str, Any]:
        """Send one message and return the next message received."""
        await self.send(obj)
        return await self.recv()

    async def subscribe(self, room: str) -> dict[str, Any]:
        reply = await self.request({"type": "subscribe", "room": room})
        assert reply["type"] == "subscribed", reply
        return reply

    async def closed(self) -> aiohttp.WSMessage:
        """Wait for the server's close frame; returns it (its .data is the close code)."""
        while True:
            msg = await self.ws.receive(timeout=TIMEOUT)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return msg


class Server:
    """A gateway running on a free port, with helpers to connect clients to it."""

    def __init__(self, test_server: TestServer, session: aiohttp.ClientSession) -> None:
        self.test_server = test_server
        self.session = session
        self.app: web.Application = test_server.app  # type: ignore[assignment]

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    def url(self, path: str) -> str:
        return str(self.test_server.make_url(path))

    async def raw(self, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.url("/ws"), **kwargs)

    async def connect(self, **kwargs: Any) -> Client:
        client = Client(await self.raw(**kwargs))
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        client.id = hello["data"]["client_id"]
        return client

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(self.url("/health")) as resp:
            return resp.status, await resp.json()


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(aiohttp_server: Any) -> AsyncIterator[StartServer]:
    """`server = await start(websocket={...})` runs a gateway with those settings on a free port."""
    sessions: list[aiohttp.ClientSession] = []

    async def _start(**tables: dict[str, Any]) -> Server:
        app = await create_app(make_settings(**tables))
        test_server = await aiohttp_server(app)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Server(test_server, session)

    yield _start
    for session in sessions:
        await session.close()


@pytest.fixture
async def server(start: StartServer) -> Server:
    """A gateway with default settings."""
    return await start()


async def wait_until(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), TIMEOUT)


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
        payload = f'{{"type":"subscribe","room":"{room}"}}'.encode()
        mask = os.urandom(4)  # clients must mask their frames
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await loop.sock_sendall(self.sock, handshake.encode() + frame)
        seen = b""
        async with asyncio.timeout(5):
            while b'"subscribed"' not in seen:
                chunk = await loop.sock_recv(self.sock, 4096)
                assert chunk, "server closed the connection"
                seen += chunk

    def close(self) -> None:
        self.sock.close()
