"""What the fault model runs: a private Redis, a TCP link that can lag, stall and reset, gateway nodes as real
processes, and clients that record everything they are told.

Loopback only. Every wait is bounded (`WAIT`), every process and socket is stopped by `World.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from wsgate.config import env_name

HERE = Path(__file__).resolve().parent
EXAMPLE_PLUGINS = ["token_auth", "users", "echo"]  # (on the path of a test run, tests/test_faults.py: part of no fault)
WAIT = 20.0  # seconds any one wait may take before the scenario fails


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until `condition()` holds, checking every 20 ms (for state another process holds, with no event
    to wait on); AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_port(port: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port} after {timeout:g}s") from None
            await asyncio.sleep(0.02)  # the process is starting


class RedisServer:
    """A private redis-server on a free port, restartable on that port: without persistence a restart comes back
    empty; `persistent` (append-only, fsync always: what was acknowledged is on disk) it comes back with its data.
    The fault model, the chaos run and the tests' `private_redis` all start theirs here."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.dir = workdir
        self.persistent = persistent
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(("--appendonly", "yes", "--appendfsync", "always") if self.persistent else ("--appendonly", "no")),
            "--enable-debug-command",
            "local",  # DEBUG SLEEP: a stalled Redis
            "--dir",
            str(self.dir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_port(self.port)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            if self.persistent:
                self.proc.terminate()  # (with appendfsync always, what was acknowledged is on disk)
            else:
                self.proc.kill()
            await self.proc.wait()

    async def command(self, *args: Any) -> Any:
        """One command on a connection of its own (never one a node uses)."""
        client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=WAIT)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    async def stall(self, seconds: float) -> asyncio.Task[Any]:
        """`DEBUG SLEEP`: Redis answers nobody for `seconds` (as a fork or a slow command does). Returns once the
        stall has begun (a command on another connection gets no answer), with the task that ends with it."""
        sleeping = asyncio.create_task(self.command("DEBUG", "SLEEP", seconds))
        while not sleeping.done():
            try:
                async with asyncio.timeout(0.05):
                    await self.command("PING")
            except TimeoutError:
                return sleeping
        await sleeping  # (it failed: raise why)
        raise AssertionError(f"DEBUG SLEEP {seconds} ended before it was seen")


class TcpProxy:
    """The link between a node and Redis: forwards bytes, and can add latency, stall, or reset every connection."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.latency = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer.transport, up_writer.transport}  # type: ignore[arg-type]
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for side in (writer, up_writer):
            side.transport.abort()
            self._links.discard(side.transport)  # type: ignore[arg-type]
        self._tasks.difference_update(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            await self.flowing.wait()
            if self.latency:
                await asyncio.sleep(self.latency)  # the fault itself: a slow link
            writer.write(chunk)
            await writer.drain()

    def reset(self) -> None:
        """Every connection through the link is reset at once (a network blip)."""
        for transport in list(self._links):
            transport.abort()

    async def close(self) -> None:
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def node_environment(settings: dict[str, Any], home: Path = HERE) -> dict[str, str]:
    """Environment variables for `settings` ({"broker.url": ..., "history.rooms": [...]}), nothing inherited;
    `home` (the directory of the node's plugin modules) first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "WSGATE_"))}
    for key, value in settings.items():
        env[env_name(key)] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = os.pathsep.join([str(home), env.get("PYTHONPATH", "")])
    return env


class Node:
    """One `python -m wsgate` process on a fixed port (clients find it again after a restart); its log in a file.
    `home`: where it runs and finds its plugin modules (this directory's `fault_plugin` unless `settings` name
    others: the chaos run's)."""

    def __init__(self, name: str, workdir: Path, settings: dict[str, Any], *, home: Path = HERE) -> None:
        self.name = name
        self.home = home
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.settings = {
            "websocket.enabled": True,
            "plugins.modules": ["fault_plugin"],
            "plugins.disabled": EXAMPLE_PLUGINS,
            "logging.access_log": False,
            **settings,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wsgate",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                env=node_environment(self.settings, self.home),
                cwd=self.home,
                stdout=out,
                stderr=out,
            )
        await self.wait_log(r"listening on 127\.0\.0\.1")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM, and the exit code (the drain runs first)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    async def wait_log(self, pattern: str, timeout: float = WAIT, *, after: int = 0) -> None:
        """Wait until the log holds a line matching `pattern` (at or after character `after`)."""
        await until(
            lambda: re.search(pattern, self.text()[after:]) is not None, f"{self.name} to log {pattern!r}", timeout
        )

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(self.url(path)) as resp:
            return resp.status, await resp.json(content_type=None)

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def client_sockets(self) -> int:
        """TCP sockets the node holds on its own port (its clients' connections, whatever their state)."""
        assert self.proc is not None
        inodes = set()
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        held = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[9] in inodes and fields[3] != "0A":
                        held += 1  # (0A: the listening socket itself)
        return held

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class Member:
    """A WebSocket client that records every message it is sent, in order, and answers pings (aiohttp's default)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()
        self.id = ""

    async def connect(self, node: Node, **kwargs: Any) -> Member:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(node.ws_url, max_msg_size=0, **kwargs)
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        hello = await self.wait_for(lambda m: m["type"] == "connected")
        self.id = hello["data"]["client_id"]
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            while True:
                frame = await self._ws.receive()
                if frame.type is aiohttp.WSMsgType.TEXT:
                    async with self.changed:
                        self.messages.append(json.loads(frame.data))
                        self.changed.notify_all()
                elif frame.type is aiohttp.WSMsgType.CLOSE:
                    self.close_code, self.close_reason = frame.data, str(frame.extra or "")
                elif frame.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break
        finally:
            if self.close_code is None:
                self.close_code = self._ws.close_code
            self.closed.set()
            async with self.changed:
                self.changed.notify_all()

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT, start: int = 0
    ) -> dict[str, Any]:
        """The first message (from index `start`) that `match`es, waiting for it."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for message in self.messages[start:]:
                    if match(message):
                        return message
                if self.closed.is_set():
                    raise AssertionError(f"{self.name} was closed ({self.close_code}) before the message came")
                await self.changed.wait()

    async def request(
        self, message: dict[str, Any], answer: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        start = len(self.messages)
        await self.send(message)
        return await self.wait_for(answer, timeout, start)

    async def subscribe(self, room: str, **fields: Any) -> dict[str, Any]:
        return await self.request(
            {"type": "subscribe", "room": room, **fields},
            lambda m: m["type"] == "error" or (m.get("room") == room and m["type"] == "subscribed"),
        )

    async def ping(self, timeout: float = WAIT) -> None:
        await self.request({"type": "ping"}, lambda m: m["type"] == "pong", timeout)

    def of_room(self, room: str, kind: str = "message") -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("room") == room and m["type"] == kind]

    def cut(self) -> None:
        """Lose the socket as a network fault does: no close frame."""
        connection = getattr(self._ws, "_conn", None)
        if connection is not None and connection.transport is not None:
            connection.transport.abort()

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._session is not None:
            await self._session.close()


class World:
    """What one scenario runs: a Redis (optional), a link, nodes and members; `close()` stops all of it."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="wsgate-faults-")
        self.dir = Path(self._tmp.name)
        self.redis: RedisServer | None = None
        self.proxies: list[TcpProxy] = []
        self.nodes: list[Node] = []
        self.members: list[Member] = []

    async def start_redis(self) -> RedisServer:
        self.redis = RedisServer(self.dir)
        await self.redis.start()
        return self.redis

    async def link(self) -> TcpProxy:
        assert self.redis is not None
        proxy = TcpProxy(self.redis.port)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def node(
        self, name: str, settings: dict[str, Any] | None = None, *, via: TcpProxy | None = None, redis: bool = True
    ) -> Node:
        """A node; on the world's Redis (through `via` when given) unless `redis` is False."""
        settings = dict(settings or {})
        if redis and self.redis is not None:
            settings.setdefault("broker.url", via.url if via is not None else self.redis.url)
            settings.setdefault("broker.prefix", "faults")
        node = Node(name, self.dir, settings)
        self.nodes.append(node)
        await node.start()
        return node

    async def member(self, node: Node, name: str = "", **kwargs: Any) -> Member:
        member = Member(name or f"m{len(self.members)}")
        self.members.append(member)
        return await member.connect(node, **kwargs)

    async def close(self) -> None:
        for member in self.members:
            await member.close()
        for node in self.nodes:
            await node.kill()
        for proxy in self.proxies:
            await proxy.close()
        if self.redis is not None:
            await self.redis.stop()
        self._tmp.cleanup()

    def logs(self) -> str:
        return "".join(f"--- {node.name}\n{node.text()[-4000:]}" for node in self.nodes)
