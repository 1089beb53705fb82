"""The front door (`wsgate.frontdoor`): the plain WebSocket upgrade answered without aiohttp's request handling,
byte for byte as aiohttp answers it; everything else handed to aiohttp, with the bytes read, and answered by the
view as before. The plain form itself is pure code (`wsgate.handshake`), tested first without sockets.

Whether aiohttp answered is seen in its server's `requests_count` (the front door never makes a request).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser

from wsgate import Client, hookimpl
from wsgate.admission import GatewayRunner
from wsgate.app import create_app
from wsgate.frontdoor import FrontDoors
from wsgate.handshake import MAX_HEAD, accept_key, read_opening
from wsgate.testing import Server, StartServer, eventually, make_settings, wait_until
from wsgate.views import SESSIONS

from .test_lean_connections import _frame, _read_frame

pytestmark = pytest.mark.every_loop  # (tests/conftest.py: asyncio's loop and uvloop's, as `runtime.uvloop` picks)

NO_PLUGINS = {"disabled": ["token_auth", "users", "echo"]}  # the example plugins `make test` installs
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example


def head(*lines: str, target: str = "/ws", start: str = "") -> bytes:
    """An opening handshake with `lines` after its usual headers (or `start` as its whole first line)."""
    usual = ["Host: gw.example", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}"]
    first = start or f"GET {target} HTTP/1.1"
    return "\r\n".join([first, *usual, "Sec-WebSocket-Version: 13", *lines, "", ""]).encode()


# --- the plain form (pure) ---------------------------------------------------------------------------------


def test_what_browsers_send_is_plain() -> None:
    chrome = head(
        "Origin: https://app.example",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        "User-Agent: Mozilla/5.0",
        "Cache-Control: no-cache",
        target="/ws?protocol=2",
    )
    opening = read_opening(chrome + b"\x81\x85", "/ws")  # (followed by the client's first frame)
    assert opening is not None
    assert opening[:6] == (len(chrome), "2", "gw.example", "https://app.example", KEY, "/ws?protocol=2")
    assert opening.headers["user-agent"] == "Mozilla/5.0" and len(opening.headers) == 9
    firefox = head(target="/ws").replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade")
    assert read_opening(firefox, "/ws")[:6] == (len(firefox), None, "gw.example", None, KEY, "/ws")  # type: ignore[index]
    lower = head().replace(b"Upgrade: websocket", b"upgrade:WebSocket").replace(b"Host:", b"HOST:")
    assert read_opening(lower, "/ws") is not None


@pytest.mark.parametrize(
    "data",
    [
        head(start="POST /ws HTTP/1.1"),
        head(start="GET /ws HTTP/1.0"),
        head(start="get /ws HTTP/1.1"),
        head(target="/ws/"),
        head(target="/wsx"),
        head(target="/health"),
        head(target="/ws?protocol=2&protocol=1"),
        head(target="/ws?token=abc"),
        head(target="/ws?protocol=%32"),
        head(target="/ws?protocol=2#x"),
        head().replace(b"Host: gw.example\r\n", b""),
        head("Host: other.example"),
        head(f"Sec-WebSocket-Key: {KEY}"),
        head("Origin: https://a.example", "Origin: https://b.example"),
        head("X-Folded: a", " b"),
        head("X-Bad : a"),
        head("X-Ctl: a\x01b"),
        head("X-Utf8: café".encode().decode("latin-1")),
        head("Content-Length: 5"),
        head("Transfer-Encoding: chunked"),
        head("Sec-WebSocket-Protocol: wsgate.jwt"),
        head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        head().replace(KEY.encode(), b"dGhlIHNhbXBsZSBub25jZQ"),  # unpadded
        head().replace(KEY.encode(), b"dGhlIHNhbXBsZSBub25jZR=="),  # not canonical
        head().replace(KEY.encode(), base64.b64encode(os.urandom(17))),
        head().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head().replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        head().replace(b"Connection: Upgrade", b"Connection: upgrades"),
        head()[:-2],  # not complete in this read
        head("X-Long: " + "x" * MAX_HEAD),
        head("User-Agent: a", "User-Agent: b"),  # any repeated header (aiohttp refuses some)
        head(*(f"X-{n}: y" for n in range(130))),  # aiohttp refuses more than 128
        head("Expect: 100-continue"),
        head("Sec-WebSocket-Key1: x"),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to a plain port
    ],
)
def test_anything_else_is_not_plain(data: bytes) -> None:
    """None is no verdict: aiohttp answers these (tests below)."""
    assert read_opening(data, "/ws") is None


AGREEMENT = [
    head(),
    head(target="/ws?protocol=1"),
    head("User-Agent: a", "User-Agent: b"),
    head("Content-Type: a", "Content-Type: b"),
    head(*(f"X-{n}: y" for n in range(130))),
    head("Sec-WebSocket-Key1: x"),
    head("X-Folded: a", " b"),
    head("X-Ctl: a\x01b"),
    head("Host: other.example"),
    head("Content-Length: 5"),
    head("Transfer-Encoding: chunked"),
    head(start="GET /ws HTTP/1.1 "),
    head(start="GET  /ws HTTP/1.1"),
    head(start="GET /ws\tHTTP/1.1"),
    head().replace(b"\r\n", b"\n"),
]


@pytest.mark.parametrize("data", AGREEMENT)
async def test_what_aiohttps_parser_refuses_is_never_plain(data: bytes) -> None:
    """aiohttp's own request parser (its C one where built) over the same bytes: whatever it refuses, the front
    door hands to it (its answer, a 400, is then aiohttp's)."""
    parser = HttpRequestParser(mock.Mock(), asyncio.get_running_loop(), 2**16)
    try:
        parser.feed_data(data)
    except BadHttpMessage:
        assert read_opening(data, "/ws") is None
    else:
        assert data != AGREEMENT[0] or read_opening(data, "/ws") is not None


def test_the_accept_key_is_rfc_6455s() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # section 1.3


# --- on a real server ------------------------------------------------------------------------------------------


def doors_of(server: Server) -> FrontDoors:
    runner = server.test_server.runner
    assert runner is not None and isinstance(runner.server, FrontDoors)
    return runner.server


async def exchange(server: Server, *parts: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send `parts` as separate reads (each after the server read the one before), return the answer's head."""
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    doors = doors_of(server)
    for n, part in enumerate(parts):
        writer.write(part)
        if n < len(parts) - 1:  # the front door has handed it to aiohttp: what follows is aiohttp's to read
            await eventually(lambda: len(doors.server.connections) >= 1)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return answer, reader, writer


def without_date(answer: bytes) -> list[bytes]:
    return [line for line in answer.split(b"\r\n") if not line.startswith(b"Date: ")]


async def test_the_plain_upgrade_is_answered_at_the_front_door_byte_for_byte_as_aiohttp_does(
    wsgate_server: StartServer,
) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS)
    doors = doors_of(server)
    assert doors.answers
    front, front_reader, front_writer = await exchange(server, head())
    assert (doors.server.requests_count, doors.upgraded) == (0, 1)
    data = head()
    aiohttp_answer, reader, writer = await exchange(server, data[:20], data[20:])  # split: aiohttp's
    assert (doors.server.requests_count, doors.upgraded) == (1, 1)
    assert doors.requests_count == 2  # what gunicorn's --max-requests counts: both
    assert front.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert without_date(front) == without_date(aiohttp_answer)
    connected = [json.loads((await _read_frame(r))[1]) for r in (front_reader, reader)]
    assert [sorted(c["data"]) for c in connected] == [["client_id", "message"]] * 2
    assert len(server.hub.connections) == 2
    for w in (front_writer, writer):
        w.close()
    await eventually(lambda: not server.hub.connections and not server.hub.addresses)


async def test_a_client_upgraded_at_the_front_door_is_served_as_any(wsgate_server: StartServer) -> None:
    """Frames sent with the handshake come after `connected`; rooms, publishes, pings and the close work."""
    server = await wsgate_server(plugins=NO_PLUGINS)
    subscribe = json.dumps({"type": "subscribe", "room": "r", "id": "1"}).encode()
    answer, reader, writer = await exchange(server, head(target="/ws?protocol=2") + _frame(1, subscribe))
    assert answer.startswith(b"HTTP/1.1 101")
    kinds = [json.loads((await _read_frame(reader))[1])["type"] for _ in range(2)]
    assert kinds == ["connected", "subscribed"]
    other = await server.connect()
    await other.subscribe("r")
    await other.send({"type": "publish", "room": "r", "data": "hi"})
    assert json.loads((await _read_frame(reader))[1])["data"] == "hi"
    writer.write(_frame(9, b"are you there"))
    assert await _read_frame(reader) == (10, b"are you there")
    writer.write(_frame(8, (1000).to_bytes(2, "big")))
    opcode, payload = await _read_frame(reader)
    assert (opcode, payload[:2]) == (8, (1000).to_bytes(2, "big"))
    await eventually(lambda: len(server.hub.connections) == 1)
    assert doors_of(server).server.requests_count == 0  # (aiohttp's client sends the plain form too)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (head(target="/ws?protocol=9"), b"400"),  # the view says which versions exist
        (head("Origin: https://evil.example"), b"403"),  # the view refuses and logs it
        (head("Sec-WebSocket-Protocol: chat"), b"101"),  # aiohttp chooses (none) and logs it
        (head(start="POST /ws HTTP/1.1"), b"405"),
        (head().replace(b"Upgrade: websocket", b"Upgrade: h2c"), b"426"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    ],
)
async def test_what_the_front_door_declines_is_answered_by_aiohttp_and_the_view(
    wsgate_server: StartServer, data: bytes, status: bytes
) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS)
    assert doors_of(server).answers
    answer, _, writer = await exchange(server, data)
    assert answer.split(b" ")[1] == status, answer
    assert doors_of(server).server.requests_count == 1
    writer.close()
    await eventually(lambda: not server.hub.addresses)  # the claim went with the socket to aiohttp, and back


async def test_the_front_door_steps_aside_for_what_needs_aiohttps_request(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    with_auth = await wsgate_server()  # the example token_auth plugin authenticates: it reads aiohttp's request
    assert not doors_of(with_auth).answers
    await with_auth.connect()
    assert doors_of(with_auth).server.requests_count == 1
    full = await wsgate_server(plugins=NO_PLUGINS, websocket={"limits": {"max_connections": 1}})
    first = await full.connect()
    answer, reader, writer = await exchange(full, head())  # refused by the view: the error, then 1013
    assert answer.startswith(b"HTTP/1.1 101")
    assert json.loads((await _read_frame(reader))[1])["type"] == "error"
    assert (await _read_frame(reader))[1][:2] == (1013).to_bytes(2, "big")
    assert doors_of(full).server.requests_count == 1 and list(full.hub.connections) == [first.id]
    writer.close()


class Welcome:
    """A `wsgate_client_connected` hook that waits until `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.called = asyncio.Event()

    @hookimpl
    async def wsgate_client_connected(self, client: Client) -> None:
        self.called.set()
        await self.go.wait()


async def test_connected_hooks_run_before_the_first_message_of_a_client_upgraded_at_the_front_door(
    wsgate_server: StartServer,
) -> None:
    welcome = Welcome()
    server = await wsgate_server(welcome, plugins=NO_PLUGINS)
    ping = json.dumps({"type": "ping"}).encode()
    _, reader, writer = await exchange(server, head() + _frame(1, ping))
    assert json.loads((await _read_frame(reader))[1])["type"] == "connected"
    await wait_until(welcome.called)
    (conn,) = server.hub.connections.values()
    await eventually(lambda: conn._inbox.has_queued())  # the ping waits behind the hook, not handled
    welcome.go.set()
    assert json.loads((await _read_frame(reader))[1])["type"] == "pong"
    assert doors_of(server).server.requests_count == 0
    writer.close()


async def test_a_socket_that_sends_nothing_is_closed_after_the_request_timeout(wsgate_server: StartServer) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS, security={"request_timeout": "1s"})
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await eventually(lambda: len(doors_of(server).pending) == 1)
    assert server.hub.addresses == {"127.0.0.1": 1}  # counted from accept() on
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, without a word
    await eventually(lambda: not server.hub.addresses and not doors_of(server).pending)
    writer.close()
    _, quitter = await asyncio.open_connection("127.0.0.1", port)  # one that leaves before a byte
    await eventually(lambda: len(doors_of(server).pending) == 1)
    quitter.close()
    await eventually(lambda: not server.hub.addresses and not doors_of(server).pending)


async def test_an_origin_that_is_no_url_is_refused_by_the_view_without_a_traceback(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS)
    answer, _, writer = await exchange(server, head("Origin: http://[x"))
    assert answer.startswith(b"HTTP/1.1 403")
    assert not [r for r in caplog.records if r.exc_info]
    writer.close()


async def test_the_address_limit_and_shutdown_at_the_front_door(wsgate_server: StartServer) -> None:
    """Over `max_connections_per_ip`, the 429 at once; at shutdown, a socket still silent is closed."""
    server = await wsgate_server(plugins=NO_PLUGINS, websocket={"limits": {"max_connections_per_ip": 1}})
    assert doors_of(server).answers
    port = server.test_server.port
    assert port is not None
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
    await eventually(lambda: len(doors_of(server).pending) == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head())
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 429") and b"too many connections from this address" in answer
    await server.test_server.close()
    assert await asyncio.wait_for(silent_reader.read(), 10) == b""
    assert not server.hub.addresses
    for w in (silent, writer):
        w.close()


@pytest.mark.parametrize(
    "where", ["wsgate.frontdoor.switching_protocols", "wsgate.frontdoor.upgraded_here", "wsgate.views.Sessions.begin"]
)
async def test_a_failing_upgrade_closes_that_client_and_leaves_nothing_of_it(
    wsgate_server: StartServer, monkeypatch: Any, where: str
) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a defect")

    monkeypatch.setattr(where, broken)
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head())
    assert await asyncio.wait_for(reader.read(), 10) == b""
    await eventually(lambda: not server.hub.connections and not server.hub.addresses)
    assert not server.app[SESSIONS].live
    monkeypatch.undo()
    assert (await server.connect()).id  # the server goes on
    assert doors_of(server).server.requests_count == 0
    writer.close()


async def test_a_request_begun_late_keeps_the_deadline_it_had_from_accept(wsgate_server: StartServer) -> None:
    """A socket handed to aiohttp with an unfinished request: aiohttp's timer closes it at the front door's
    deadline (accept() plus `security.request_timeout`), not a whole timeout after the hand-over
    (`aiohttp_private.close_unfinished_at`; tests/test_aiohttp_private.py shows that timer closing it)."""
    server = await wsgate_server(plugins=NO_PLUGINS, security={"request_timeout": "60s"})
    doors = doors_of(server)
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await eventually(lambda: len(doors.pending) == 1)
    (door,) = doors.pending
    deadline = door._deadline
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished: handed to aiohttp
    await eventually(lambda: len(doors.server.connections) == 1)
    (handler,) = doors.server.connections
    assert handler._keepalive_handle is not None
    assert handler._keepalive_handle.when() == pytest.approx(deadline, abs=0.001)  # (uvloop's timers: milliseconds)
    writer.close()
    await eventually(lambda: not server.hub.addresses)


async def test_the_access_log_line_of_an_upgrade_at_the_front_door_is_aiohttps(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(plugins=NO_PLUGINS)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    data = head("Referer: https://app.example/chat", "User-Agent: test-agent/1.0", target="/ws?protocol=2")
    writers = []
    for parts in ((data,), (data[:20], data[20:])):  # at the front door, then split: aiohttp's
        _, _, writer = await exchange(server, *parts)
        writers.append(writer)
    assert (doors_of(server).upgraded, doors_of(server).server.requests_count) == (1, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 2
    front, aiohttps = (re.sub(r"\[[^]]*\]", "[time]", line) for line in lines)
    assert (
        front
        == aiohttps
        == '127.0.0.1 [time] "GET /ws?protocol=2 HTTP/1.1" 101 0 "https://app.example/chat" "test-agent/1.0"'
    )
    for writer in writers:
        writer.close()


async def add_nothing(request: web.Request, response: web.StreamResponse) -> None:
    """An embedding application's `on_response_prepare` handler."""


async def test_an_embedding_applications_response_hooks_send_upgrades_to_aiohttp() -> None:
    """An `on_response_prepare` handler or a middleware may change any response, the 101 too: the front door
    then answers nothing (wsgate's own CORS handler, which leaves `/ws` alone, does not count)."""
    for extra in (None, "on_response_prepare", "middleware"):
        app = await create_app(make_settings(plugins=NO_PLUGINS))
        if extra == "on_response_prepare":
            app.on_response_prepare.append(add_nothing)
        elif extra == "middleware":
            app.middlewares.append(web.middleware(lambda request, handler: handler(request)))
        runner = GatewayRunner(app)
        await runner.setup()
        try:
            assert isinstance(runner.server, FrontDoors)
            assert runner.server.answers is (extra is None), extra
        finally:
            await runner.cleanup()


@pytest.mark.parametrize(
    "data",
    [
        head().replace(KEY.encode(), b"dGhl\xddIHNhbXBsZSBub25jZQ=="),
        head().replace(b"Upgrade: websocket", b"Upgrade: websocket\xdd"),
        head().replace(b"Connection: Upgrade", b"Connection: Upgrade\xdd"),
        head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 13\xdd"),
    ],
)
async def test_a_handshake_header_that_is_not_ascii_gets_a_400_not_a_traceback(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Not plain (the front door declines it), and aiohttp's handshake raises ValueError reading it: the view's
    JSON 400, as for any malformed handshake (it was a 500 and an `Error handling request` traceback)."""
    server = await wsgate_server(plugins=NO_PLUGINS)
    answer, reader, writer = await exchange(server, data)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    length = int(re.search(rb"Content-Length: (\d+)", answer)[1])  # type: ignore[index]
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    assert body["error"] == "Upgrade Required" or body["detail"].startswith("the opening handshake is malformed")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    writer.close()


async def test_a_refused_socket_is_closed_as_soon_as_its_peer_closes(
    wsgate_server: StartServer, monkeypatch: Any
) -> None:
    """The 429's socket is read (and what comes dropped) so that the peer's end frees it at once: not held for
    `REFUSAL_LINGER` (one address at its limit could otherwise hold connect rate x linger descriptors)."""
    monkeypatch.setattr("wsgate.frontdoor.REFUSAL_LINGER", 600.0)
    server = await wsgate_server(plugins=NO_PLUGINS, websocket={"limits": {"max_connections_per_ip": 1}})
    held = await server.connect()
    baseline = len(os.listdir("/proc/self/fd"))
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 429")
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: len(os.listdir("/proc/self/fd")) <= baseline)
    assert (await held.request({"type": "ping"}))["type"] == "pong"
