"""A server's own stall is not the client's silence (issue 21 item 4).

The gateway and the test share one event loop, so the clients that must keep sending while a handler
blocks that loop run in threads, on plain sockets: their frames reach the server's socket during the
stall, as a real client's would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from wsgate import Client, Message, hookimpl
from wsgate.testing import TIMEOUT, StartServer, eventually
from wsgate.types import Handler

pytestmark = pytest.mark.slow  # each test stalls a server for seconds

KEEPALIVE = {"ping_interval": "1s", "pong_wait": "1.5s"}


class ThreadClient:
    """A WebSocket client in its own thread: it answers pings (or not), may send `{"type":"ping"}` every
    `every` seconds, and records what it receives; nothing it does waits on the server's event loop."""

    def __init__(self, port: int, *, answer_pings: bool, every: float | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.answer_pings = answer_pings
        self.texts: list[dict[str, Any]] = []
        self.close: tuple[int, str] | None = None
        self.pinged = threading.Event()  # the server's first ping arrived
        self.closed = threading.Event()
        self.got = threading.Condition()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._recv()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock.settimeout(None)
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        if every is not None:
            self._threads.append(threading.Thread(target=self._ping_every, args=(every,), daemon=True))
        for thread in self._threads:
            thread.start()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the socket")
        return chunk

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._recv()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send(self, opcode: int, payload: bytes) -> None:
        """One masked frame, as clients must send (payloads under 126 bytes)."""
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._lock:
            self.sock.sendall(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)

    def send_json(self, obj: Any) -> None:
        self.send(0x1, json.dumps(obj).encode())

    def _read(self) -> None:
        try:
            while True:
                first, second = self._take(2)
                size = second & 0x7F
                if size == 126:
                    size = struct.unpack("!H", self._take(2))[0]
                elif size == 127:
                    size = struct.unpack("!Q", self._take(8))[0]
                payload, opcode = self._take(size), first & 0x0F
                if opcode == 0x1:
                    with self.got:
                        self.texts.append(json.loads(payload))
                        self.got.notify_all()
                elif opcode == 0x9:
                    self.pinged.set()
                    if self.answer_pings:
                        self.send(0xA, payload)
                elif opcode == 0x8:
                    self.close = (struct.unpack("!H", payload[:2])[0], payload[2:].decode())
                    self.send(0x8, payload[:2])  # the close handshake's answer
                    return
        except OSError:
            pass
        finally:
            self._stop.set()
            self.closed.set()
            with self.got:
                self.got.notify_all()

    def _ping_every(self, every: float) -> None:
        while not self._stop.wait(every):  # (its own pace, in its own thread: the input of the test)
            try:
                self.send_json({"type": "ping"})
            except OSError:
                return

    def wait_for(self, kind: str) -> dict[str, Any] | None:
        """The first message of type `kind` (blocking, at most TIMEOUT); None once the server closed first."""
        deadline = time.monotonic() + TIMEOUT
        with self.got:
            while True:
                for text in self.texts:
                    if text["type"] == kind:
                        return text
                if self.closed.is_set():
                    return None
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind!r} within {TIMEOUT}s"
                self.got.wait(left)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for thread in self._threads:
            thread.join(TIMEOUT)


async def in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


class Staller:
    """`{"type":"stall","data":{"seconds":S,"after":A}}` blocks the event loop for S seconds (time.sleep), at
    once or A seconds later, then answers `stalled`; `{"type":"slow","data":S}` awaits S seconds (the reader
    of that client is busy, the loop is not), then answers `slowed`. `stalling` is set as a stall begins."""

    def __init__(self) -> None:
        self.stalling = threading.Event()

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {"stall": self.stall, "slow": self.slow}

    async def stall(self, client: Client, message: Message) -> None:
        seconds, after = message.data["seconds"], message.data.get("after", 0)

        def block() -> None:
            self.stalling.set()
            time.sleep(seconds)
            client.send({"type": "stalled"})

        if after:
            asyncio.get_running_loop().call_later(after, block)
        else:
            block()

    async def slow(self, client: Client, message: Message) -> None:
        await asyncio.sleep(message.data)
        client.send({"type": "slowed"})


def keepalive_closes(server: Any) -> float:
    value = server.metrics.registry.get_sample_value(
        "websocket_connections_closed_total", {"reason": "keepalive_timeout"}
    )
    return value or 0.0


async def test_frames_that_arrived_during_a_stall_count_and_a_silent_client_is_still_closed(
    wsgate_server: StartServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's input: a handler blocks the loop for 2 s while a client sends a ping every 100 ms."""
    server = await wsgate_server(Staller(), websocket=KEEPALIVE)
    port = server.test_server.port
    assert port is not None
    talker = await in_thread(lambda: ThreadClient(port, answer_pings=False, every=0.1))
    silent = await in_thread(lambda: ThreadClient(port, answer_pings=False))  # never sends, never answers
    staller = await server.connect()
    try:
        assert await in_thread(talker.wait_for, "pong") is not None  # its pings are answered
        reply = await staller.request({"type": "stall", "data": {"seconds": 2}})
        assert reply["type"] == "stalled"
        await staller.ws.close()  # (it would not answer pings: this test counts the silent client's close)
        talker.send_json({"type": "subscribe", "room": "after-the-stall"})
        assert await in_thread(talker.wait_for, "subscribed") is not None, talker.close
        assert talker.close is None
        # The silent client is still judged: closed once it had its answer window after a ping sent after the stall.
        assert await in_thread(silent.closed.wait, TIMEOUT)
        assert silent.close == (1001, "keepalive timeout")
        await eventually(lambda: keepalive_closes(server) == 1)  # (counted once its reader has finished)
        assert talker.close is None and len(server.hub.connections) == 1
        # The stall was measured, exported and logged once.
        lag = server.metrics.registry
        assert (lag.get_sample_value("wsgate_event_loop_lag_seconds_count") or 0) >= 1
        over_1s = (lag.get_sample_value("wsgate_event_loop_lag_seconds_count") or 0) - (
            lag.get_sample_value("wsgate_event_loop_lag_seconds_bucket", {"le": "1.0"}) or 0
        )
        assert over_1s >= 1
        stalls = [r for r in caplog.records if "event loop was stalled" in r.getMessage()]
        assert len(stalls) == 1, stalls
        async with server.session.get(server.url("/metrics")) as resp:
            assert "wsgate_event_loop_lag_seconds_bucket" in await resp.text()
    finally:
        await in_thread(talker.stop)
        await in_thread(silent.stop)


async def test_a_client_that_answers_every_ping_survives_a_stall_over_its_ping(wsgate_server: StartServer) -> None:
    """The issue's second input: a 1.2 s stall over the time of the next ping (it starts 0.5 s after a ping)."""
    server = await wsgate_server(Staller(), websocket=KEEPALIVE)
    port = server.test_server.port
    assert port is not None
    answering = await in_thread(lambda: ThreadClient(port, answer_pings=True))
    staller = await server.connect()
    try:
        assert await in_thread(answering.pinged.wait, TIMEOUT)
        reply = await staller.request({"type": "stall", "data": {"seconds": 1.2, "after": 0.5}})
        assert reply["type"] == "stalled"
        answering.send_json({"type": "subscribe", "room": "after-the-stall"})
        assert await in_thread(answering.wait_for, "subscribed") is not None, answering.close
        assert keepalive_closes(server) == 0
    finally:
        await in_thread(answering.stop)


async def test_a_client_is_not_judged_while_its_own_message_is_handled(wsgate_server: StartServer) -> None:
    """A handler that awaits 2.5 s (the loop runs; this client's reader is busy): the pongs the client sends
    meanwhile wait behind its message, and do not make it silent."""
    server = await wsgate_server(Staller(), websocket=KEEPALIVE)
    port = server.test_server.port
    assert port is not None
    busy = await in_thread(lambda: ThreadClient(port, answer_pings=True))
    try:
        busy.send_json({"type": "slow", "data": 2.5})
        assert await in_thread(busy.wait_for, "slowed") is not None, busy.close
        busy.send_json({"type": "subscribe", "room": "after-the-wait"})
        assert await in_thread(busy.wait_for, "subscribed") is not None, busy.close
        assert keepalive_closes(server) == 0
    finally:
        await in_thread(busy.stop)


async def test_a_frame_that_arrived_during_the_stall_is_read_before_the_verdict(wsgate_server: StartServer) -> None:
    """A client that does not answer pings but sends a message during a stall that covers its deadline (last
    heard + 2 s, and 1 s after the ping it was sent): the message is in the server's socket when the
    keepalive is due, and the reader takes it before any verdict. (A 1 s answer window: the stall must begin
    before the deadline, and getting there takes four thread hand-offs, slow on a loaded machine.)"""
    staller_plugin = Staller()
    server = await wsgate_server(staller_plugin, websocket={**KEEPALIVE, "pong_wait": "2s"})
    port = server.test_server.port
    assert port is not None
    lone = await in_thread(lambda: ThreadClient(port, answer_pings=False))
    staller = await server.connect()
    try:
        assert await in_thread(lone.pinged.wait, TIMEOUT)  # a ping after it was last heard: deadline in 1 s

        def send_during_the_stall() -> None:
            assert staller_plugin.stalling.wait(TIMEOUT)
            lone.send_json({"type": "ping"})

        sent = asyncio.ensure_future(in_thread(send_during_the_stall))
        reply = await staller.request({"type": "stall", "data": {"seconds": 2, "after": 0.2}})
        assert reply["type"] == "stalled"
        await sent
        assert await in_thread(lone.wait_for, "pong") is not None, lone.close
        assert lone.close is None
    finally:
        await in_thread(lone.stop)
