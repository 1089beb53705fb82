"""Lean connections (issue 25): after the upgrade the socket is the connection's own (`aiohttp_private.take_over`).

An idle connection holds no task, no request and none of aiohttp's handler objects; what a client sends while
one of its messages waits is queued bounded in bytes (reading stops), then handled in order; frames a client
sent before the server's 101 are not lost. The figures (bytes per connection, connect rate) are in
benchmarks/RESULTS.md; these tests pin the behaviour they rest on.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
from asyncio import selector_events
from typing import Any

from aiohttp.web import RequestHandler

from wsgate import Client, Message, errors, hookimpl
from wsgate.aiohttp_private import QUEUE_LIMIT
from wsgate.cli import tune_collector
from wsgate.testing import StartServer, eventually, wait_until
from wsgate.views import SESSIONS


def _alive(kind: type) -> int:
    return sum(isinstance(obj, kind) for obj in gc.get_objects())


async def test_an_idle_connection_holds_no_task_and_no_request_handler(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    baseline = len(asyncio.all_tasks())
    peers = [await server.connect() for _ in range(20)]
    for n, peer in enumerate(peers):
        await peer.subscribe(f"user-{n}")  # each handled in a reader task, which ends with it
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline + 20)  # the test's own client readers
    server_tasks = [t for t in asyncio.all_tasks() if (t.get_coro().__qualname__ or "").startswith("Connection.")]
    assert server_tasks == []
    gc.collect()
    assert _alive(RequestHandler) <= 1  # (at most the health check's or a request under way: none per client)
    assert len(server.hub.connections) == 20
    for peer in peers:
        await peer.ws.close()


class Counts:
    """A `count` message type whose first message waits until `go` is set; the rest are counted in order."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()
        self.seen: list[int] = []

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        async def count(client: Client, message: Message) -> None:
            if not self.seen:
                self.waiting.set()
                await self.go.wait()
            self.seen.append(message.data)

        return {"count": count}


async def test_what_a_client_sends_while_its_message_waits_is_bounded_in_bytes_then_handled_in_order(
    wsgate_server: StartServer,
) -> None:
    counts = Counts()
    server = await wsgate_server(counts, plugins={"hook_timeout": "60s"})
    peer = await server.connect()
    conn = server.hub.connections[peer.id]
    await peer.send({"type": "count", "data": 0})
    await asyncio.wait_for(counts.waiting.wait(), 10)
    total = 20_000  # about 700 KB: far over what may be queued
    for n in range(1, total):
        await peer.send({"type": "count", "data": n})
    await eventually(lambda: conn._reading_paused)  # the queue filled: the socket is no longer read
    inbox = conn._inbox
    assert inbox._size <= 2 * QUEUE_LIMIT + 1024  # aiohttp's accounting: bounded, whatever the client sends
    counts.go.set()
    # the reader task ends once the queue is empty; it may still take a loop turn after the last message
    # (it yields every READ_BATCH messages), so its end is waited for, not assumed with the last count
    await eventually(lambda: len(counts.seen) == total and conn.reader_task is None, timeout=30)
    assert counts.seen == list(range(total))
    assert not conn._reading_paused


async def test_frames_sent_with_the_handshake_are_handled_after_connected(wsgate_server: StartServer) -> None:
    """A client that sends a frame before the 101 arrives (RFC 6455 section 4.1 says it must wait; some do not):
    the frame is handled, after `connected`."""
    server = await wsgate_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.test_server.port)  # type: ignore[arg-type]
    key = base64.b64encode(os.urandom(16)).decode()
    payload = json.dumps({"type": "ping"}).encode()
    mask = os.urandom(4)
    frame = bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + frame
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    types = []
    while len(types) < 2:
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        size = first[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        types.append(json.loads(await reader.readexactly(size))["type"])
    assert types == ["connected", "pong"]
    writer.close()


async def test_the_101_and_connected_leave_in_one_write(wsgate_server: StartServer, monkeypatch: Any) -> None:
    """The upgrade's response is held (`DetachedResponse`) and written with `connected` in one system call
    (`Connection.write_head`): one write per connect less. (A refusal after the upgrade writes the 101 before
    its frames, `DetachedResponse.send_head`: tests/test_limits.py's client over `max_connections` reads them.)"""
    server = await wsgate_server()
    port = server.test_server.port
    writes: list[bytes] = []
    original = selector_events._SelectorSocketTransport.write

    def write(transport: Any, data: Any) -> None:
        if transport.get_extra_info("sockname")[1] == port:  # the server's side of a socket
            writes.append(bytes(data))
        original(transport, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", write)
    reader, writer = await _open_raw(port)
    opcode, payload = await _read_frame(reader)
    assert (opcode, json.loads(payload)["type"]) == (1, "connected")
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 101") and b'"type":"connected"' in writes[0]
    writer.close()


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 section 5.3), payload under 126 bytes."""
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 101")
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = await asyncio.wait_for(reader.readexactly(2), 10)
    size = first[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return first[0] & 0x0F, await reader.readexactly(size)


async def test_a_compressed_burst_over_the_deflate_writers_limit_reaches_the_client_whole(
    wsgate_server: StartServer,
) -> None:
    """permessage-deflate: aiohttp's writer, now the connection's, waits on the connection's flow control."""
    server = await wsgate_server(websocket={"compression": True})
    peer = await server.connect(compress=15)
    conn = server.hub.connections[peer.id]
    sent = [os.urandom(3000).hex() for _ in range(80)]  # about 500 KB once compressed: over the writer's 256 KiB
    for n, data in enumerate(sent):
        conn.enqueue(json.dumps({"type": "notice", "n": n, "data": data}).encode())
    got = [await peer.recv() for _ in sent]
    assert [message["data"] for message in got] == sent


async def test_a_bad_frame_queued_behind_a_waiting_message_closes_with_1002_after_it(
    wsgate_server: StartServer,
) -> None:
    counts = Counts()
    server = await wsgate_server(counts, plugins={"hook_timeout": "60s"})
    reader, writer = await _open_raw(server.test_server.port)  # type: ignore[arg-type]
    assert json.loads((await _read_frame(reader))[1])["type"] == "connected"
    writer.write(
        _frame(0x1, json.dumps({"type": "count", "data": 0}).encode())
        + _frame(0x1, json.dumps({"type": "count", "data": 1}).encode())
        + _frame(0x3, b"")  # a reserved opcode: a protocol error (RFC 6455 section 5.2)
    )
    await asyncio.wait_for(counts.waiting.wait(), 10)
    counts.go.set()
    opcode, payload = await _read_frame(reader)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1002)
    assert counts.seen == [0, 1]  # what came before the bad frame was handled
    writer.close()


async def test_a_client_close_that_crosses_the_servers_ends_the_handshake_at_once(wsgate_server: StartServer) -> None:
    """The server closes (a token expired) while the client's own close is on its way: no wait for another."""
    server = await wsgate_server(websocket={"write_wait": "60s"})  # a wait for an answer would outlast the test
    reader, writer = await _open_raw(server.test_server.port)  # type: ignore[arg-type]
    await _read_frame(reader)  # connected
    conn = next(iter(server.hub.connections.values()))
    conn.drop(errors.TOKEN_EXPIRED)
    conn.data_received(_frame(0x8, (1000).to_bytes(2, "big")))  # the client's close, in the same turn
    await wait_until(conn.closed)
    writer.close()


class Order:
    """Records when a client's disconnect hook starts and ends, and when wsgate_shutdown runs; the hook waits until
    the test lets it go (`go`)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    @hookimpl
    async def wsgate_client_disconnected(self, client: Client) -> None:
        self.events.append("disconnect-start")
        self.started.set()
        await self.go.wait()
        self.events.append("disconnect-done")

    @hookimpl
    async def wsgate_shutdown(self) -> None:
        self.events.append("shutdown")


async def test_every_disconnect_hook_has_run_before_wsgate_shutdown(wsgate_server: StartServer) -> None:
    order = Order()
    server = await wsgate_server(order)
    await server.connect()
    sessions = server.test_server.app[SESSIONS]
    closing = asyncio.create_task(server.test_server.close())
    await wait_until(order.started)  # the hook runs, and waits
    # the shutdown either waits for it (the fix) or has gone on to wsgate_shutdown without it (the fault)
    await eventually(lambda: sessions._none_left is not None or "shutdown" in order.events)
    order.go.set()
    await closing
    assert order.events == ["disconnect-start", "disconnect-done", "shutdown"]


def test_the_collector_is_tuned_for_a_long_running_server() -> None:
    """runtime.gc_threshold (docs/performance.md, "Connect rate"): young collections every 10,000 allocations, and
    start-up's objects out of the collector's sight; 0 keeps Python's threshold."""
    saved = gc.get_threshold()
    try:
        tune_collector(10_000)
        assert gc.get_threshold() == (10_000, *saved[1:])
        assert gc.get_freeze_count() > 0
        gc.set_threshold(*saved)
        tune_collector(0)
        assert gc.get_threshold() == saved
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
