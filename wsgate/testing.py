"""A pytest plugin for testing wsgate plugins against a real gateway.

pytest loads it by itself wherever wsgate is installed (a `pytest11` entry
point; do not also list it in `pytest_plugins`). It needs pytest-aiohttp,
which `wsgate[test]` installs. Then::

    async def test_echo(wsgate_server):
        server = await wsgate_server(my_plugin, websocket={"max_message_size": 4096})
        client = await server.connect()
        reply = await client.request({"type": "echo", "data": 1})
        assert reply["data"] == 1

Every gateway listens on a free port of 127.0.0.1 and is spoken to over real
WebSocket connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .admission import GatewayRunner
from .aiohttp_private import production_test_server
from .app import create_app
from .broker import Broker
from .config import Settings, load_settings
from .gateway import Gateway
from .hub import Hub
from .keys import BROKER, DISPATCHER, GATEWAY, HUB, METRICS, PLUGINS, SETTINGS
from .metrics import Metrics
from .plugins import Plugins
from .registry import HandlerRegistry

TIMEOUT = 5.0
"""Upper bound, in seconds, on waiting for something that must happen."""


def make_settings(**tables: Any) -> Settings:
    """Defaults plus `tables` (e.g. `websocket={"ping_interval": "1s"}`), with `/ws` enabled.

    `./settings.toml` and the environment apply as usual.
    """
    websocket = {"enabled": True, **tables.pop("websocket", {})}
    return load_settings(overrides={"websocket": websocket, **tables})


class Peer:
    """A WebSocket peer connected to the test server (RFC 6455's word for the other endpoint).

    It sends JSON values and reads JSON messages, each read bounded by `TIMEOUT`; `id` is the
    `client_id` the gateway gave it ("" until `Server.connect` has read the `connected` message).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = ""

    async def send(self, obj: Any) -> None:
        """Send a JSON value (a str is sent as it is, to test malformed input)."""
        await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self) -> dict[str, Any]:
        """The next message; fails on anything but a text frame or after TIMEOUT."""
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
        """Wait for the server's close frame and return it (`.data` is the close code)."""
        while True:
            msg = await self.ws.receive(timeout=TIMEOUT)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return msg


class Server:
    """A gateway running on a free port, with helpers to connect clients to it."""

    def __init__(self, test_server: TestServer, session: aiohttp.ClientSession) -> None:
        self.test_server = test_server
        self.session = session
        assert isinstance(test_server.app, web.Application)
        self.app = test_server.app

    @property
    def gateway(self) -> Gateway:
        """The façade plugins and application code use."""
        return self.app[GATEWAY]

    @property
    def hub(self) -> Hub:
        """This node's connections and rooms (for assertions on server state)."""
        return self.app[HUB]

    @property
    def metrics(self) -> Metrics:
        return self.app[METRICS]

    @property
    def broker(self) -> Broker:
        return self.app[BROKER]

    @property
    def plugins(self) -> Plugins:
        return self.app[PLUGINS]

    @property
    def registry(self) -> HandlerRegistry:
        """Message type -> handler, and which plugin owns each type."""
        return self.app[DISPATCHER].registry

    async def drain(self, timeout: float) -> None:
        """Shut the gateway's clients down as SIGTERM does (`shutdown.mode`), waiting at most `timeout`."""
        await self.hub.drain(self.app[SETTINGS].shutdown, timeout)

    def url(self, path: str) -> str:
        return str(self.test_server.make_url(path))

    async def raw(self, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        """A bare aiohttp WebSocket to `/ws` (its `connected` message not yet read)."""
        ws: aiohttp.ClientWebSocketResponse = await self.session.ws_connect(self.url("/ws"), **kwargs)
        return ws

    async def connect(self, **kwargs: Any) -> Peer:
        """A peer whose `connected` message has been read (`peer.id` is set)."""
        client = Peer(await self.raw(**kwargs))
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        client.id = hello["data"]["client_id"]
        return client

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of `/health`."""
        async with self.session.get(self.url("/health")) as resp:
            return resp.status, await resp.json()

    async def counts(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, the spec's part of `/health`: status, clients, rooms)."""
        status, body = await self.health()
        return status, {key: body[key] for key in ("status", "clients", "rooms")}


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def wsgate_server() -> AsyncIterator[StartServer]:
    """`await wsgate_server(*plugins, **tables)`: a running gateway with extra plugins and settings."""
    servers: list[Server] = []

    async def start(*plugins: object, **tables: Any) -> Server:
        app = await create_app(make_settings(**tables), plugins=plugins)
        test_server = production_test_server(app, GatewayRunner, host="127.0.0.1")
        await test_server.start_server()
        server = Server(test_server, aiohttp.ClientSession())
        servers.append(server)
        return server

    yield start
    while servers:  # the newest first, as pytest-aiohttp does
        server = servers.pop()
        await server.session.close()
        await server.test_server.close()


async def wait_until(event: asyncio.Event) -> None:
    """Wait for `event`, failing after TIMEOUT."""
    await asyncio.wait_for(event.wait(), TIMEOUT)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Wait until `condition()` holds (it may be async: a read of Redis, an HTTP probe), checking every 10 ms;
    for state with no event to wait on, such as another process's or Redis's."""
    async with asyncio.timeout(timeout):
        while True:
            holds = condition()
            if not isinstance(holds, bool):
                holds = await holds
            if holds:
                return
            await asyncio.sleep(0.01)
