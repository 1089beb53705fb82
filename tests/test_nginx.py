"""The nginx example of the deployment page (`deploy/nginx/wsgate.conf`) in front of two real wsgate nodes on Redis.

A real nginx (Debian's package; `.ci/run` and `make test` install it when missing) runs in the foreground with the
file itself, only its addresses and ports substituted, included in a minimal main config whose paths are under
tmp_path. The nodes are `python -m wsgate` processes sharing the test Redis under a prefix of the test's own. Without
nginx these tests are skipped with a loud reason, except under CI=true, where they fail the run.

Each node loads a probe plugin (written to tmp_path) that tells each client which node it reached and which
forwarding headers that node received: wsgate itself records nginx's address as the client's (it has no setting
to trust a proxy's header), so the headers are checked where they arrive.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wsgate.config.schema import WebSocketSettings
from wsgate.testing import TIMEOUT, eventually

from .processes import ROOT, Process, environment, require_tool, start_wsgate

pytestmark = pytest.mark.slow  # real nginx and two node processes per test

CONF = ROOT / "deploy" / "nginx" / "wsgate.conf"
PAGE = ROOT / "docs" / "deployment.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LISTEN = "listen 80;"
UPSTREAMS = ("server 10.0.0.11:8081;", "server 10.0.0.12:8081;")
READ_TIMEOUT = re.compile(r"^\s*proxy_read_timeout (\d+)s;", re.MULTILINE)

PROBE_PLUGIN = '''
"""Tells each client the node it reached and the forwarding headers that node received (tests/test_nginx.py)."""
import collections
import os

from wsgate import hookimpl

_seen = collections.deque()


@hookimpl
def wsgate_authenticate(request):
    _seen.append({h: request.headers.get(h) for h in ("X-Real-IP", "X-Forwarded-For", "Host")})
    return None


@hookimpl
async def wsgate_client_connected(client):
    headers = _seen.popleft()
    await client.send({"type": "probe", "data": {"node": os.environ["PROBE_NODE"], "headers": headers}})
'''


def nginx_binary() -> str:
    require_tool(os.path.exists(NGINX), "NGINX TESTS", "Debian's nginx is not installed (apt-get install nginx)")
    return NGINX


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def substitute(text: str, old: str, new: str) -> str:
    """`text` with its single `old` replaced: a file whose shape changed fails here, not in an obscure way."""
    assert text.count(old) == 1, f"{CONF.name} should contain {old!r} once"
    return text.replace(old, new)


def site_config(listen_port: int, node_ports: tuple[int, int], read_timeout: int | None = None) -> str:
    """The example file with the test's addresses and ports (and, when given, a shorter `proxy_read_timeout`)."""
    text = substitute(CONF.read_text(), LISTEN, f"listen 127.0.0.1:{listen_port};")
    for line, port in zip(UPSTREAMS, node_ports, strict=True):
        text = substitute(text, line, f"server 127.0.0.1:{port};")
    if read_timeout is not None:
        assert len(READ_TIMEOUT.findall(text)) == 1
        text = READ_TIMEOUT.sub(f"proxy_read_timeout {read_timeout}s;", text)
    return text


class Nginx:
    """A foreground nginx with its prefix, temp dirs, pid and logs under `directory`."""

    def __init__(self, directory: Path, port: int, site: str) -> None:
        self.directory = directory
        self.port = port
        self.nodes: dict[str, Process] = {}  # by the name the probe plugin reports
        directory.mkdir()
        (directory / "wsgate.conf").write_text(site)
        temp = "".join(f"    {kind}_temp_path {directory}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi"))
        temp += "".join(f"    {kind}_temp_path {directory}/{kind};\n" for kind in ("uwsgi", "scgi"))
        user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n{temp}    log_format upstreams '$request_uri $upstream_status';\n"
            f"    access_log {directory}/access.log upstreams;\n    include {directory}/wsgate.conf;\n}}\n"
        )
        self.log = directory / "nginx.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        directives = f"daemon off; pid {self.directory}/nginx.pid; error_log {self.log} info;"
        args = [nginx_binary(), "-e", str(self.log), "-p", f"{self.directory}/", "-c", "nginx.conf", "-g", directives]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        await eventually(self._listening)

    async def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown
            self.proc.wait(timeout=TIMEOUT)


Cluster = Callable[..., Awaitable[Nginx]]


@pytest.fixture
async def cluster(redis_url: str, broker_prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """`await cluster(ping_intervals=("54s", "54s"), read_timeout=None)`: nodes "one" and "two" on the test Redis,
    each with its `websocket.ping_interval`, behind an nginx running the example file."""
    (tmp_path / "nginx_probe.py").write_text(PROBE_PLUGIN)
    nodes: list[Process] = []
    proxies: list[Nginx] = []

    async def start(ping_intervals: tuple[str, str] = ("54s", "54s"), read_timeout: int | None = None) -> Nginx:
        for name, ping in zip(("one", "two"), ping_intervals, strict=True):
            env = environment(
                WSGATE_BROKER__URL=redis_url,
                WSGATE_BROKER__PREFIX=broker_prefix,
                WSGATE_WEBSOCKET__PING_INTERVAL=f'"{ping}"',
                WSGATE_PLUGINS__MODULES='["nginx_probe"]',
                PYTHONPATH=str(tmp_path),
                PROBE_NODE=name,
            )
            nodes.append(await start_wsgate(env=env))
        port = free_port()
        proxy = Nginx(tmp_path / "nginx", port, site_config(port, (nodes[0].port, nodes[1].port), read_timeout))
        proxy.nodes = {"one": nodes[-2], "two": nodes[-1]}
        proxies.append(proxy)
        await proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()
        for node in nodes:
            await node.kill()


async def connect(session: aiohttp.ClientSession, proxy: Nginx, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """A WebSocket through nginx; returns it and its probe (the node it reached, the headers that node got)."""
    ws = await session.ws_connect(proxy.url("/ws", "ws"), **kwargs)
    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "connected"
    probe = await ws.receive_json(timeout=TIMEOUT)
    assert probe["type"] == "probe", probe
    return ws, probe["data"]


async def test_websockets_through_nginx_reach_both_nodes_and_rooms_span_them(cluster: Cluster) -> None:
    """The upgrade passes nginx; `least_conn` puts two clients on different nodes; a message published on one
    node reaches the client on the other; nginx passes the client's address on, and the Host header as sent (a
    page's Origin names the port, and is compared with it); /health answers through nginx
    and /metrics is refused to addresses outside the allowed network."""
    proxy = await cluster()
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as first_session,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))) as second_session,
    ):
        origin = {"Origin": f"http://127.0.0.1:{proxy.port}"}  # a page served through nginx: same origin
        first, first_probe = await connect(first_session, proxy, headers=origin)
        second, second_probe = await connect(second_session, proxy)
        assert {first_probe["node"], second_probe["node"]} == {"one", "two"}
        for probe, address in ((first_probe, "127.0.0.2"), (second_probe, "127.0.0.3")):
            assert probe["headers"] == {
                "X-Real-IP": address,
                "X-Forwarded-For": address,
                "Host": f"127.0.0.1:{proxy.port}",
            }
        for ws in (first, second):
            await ws.send_json({"type": "subscribe", "room": "lobby"})
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "subscribed"
        await first.send_json({"type": "publish", "room": "lobby", "data": {"text": "across nodes"}})
        for ws in (second, first):
            message = await ws.receive_json(timeout=TIMEOUT)
            assert (message["type"], message["room"], message["data"]) == ("message", "lobby", {"text": "across nodes"})
        await first.close()
        await second.close()

        async with first_session.get(proxy.url("/health")) as answer:
            assert answer.status == 200
            health = await answer.json()
        assert (health["status"], health["broker"]) == ("healthy", "ok")
        async with first_session.get(proxy.url("/metrics")) as answer:
            assert answer.status == 403  # allow 10.0.0.0/8; deny all


async def test_pings_keep_an_idle_websocket_open_through_nginx(cluster: Cluster) -> None:
    """With nginx's `proxy_read_timeout` at 3 s, a client that sends nothing for over 5 s stays connected to the
    node pinging every second, and is cut off by nginx on the node pinging every 54 s: the read timeout must
    exceed `websocket.ping_interval`."""
    proxy = await cluster(ping_intervals=("1s", "54s"), read_timeout=3)
    async with aiohttp.ClientSession() as session:
        clients = [await connect(session, proxy, autoping=False) for _ in range(2)]
        pinged = next(ws for ws, probe in clients if probe["node"] == "one")
        quiet = next(ws for ws, probe in clients if probe["node"] == "two")
        loop = asyncio.get_running_loop()
        started = loop.time()
        pings = 0
        while pings < 6:  # never answered: the client sends nothing at all
            message = await pinged.receive(timeout=TIMEOUT)
            assert message.type == aiohttp.WSMsgType.PING, message
            pings += 1
        # six pings a second apart: the client has been silent for about 5 s, past nginx's 3 s (the first ping can
        # come at once on the shared schedule, and the loop's clock counts whole milliseconds: 4.9, not 5)
        assert loop.time() - started > 4.9
        ended = await quiet.receive(timeout=TIMEOUT)  # nginx closed it after 3 s of silence
        assert ended.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR), ended
        await pinged.send_json({"type": "subscribe", "room": "still-here"})
        while (message := await pinged.receive(timeout=TIMEOUT)).type == aiohttp.WSMsgType.PING:
            pass
        assert message.json()["type"] == "subscribed"
        await pinged.close()


async def test_nginx_sends_new_clients_past_a_node_that_stopped(cluster: Cluster) -> None:
    """After SIGTERM a node drains and exits; nginx, whose `least_conn` would pick it, tries the other
    (`proxy_next_upstream error ...`), so a new client connects. nginx's access log shows both attempts."""
    proxy = await cluster()
    one = proxy.nodes["one"]
    async with aiohttp.ClientSession() as session:
        placed = {}
        for _ in range(2):  # least_conn: one on each node
            ws, probe = await connect(session, proxy)
            placed[probe["node"]] = ws
        await placed["one"].close()  # nginx now holds nothing on node one, and prefers it
        one.proc.terminate()
        assert await one.finish(TIMEOUT) == 0
        newcomer, probe = await connect(session, proxy)
        assert probe["node"] == "two"
        await newcomer.close()
        await placed["two"].close()
    log = proxy.directory / "access.log"
    await eventually(lambda: "/ws 502, 101" in log.read_text())  # written when the WebSocket ends


def test_the_read_timeout_exceeds_the_default_ping_interval() -> None:
    timeouts = [int(value) for value in READ_TIMEOUT.findall(CONF.read_text())]
    assert timeouts, "the example should set proxy_read_timeout"
    assert min(timeouts) > WebSocketSettings().ping_interval


def test_the_example_has_the_upgrade_headers_and_two_nodes() -> None:
    text = CONF.read_text()
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*\"\"\s+close;\s*\}", text)
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ):
        assert directive in text
    for line in UPSTREAMS:
        assert line in text


def test_the_page_shows_the_example_file() -> None:
    """The deployment page includes the file itself (one source), marked as tested here."""
    page = PAGE.read_text()
    assert "<!-- tested by tests/test_nginx.py -->\n```{literalinclude} ../deploy/nginx/wsgate.conf\n" in page
