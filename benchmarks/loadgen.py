"""The load generator, on uvloop: picows clients (compiled, so the generator is not the bottleneck) where every
message is handled, and raw clients (Subscriber: a bare asyncio.Protocol, as little Python per connect and per
frame as can be) for the many subscribers that only count bytes and the idle clients whose connect is timed.

One scenario per run; prints one JSON object with the figures and the generator's
own CPU use (a fraction of one core: near 1.0 means the figure is void).

    python benchmarks/loadgen.py fanout --url ws://127.0.0.1:8081/ws --subscribers 1000 --window 32

`hold` is the exception: it holds idle clients for a coordinator (`Fleet`, used by run.py's connect-scaling and
by bench_100k.py), which drives several such processes over their stdin and stdout, one JSON object a line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

PAD = "x" * 40  # with the envelope, a ~100-byte message
CONNECT_CONCURRENCY = 200
ANSWER_TIMEOUT_S = 30.0
"""How long a raw client waits for `subscribed` once its socket is connected; then its connect counts as failed."""
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # (connect() then never searches a full port range)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # (Linux; named in Python 3.12)
"""A socket bound to a source address with this option gets its port from connect(), unique for the address pair;
a plain bind() to port 0 searches the source address's ports for one no socket holds, TIME_WAITs included (the
machine's, from every earlier run within a minute): that search, in the kernel, cost the generator 0.2 to 0.8 ms
of CPU per connect with 50,000 to 70,000 TIME_WAITs, against 0.03 ms with the option."""


TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA  # opcodes (RFC 6455 5.2)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame as a client must send it: masked (RFC 6455 5.3). The mask comes from `random`, not from the
    system's entropy: the server only unmasks it."""
    size = len(payload)
    mask = random.randbytes(4)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    keys = (mask * (size // 4 + 1))[:size]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")


class Refused(Exception):
    """The server answered a connect with something else than `connected` (at `max_connections`: an error, then
    close 1013), or a subscribe with something else than `subscribed`."""


class Subscriber(asyncio.Protocol):
    """A client on the bare protocol, as cheap per connect as Python allows: the connect figures measure the server.

    It writes the upgrade request; once the 101 has arrived, a subscribe to `room` (RFC 6455 4.1: a client waits
    for the 101); it parses the server's frames, `connected` then `subscribed` (`subscribed` resolves then, or fails
    with Refused on any other answer, or ConnectionResetError if the server hangs up). After that:

    - `count_bytes` (the fan-out's many subscribers): it only counts bytes, no per-frame Python work at all; every
      benchmark message has the same size, so deliveries = bytes / frame size.
    - otherwise (idle clients): it parses the frames, answers a ping with a pong (else the server drops it after
      `websocket.pong_wait`), and counts data frames (`received`; `on_message` is called after each).
    """

    def __init__(self, request: bytes, room: str, count_bytes: bool = False) -> None:
        self.request, self.room, self.count_bytes = request, room, count_bytes
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = self.connected = self.closed = False
        self.bytes = 0
        self.received = 0
        self.on_message: Callable[[Subscriber], None] | None = None

    @staticmethod
    def upgrade_request(host: str, path: str) -> bytes:
        """The HTTP upgrade, the same for every client (the key too: the server only checks its form)."""
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass of it)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError(f"closed by the server before `subscribed` ({exc or 'no error'})"))

    def send(self, obj: object) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(TEXT, json.dumps(obj, separators=(",", ":")).encode()))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        if not self.subscribed.done():  # (or cancelled, with the task that waited)
            self.subscribed.set_exception(error)
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.count_bytes and self.subscribed.done():
            self.bytes += len(data)
            return
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end == -1:
                self.buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            if status[9:12] != b"101":
                self._fail(Refused(f"the upgrade was answered with {status.decode(errors='replace')!r}"))
                return
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(client_frame(TEXT, f'{{"type":"subscribe","room":{json.dumps(self.room)}}}'.encode()))
            buffer = buffer[end + 4 :]
        at = 0
        while len(buffer) - at >= 2:
            opcode, size = buffer[at] & 0x0F, buffer[at + 1] & 0x7F  # (a server's frames are not masked)
            head = 2 if size < 126 else 4 if size == 126 else 10
            if size >= 126:
                if len(buffer) - at < head:
                    break
                size = int.from_bytes(buffer[at + 2 : at + head], "big")
            if len(buffer) - at < head + size:
                break
            self._frame(opcode, buffer[at + head : at + head + size])
            at += head + size
            if self.count_bytes and self.subscribed.done():
                self.bytes = len(buffer) - at
                at = len(buffer)
        self.buffer = buffer[at:]

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            assert self.transport is not None
            self.transport.write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            self.closed = True
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._fail(Refused(f"closed by the server with {code} before `subscribed`: {payload[2:]!r}"))
            self.abort()
        elif opcode in (TEXT, BINARY):
            if self.subscribed.done():
                self.received += 1
                if self.on_message is not None:
                    self.on_message(self)
                return
            # the server sends nothing else before `subscribed`: a look for the type's word will do (not a parse)
            if not self.connected and b'"connected"' in payload:
                self.connected = True
            elif self.connected and b'"subscribed"' in payload:
                self.subscribed.set_result(None)
            else:
                answer = payload.decode(errors="replace")
                self._fail(Refused(f"{'subscribe' if self.connected else 'connect'} answered with {answer}"))

    def time_out(self) -> None:
        self._fail(TimeoutError(f"no `subscribed` within {ANSWER_TIMEOUT_S:.0f} s"))


async def connect_subscribers(
    url: str,
    count: int,
    room: Callable[[int], str],
    *,
    count_bytes: bool = False,
    sources: Sequence[str] = (),
    retries: int = 0,
    stats: dict[str, int] | None = None,
) -> list[Subscriber]:
    """`count` raw clients (Subscriber), each upgraded, `connected` and subscribed to `room(i)` (i: 0 to count - 1):
    the issue's connect (handshake, `connected`, `subscribed`).

    `sources`: loopback addresses the clients connect from, in turn (each address has its own ephemeral ports).
    `retries`: a refused or failed connect (a full worker answers 1013) is tried again that many times, after a
    short random pause; `stats["retries"]` counts them, `stats["retries_<exception>"]` by cause (Refused: the server
    said no; TimeoutError: no answer in 30 s; ConnectionResetError: it hung up).

    CONNECT_CONCURRENCY connects at a time, each by one of as many tasks (not a task per client: the generator's
    own cost per connect is what the connect figures must not measure). The clients come in the order they
    subscribed.
    """
    authority, _, path = url.split("//", 1)[1].partition("/")
    host, _, port = authority.rpartition(":")
    request = Subscriber.upgrade_request(authority, "/" + path)
    loop = asyncio.get_running_loop()

    async def attempt(i: int) -> Subscriber:
        client = Subscriber(request, room(i), count_bytes)
        sock = socket.socket()
        try:
            if sources:  # the port is chosen by connect(), for the address pair: see IP_BIND_ADDRESS_NO_PORT
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[i % len(sources)], 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(lambda: client, sock=sock)
        timer = loop.call_later(ANSWER_TIMEOUT_S, client.time_out)
        try:
            await client.subscribed
        except BaseException:
            client.abort()
            raise
        finally:
            timer.cancel()
        return client

    async def one(i: int) -> Subscriber:
        for tried in range(retries + 1):
            try:
                return await attempt(i)
            except (Refused, OSError) as error:
                if tried == retries:
                    raise
                why = f"retries_{type(error).__name__}"
            if stats is not None:
                stats["retries"] = stats.get("retries", 0) + 1
                stats[why] = stats.get(why, 0) + 1
            await asyncio.sleep(random.uniform(0.05, 0.25))  # back off (a pause, not a wait for an event)
        raise AssertionError("unreachable")

    clients: list[Subscriber] = []
    pending = iter(range(count))

    async def connector() -> None:
        for i in pending:
            clients.append(await one(i))

    await asyncio.gather(*(connector() for _ in range(min(count, CONNECT_CONCURRENCY))))
    return clients


class Client(WSListener):
    """Counts text frames; optionally records latency from the `t` (monotonic ns) a message carries."""

    def __init__(self, on_message: Callable[[Client, bytes], None] | None = None) -> None:
        self.transport: WSTransport | None = None
        self.received = 0
        self.latencies: list[int] | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.on_message = on_message
        self.frame_size = 0
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed by the server"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(frame.get_payload_as_bytes())
            return
        self.received += 1
        if self.latencies is not None or self.on_message is not None:
            payload = frame.get_payload_as_bytes()
            if self.latencies is not None:
                start = payload.find(b'["', payload.find(b'"data"')) + 2  # tolerant of `: ` spacing
                if start > 1:
                    self.latencies.append(time.monotonic_ns() - int(payload[start : start + 20]))
                    self.frame_size = len(payload) + (2 if len(payload) < 126 else 4)
            if self.on_message is not None:
                self.on_message(self, payload)

    def send(self, obj: object) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, json.dumps(obj, separators=(",", ":")).encode())

    async def request(self, obj: object) -> dict[str, Any]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.send(obj)
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.waiter, 30))
        self.waiter = None
        return reply


async def connect(url: str, count: int, factory: Callable[[], Client] = Client) -> list[Client]:
    """`count` picows clients whose `connected` message has been read (for the scenarios that work per message;
    clients that only connect and sit idle are Subscribers)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def one() -> Client:
        async with gate:
            client = factory()
            client.waiter = loop.create_future()
            transport, _ = await ws_connect(lambda: client, url, max_frame_size=1 << 20)
            reply = json.loads(await asyncio.wait_for(client.waiter, 30))
            client.waiter = None
            if reply.get("type") != "connected":
                transport.disconnect(graceful=False)
                raise Refused(f"connect answered with {reply}")
            return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


def message(seq: int, offsets: bool = False) -> dict[str, Any]:
    """Fixed-size data (zero-padded numbers in strings), so every delivered frame has the same length.

    `offsets`: the room keeps history, so the server adds `"offset": seq` (the publisher is the room's
    only one): the padding gives up as many characters as the offset takes.
    """
    pad = PAD[: len(PAD) - len(str(seq))] if offsets else PAD
    return {"type": "publish", "room": "bench", "data": [f"{time.monotonic_ns():020d}", f"{seq:010d}", pad]}


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


class CpuClock:
    """This process's CPU time over a wall-clock interval, as a fraction of one core."""

    def __enter__(self) -> CpuClock:
        self.cpu0, self.wall0 = self._cpu(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.share = (self._cpu() - self.cpu0) / (time.monotonic() - self.wall0)

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


async def fanout(
    urls: list[str], subscribers: int, window: int, duration: float, sampled: int = 20
) -> dict[str, float]:
    """1 publisher keeping `window` messages in flight to `subscribers` in one room (spread over `urls`).

    `sampled` subscribers parse every message for latency; the rest only count bytes.
    """
    sampled = min(sampled, subscribers)
    samplers = await connect(urls[0], sampled)
    for client in samplers:
        assert (await client.request({"type": "subscribe", "room": "bench"}))["type"] == "subscribed"
    rest: list[Subscriber] = []
    share = subscribers - sampled
    for i, url in enumerate(urls):
        count = share // len(urls) + (1 if i < share % len(urls) else 0)
        rest += await connect_subscribers(url, count, lambda i: "bench", count_bytes=True)
    state = {"sent": 0, "running": True, "offsets": False}

    def on_own_copy(publisher: Client, payload: bytes) -> None:
        if state["running"]:
            state["sent"] += 1
            publisher.send(message(state["sent"], bool(state["offsets"])))

    (publisher,) = await connect(urls[0], 1, lambda: Client(on_own_copy))
    subscribed = await publisher.request({"type": "subscribe", "room": "bench"})
    assert subscribed["type"] == "subscribed"
    state["offsets"] = "offset" in subscribed["data"]  # the room keeps history: messages will carry offsets
    for client in samplers:
        client.latencies = []
    for _ in range(window):
        state["sent"] += 1
        publisher.send(message(state["sent"], bool(state["offsets"])))  # (padded like the rest: one frame size)
    await asyncio.sleep(1.0)  # warm-up
    frame_size = samplers[0].frame_size

    def delivered() -> float:
        return sum(c.received for c in samplers) + sum(c.bytes for c in rest) / frame_size

    for client in samplers:
        client.latencies = []
    before = delivered()
    with CpuClock() as cpu:
        await asyncio.sleep(duration)
        during = delivered() - before
    state["running"] = False
    latencies = [lat for c in samplers for lat in c.latencies or ()]
    sent = state["sent"]
    deadline = time.monotonic() + 10
    while delivered() < sent * subscribers and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # in-flight messages still arriving
    return {
        "deliveries_per_s": during / duration,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "loss": round(sent * subscribers - delivered()),
        "loadgen_cpu": cpu.share,
    }


async def settle(clients: list[Client], expected: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until every client has `expected` messages or the counts stop moving."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        total = sum(c.received for c in clients)
        if all(c.received >= expected for c in clients) or total == last:
            return
        last = total
        await asyncio.sleep(0.3)


async def many_rooms(url: str, rooms: int, window: int, duration: float) -> dict[str, float]:
    """`rooms` rooms of 2 clients; in each, one client keeps `window` messages in flight."""
    clients = await connect(url, rooms * 2)
    running = {"on": True}
    text = WSMsgType.TEXT

    def again(publisher: Client, payload: bytes) -> None:
        # json.dumps({"type": "publish", "room": room, "data": [ns, 0, PAD]}) byte for byte, from a template:
        # encoding each message with json took the generator's core before the servers' (the floor's 98%)
        if running["on"]:
            head, tail = publisher.template  # type: ignore[attr-defined]
            publisher.transport.send(text, head + b"%d" % time.monotonic_ns() + tail)  # type: ignore[union-attr]

    for i, client in enumerate(clients):
        room = f"room-{i // 2}"
        client.room = room  # type: ignore[attr-defined]
        sample = json.dumps({"type": "publish", "room": room, "data": [0, 0, PAD]}, separators=(",", ":")).encode()
        head, tail = sample.split(b"[0,0,", 1)
        client.template = (head + b"[", b",0," + tail)  # type: ignore[attr-defined]
        assert (await client.request({"type": "subscribe", "room": room}))["type"] == "subscribed"
        if i % 2 == 0:
            client.on_message = again
    for i in range(0, len(clients), 2):
        for _ in range(window):
            again(clients[i], b"")
    await asyncio.sleep(1.0)
    before = sum(c.received for c in clients)
    with CpuClock() as cpu:
        await asyncio.sleep(duration)
        delivered = sum(c.received for c in clients) - before
    running["on"] = False
    return {"deliveries_per_s": delivered / duration, "loadgen_cpu": cpu.share}


def user_room(i: int) -> str:
    """Client `i`'s own room: a per-user channel."""
    return f"user-{i}"


async def idle(url: str, connections: int) -> dict[str, float]:
    """Connect `connections` clients, each subscribed to a room of its own; time it (handshake, `connected`,
    `subscribed`); then time one broadcast reaching all of them."""
    with CpuClock() as cpu:
        started = time.monotonic()
        clients = await connect_subscribers(url, connections, user_room, sources=SOURCES)
        connect_s = time.monotonic() - started
    print(json.dumps({"connected": connections}), flush=True)  # run.py measures server memory now
    sys.stdin.readline()
    done = asyncio.Event()
    remaining = {"n": len(clients)}

    def arrived(client: Subscriber) -> None:
        remaining["n"] -= 1
        if remaining["n"] == 0:
            done.set()

    for client in clients:
        client.on_message = arrived
    started = time.monotonic()
    clients[0].send({"type": "broadcast", "data": "wake up"})
    await asyncio.wait_for(done.wait(), 120)
    broadcast_s = time.monotonic() - started
    return {"connect_s": connect_s, "broadcast_s": broadcast_s, "loadgen_cpu": cpu.share}


async def latency(url: str, subscribers: int, rate: float, duration: float) -> dict[str, float]:
    """`subscribers` in one room, one publisher at a steady `rate` messages/s."""
    subs = await connect(url, subscribers)
    for client in subs:
        assert (await client.request({"type": "subscribe", "room": "bench"}))["type"] == "subscribed"
        client.latencies = []
    (publisher,) = await connect(url, 1)
    assert (await publisher.request({"type": "subscribe", "room": "bench"}))["type"] == "subscribed"
    with CpuClock() as cpu:
        interval, seq = 1.0 / rate, 0
        next_at = time.monotonic()
        end = next_at + duration
        while next_at < end:
            seq += 1
            publisher.send(message(seq))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await settle(subs, seq)
    values = [lat for c in subs for lat in c.latencies or ()]
    return {
        "p50_ms": percentile(values, 0.5),
        "p99_ms": percentile(values, 0.99),
        "loss": sum(seq - c.received for c in subs),
        "loadgen_cpu": cpu.share,
    }


SPARE_DESCRIPTORS = 100
"""Descriptors a `hold` process keeps free for itself (its loop, pipes, a connect in flight): it refuses a
`connect` that would take it closer than this to its limit (RLIMIT_NOFILE, 20,000 here)."""


async def hold(url: str, sources: Sequence[str], base: int, retries: int) -> None:
    """Hold idle clients for a coordinator (`Fleet`): one JSON command a line on stdin, one JSON answer a line on
    stdout, until stdin closes. Client `i` of this process subscribes to `user-{base + i}`.

    - `{"do": "connect", "count": n}`: n more clients; answers `{"connected": total, "seconds": s, "retries": r,
      "cpu": share of one core, "retries_<cause>": ...}`, or `{"error": text}`.
    - `{"do": "arm"}`: every client counts what it receives from now on; answers `{"open": n}`.
    - `{"do": "broadcast"}`: the first client sends a broadcast; answers `{"sent_at": monotonic seconds}`.
    - `{"do": "wait", "timeout": s}`: waits until every armed client has received a message (at most s seconds);
      answers `{"received": n, "of": m, "last_at": monotonic seconds of the last arrival}`.
    - `{"do": "status"}`: answers `{"open": n, "closed": k}` (closed: clients the server closed).
    """
    loop = asyncio.get_running_loop()
    clients: list[Subscriber] = []
    stats: dict[str, int] = {}
    arrived = {"n": 0, "last_at": 0.0}
    everyone = asyncio.Event()

    def on_message(client: Subscriber) -> None:
        if client.received == 1:  # its first message since `arm`
            arrived["n"] += 1
            arrived["last_at"] = time.monotonic()
            if arrived["n"] == len(clients):
                everyone.set()

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        do = command["do"]
        if do == "connect":
            count = int(command["count"])
            in_use = len(os.listdir("/proc/self/fd"))
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if in_use + count + SPARE_DESCRIPTORS > limit:
                answer({"error": f"{count} more clients need {in_use + count} descriptors: the limit is {limit}"})
                continue
            first = base + len(clients)

            def room(i: int, first: int = first) -> str:
                return user_room(first + i)

            try:
                with CpuClock() as cpu:
                    started = time.monotonic()
                    clients += await connect_subscribers(
                        url, count, room, sources=sources, retries=retries, stats=stats
                    )
                    seconds = time.monotonic() - started
            except Exception as error:  # the coordinator says what failed
                answer({"error": f"connect failed after {len(clients)} clients: {error!r}"})
                continue
            answer({"connected": len(clients), "seconds": seconds, "cpu": cpu.share, "retries": 0, **stats})
        elif do == "arm":
            arrived.update(n=0, last_at=0.0)
            everyone.clear()
            for client in clients:
                client.received = 0
                client.on_message = on_message
            answer({"open": sum(not c.closed for c in clients)})
        elif do == "broadcast":
            sent_at = time.monotonic()
            clients[0].send({"type": "broadcast", "data": "wake up"})
            answer({"sent_at": sent_at})
        elif do == "wait":
            try:
                await asyncio.wait_for(everyone.wait(), float(command["timeout"]))
            except TimeoutError:
                pass
            answer({"received": arrived["n"], "of": len(clients), "last_at": arrived["last_at"]})
        elif do == "status":
            closed = sum(c.closed for c in clients)
            answer({"open": len(clients) - closed, "closed": closed})
        else:
            answer({"error": f"unknown command {do!r}"})


class Fleet:
    """Several `loadgen.py hold` processes, driven from this process; all of them killed past `deadline_s`.

    `sources[k]`: the loopback addresses process k connects from (e.g. `[["127.0.0.2"], ["127.0.0.3"]]`);
    `[]` for the default. `pin`: a `taskset -c` CPU list for them, or None.
    """

    def __init__(
        self, url: str, sources: Sequence[Sequence[str]], *, pin: str | None, deadline_s: float, retries: int = 0
    ) -> None:
        self.expired = False
        self.procs: list[subprocess.Popen[str]] = []
        for k, addresses in enumerate(sources):
            command = [sys.executable, os.path.abspath(__file__), "hold", "--url", url]
            command += ["--base", str(k * 10_000_000), "--retries", str(retries)]
            for address in addresses:
                command += ["--source", address]
            self.procs.append(
                subprocess.Popen(
                    (["taskset", "-c", pin] if pin else []) + command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # its own process group: killed with everything it started
                )
            )
        self._watchdog = threading.Timer(deadline_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        self.expired = True
        self.close()

    def ask(self, commands: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
        """Send `commands[k]` to process k (None: nothing) all at once, then read their answers in order."""
        asked = [(proc, command) for proc, command in zip(self.procs, commands, strict=True) if command is not None]
        for proc, command in asked:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        answers = []
        for proc, _ in asked:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                why = "its deadline passed" if self.expired else f"it exited with {proc.poll()}"
                raise RuntimeError(f"load generator {proc.pid} gave no answer: {why}")
            answer = json.loads(line)
            if "error" in answer:
                raise RuntimeError(f"load generator {proc.pid}: {answer['error']}")
            answers.append(answer)
        return answers

    def ask_all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        return self.ask([command] * len(self.procs))

    def connect(self, count: int) -> tuple[float, list[dict[str, Any]]]:
        """`count` more clients, spread evenly over the processes; the wall-clock seconds it took, the answers."""
        n = len(self.procs)
        started = time.monotonic()
        answers = self.ask([{"do": "connect", "count": count // n + (k < count % n)} for k in range(n)])
        return time.monotonic() - started, answers

    def broadcast_s(self, timeout: float) -> float:
        """Seconds for one broadcast from the first client to reach every client of every process."""
        self.ask_all({"do": "arm"})
        (sent,) = self.ask([{"do": "broadcast"}] + [None] * (len(self.procs) - 1))
        waited = self.ask_all({"do": "wait", "timeout": timeout})
        missing = sum(a["of"] - a["received"] for a in waited)
        if missing:
            raise RuntimeError(f"the broadcast reached {missing} clients fewer than all within {timeout:.0f} s")
        return float(max(a["last_at"] for a in waited) - sent["sent_at"])

    def close(self) -> None:
        """Kill every process (the kernel closes their sockets)."""
        self._watchdog.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            proc.wait()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["fanout", "many_rooms", "idle", "latency", "hold"])
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--source", action="append", default=[], help="hold: a loopback address to connect from")
    parser.add_argument("--base", type=int, default=0, help="hold: the number of its first client's room")
    parser.add_argument("--retries", type=int, default=0, help="hold: tries again a refused connect")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # the generator's own collections over 19,000 clients would be measured as the server's time
    if args.scenario == "fanout":
        job = fanout(args.url, args.subscribers, args.window, args.duration)
    elif args.scenario == "many_rooms":
        job = many_rooms(args.url[0], args.rooms, args.window, args.duration)
    elif args.scenario == "idle":
        job = idle(args.url[0], args.connections)
    elif args.scenario == "hold":
        uvloop.run(hold(args.url[0], args.source, args.base, args.retries))
        os._exit(0)
    else:
        job = latency(args.url[0], args.subscribers, args.rate, args.duration)
    result = uvloop.run(job)
    print(json.dumps(result), flush=True)
    os._exit(0)  # thousands of sockets: let the kernel close them


if __name__ == "__main__":
    main()
