"""The aiohttp internals `wsgate.aiohttp_private` relies on are still there, with the same shape.

An aiohttp upgrade that changes one fails here, naming it ("aiohttp changed Server.connection_made: ..."),
rather than somewhere deep in the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.test_utils import BaseTestServer, TestServer
from aiohttp.web_protocol import RequestHandler
from aiohttp.worker import GunicornWebWorker

from wsgate.aiohttp_private import (
    _close_unfinished,
    close_unfinished_at,
    deflate_now,
    production_test_server,
    watch_connections,
)
from wsgate.testing import eventually
from wsgate.wire import TEXT_OPCODE, frame_payloads

from .fakes import RecordingTransport

# (owner, attribute, the parameters the adapter passes or receives, in order)
RELIED_ON: list[tuple[type[Any], str, list[str]]] = [
    (web.Server, "connection_made", ["self", "handler", "transport"]),
    (web.Server, "connection_lost", ["self", "handler", "exc"]),
    (TestServer, "_make_runner", ["self", "kwargs"]),
    (GunicornWebWorker, "_get_valid_log_format", ["self", "source_format"]),
    (RequestHandler, "_process_keepalive", ["self"]),
    (WebSocketWriter, "_send_compressed_frame_sync", ["self", "message", "opcode", "compress"]),
]


def changed(owner: type[Any], name: str, what: str) -> str:
    return f"aiohttp changed {owner.__name__}.{name}: {what}; see wsgate/aiohttp_private.py"


@pytest.mark.parametrize(("owner", "name", "parameters"), RELIED_ON, ids=[f"{o.__name__}.{n}" for o, n, _ in RELIED_ON])
def test_each_private_api_keeps_its_signature(owner: type[Any], name: str, parameters: list[str]) -> None:
    member = getattr(owner, name, None)
    assert callable(member), changed(owner, name, "it is gone")
    found = list(inspect.signature(member).parameters)
    assert found == parameters, changed(owner, name, f"parameters {found}, relied on {parameters}")


def calls(function: Callable[..., Any], call: str) -> bool:
    return call in inspect.getsource(function).replace(" ", "").replace("\n", "")


def test_a_request_handler_reports_its_socket_to_the_server_instance() -> None:
    """`watch_connections` replaces the methods on the Server instance: they take effect only while every
    RequestHandler calls them through that instance, with the socket's transport."""
    for method, call in (
        (RequestHandler.connection_made, "self._manager.connection_made(self,"),
        (RequestHandler.connection_lost, "self._manager.connection_lost(self,exc)"),
    ):
        assert calls(method, call.replace(" ", "")), changed(
            RequestHandler, method.__name__, f"it no longer calls {call} on its server"
        )


def test_the_test_server_builds_its_runner_with_handler_cancellation() -> None:
    """`production_test_server` overrides `_make_runner`, the only place the runner and its
    `handler_cancellation` are chosen; `start_server` must still call it."""
    assert calls(BaseTestServer.start_server, "self._make_runner(handler_cancellation=True"), changed(
        BaseTestServer, "start_server", "it no longer builds its runner through _make_runner(handler_cancellation=True"
    )


def test_the_gunicorn_log_format_conversion_behaves_as_relied_on() -> None:
    worker: Any = GunicornWebWorker.__new__(GunicornWebWorker)  # the conversion reads only class attributes
    converted = GunicornWebWorker._get_valid_log_format(worker, GunicornWebWorker.DEFAULT_GUNICORN_LOG_FORMAT)
    assert converted == web.AccessLogger.LOG_FORMAT, changed(
        GunicornWebWorker, "_get_valid_log_format", f"gunicorn's default became {converted!r}"
    )
    with pytest.raises(ValueError):
        GunicornWebWorker._get_valid_log_format(worker, "%(h)s %(r)s")


async def test_the_adapter_serves_through_the_given_runner_without_handler_cancellation() -> None:
    made: list[dict[str, Any]] = []

    def runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
        made.append(kwargs)
        return web.AppRunner(app, **kwargs)

    server = production_test_server(web.Application(), runner, host="127.0.0.1")
    await server.start_server()
    try:
        assert [kwargs["handler_cancellation"] for kwargs in made] == [False]
        assert server.runner is not None and server.runner.server is not None
        assert server.runner.server.handler_cancellation is False
    finally:
        await server.close()


async def test_the_adapter_sees_each_socket_from_accept_to_its_end() -> None:
    """`watch_connections`: `made` once a socket is accepted (before any request), `lost` once it is gone,
    and aiohttp's own bookkeeping still runs (the handler in `server.connections` while it is open)."""
    events: list[str] = []
    server = production_test_server(web.Application(), web.AppRunner, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.runner is not None and server.runner.server is not None
        web_server = server.runner.server
        watch_connections(
            web_server,
            lambda handler, transport: events.append("made"),
            lambda handler: events.append("lost"),
        )
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await eventually(lambda: events == ["made"] and len(web_server.connections) == 1)
        writer.close()
        await eventually(lambda: events == ["made", "lost"] and not web_server.connections)
    finally:
        await server.close()


def test_the_upgrades_response_can_be_held_and_taken() -> None:
    """`DetachedResponse` holds its 101 (`_send_headers_immediately`) and `held_head` takes it from aiohttp's
    `StreamWriter` (`_headers_buf`, `_headers_written`); `send_head` writes it through `send_headers()`."""
    from aiohttp.http_writer import StreamWriter

    assert calls(web.StreamResponse._write_headers, "ifself._send_headers_immediately:writer.send_headers()"), changed(
        web.StreamResponse, "_write_headers", "it no longer holds the headers when _send_headers_immediately is off"
    )
    assert calls(StreamWriter.write_headers, "self._headers_buf=buf"), changed(
        StreamWriter, "write_headers", "it no longer keeps the serialized headers in _headers_buf"
    )
    for attribute in ("_headers_written", "_headers_buf"):
        assert calls(StreamWriter.send_headers, f"self.{attribute}"), changed(
            StreamWriter, "send_headers", f"it no longer uses {attribute}"
        )


def test_a_request_handler_closes_an_unfinished_request_when_its_keepalive_timer_says() -> None:
    """`close_unfinished_at` moves the timer `connection_made` starts (`_keepalive_handle`, due at
    `_next_keepalive_close_time`), which closes a socket still waiting for a complete request."""
    assert calls(
        RequestHandler.connection_made, "self._keepalive_handle=loop.call_at(close_time,self._process_keepalive)"
    ), changed(RequestHandler, "connection_made", "it no longer starts the keep-alive timer so")
    assert calls(RequestHandler._process_keepalive, "close_time=self._next_keepalive_close_time"), changed(
        RequestHandler, "_process_keepalive", "it no longer reads _next_keepalive_close_time"
    )
    assert calls(RequestHandler._process_keepalive, "ifself._waiterandnotself._waiter.done():self.force_close()"), (
        changed(RequestHandler, "_process_keepalive", "it no longer closes a handler waiting for a request")
    )


async def test_an_unfinished_request_is_closed_at_its_deadline_even_before_the_handlers_loop_starts() -> None:
    """On Python 3.11 a handler's request loop starts in a task of its own: a deadline timer may run first, when
    aiohttp's own check (`_process_keepalive`) sees no waiter and closes nothing. `_close_unfinished` closes a
    socket whose handler parsed no request (`_request_count`), whatever its loop's state."""
    assert calls(RequestHandler.data_received, "self._request_count+=1"), changed(
        RequestHandler, "data_received", "it no longer counts the requests it parsed in _request_count"
    )
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    handler = web.Server(lambda request: web.Response())()
    transport.set_protocol(handler)
    handler.connection_made(transport)  # (its request loop: a task not started yet)
    handler.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")  # unfinished
    close_unfinished_at(handler, loop.time() + 60)
    _close_unfinished(handler)  # what the timer calls at the deadline, here before the loop's first step
    assert transport.is_closing()
    theirs.close()


def test_deflate_now_writes_a_compressed_frame_before_it_returns() -> None:
    """`deflate_now`: a frame of any size is compressed and written at once (aiohttp's `send_frame` compresses
    one over 16 KiB in its executor, later), RSV1 set, its payload the message deflated (RFC 7692 section 7.2.1),
    with the context taken over from one frame to the next, as negotiated."""
    transport = RecordingTransport()
    writer = WebSocketWriter(None, transport, compress=15)  # type: ignore[arg-type]
    messages = [b'{"type":"message","data":"%s"}' % (b"x" * size) for size in (10, 100_000)]
    for message in messages:
        deflate_now(writer, message, TEXT_OPCODE)
    inflate = zlib.decompressobj(-15)
    frames = transport.written
    assert [frames[0] & 0x40, frames[0] & 0x0F] == [0x40, TEXT_OPCODE]
    found = [inflate.decompress(payload + b"\x00\x00\xff\xff") for _, payload in frame_payloads(frames)]
    assert found == messages
