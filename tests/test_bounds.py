"""What one client makes the server hold is bounded in bytes, whatever it sends (the second security review).

Every byte queued for a client counts against `websocket.send_queue_bytes`: its outbox, replays and
history answers, pongs, and the socket's own buffer. Past it the client is closed as a slow consumer.
Sockets are closed on every path, whatever the peer does first.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import aiohttp
import pytest
from aiohttp._websocket.writer import WebSocketWriter

from wsgate import Client, ClientError, Message, hookimpl, protocol
from wsgate.connection import PONGS, State
from wsgate.overhead import largest_message
from wsgate.sdk.publisher import HttpPublisher, PublishError, RedisPublisher
from wsgate.testing import TIMEOUT, Server, StartServer, eventually, wait_until

from .conftest import StalledClient
from .fakes import Parts, RecordingTransport, turn
from .test_lean_connections import _open_raw, _read_frame

TEXT, PING, PONG = 0x1, 0x9, 0xA
SMALL = {"max_answer_bytes": 32_768}  # (answers must fit in send_queue_bytes)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (masked, as RFC 6455 5.3 requires), payload under 64 KiB."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x80 | opcode, 0x80 | size]) if size < 126 else struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    ("limits", "count", "pad"),
    [({"send_queue_size": 16}, 20, 10), ({"send_queue_bytes": 65_536, "max_message_size": 32_768}, 32, 2_100)],
    ids=["over send_queue_size", "over send_queue_bytes"],
)
@pytest.mark.parametrize("compression", [False, True], ids=["raw", "deflate"])
async def test_a_burst_in_one_read_closes_no_one_who_reads(
    wsgate_server: StartServer, limits: dict[str, int], count: int, pad: int, compression: bool
) -> None:
    """One client's publishes in one write, more than a member's outbox holds (the adversary's input): handled in
    one loop turn, they once closed every member as a slow consumer, readers included. The sockets take the
    writes, so both members get every message, in order, and stay. With permessage-deflate too: the frames are
    compressed as they would be written (they waited for aiohttp's executor, counted as the reader's)."""
    server = await wsgate_server(websocket={**limits, "compression": compression}, history=SMALL, presence=SMALL)
    reader = await server.connect(compress=15 if compression else 0)  # (offers permessage-deflate, or not)
    assert server.hub.connections[reader.id]._raw is not compression
    await reader.subscribe("x")
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", server.test_server.port)  # type: ignore[arg-type]
    raw_writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + masked_frame(0x1, b'{"type":"subscribe","room":"x","id":"s"}')
    )
    await eventually(lambda: len(server.hub.rooms.get("x", ())) == 2)
    raw_writer.write(
        b"".join(
            masked_frame(0x1, b'{"type":"publish","room":"x","data":[%d,"%s"]}' % (n, b"p" * pad)) for n in range(count)
        )
    )
    assert [(await reader.recv())["data"][0] for _ in range(count)] == list(range(count))
    assert len(server.hub.connections) == 2 and server.metrics.error_count("slow_consumer") == 0
    raw_writer.close()


async def test_large_messages_to_deflate_readers_close_none_of_them(wsgate_server: StartServer) -> None:
    """The adversary's input: with compression on, a publisher's messages of 493 KB (here 100 KB: over the 16 KiB
    aiohttp compresses in its executor) closed every deflate reader as a slow consumer: they waited, uncompressed,
    for the executor. Compressed and written at once, each reader gets every one."""
    limits = {"compression": True, "send_queue_bytes": 262_144, "max_message_size": 131_072}
    server = await wsgate_server(websocket=limits, history=SMALL, presence=SMALL)
    readers = [await server.connect(compress=15) for _ in range(3)]
    publisher = await server.connect()
    for peer in (*readers, publisher):
        await peer.subscribe("x")
    for n in range(8):  # 800 KB in flight to each reader, its bound 256 KiB
        await publisher.send(
            {"type": "publish", "room": "x", "data": [n, base64.b64encode(os.urandom(75_000)).decode()]}
        )
    for reader in readers:
        assert [(await reader.recv())["data"][0] for _ in range(8)] == list(range(8))
    assert len(server.hub.connections) == 4 and server.metrics.error_count("slow_consumer") == 0


BATCH = 100  # sockets of a storm sent before waiting for the server to count them


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
async def test_a_flood_of_pings_is_answered_once_per_read_with_the_latest(wsgate_server: StartServer) -> None:
    """The adversary's input: 43,000 empty pings in one read were answered with as many writes, a system call
    each, and stalled every client of the server for up to a second. A read's pongs go in one write now, at
    most PONGS of them, the last for the latest ping (RFC 6455 section 5.5.3 allows it); with a text message
    or a pong between the pings too."""
    server = await wsgate_server()
    port = server.test_server.port
    assert port is not None
    reader, writer = await _open_raw(port)
    try:
        assert (await _read_frame(reader))[0] == TEXT  # connected
        for opcode, between in ((TEXT, b'{"type":"ping","id":"mid"}'), (PONG, b"")):
            burst = [masked_frame(PING, b"%04d" % n) for n in range(1000)]
            burst.insert(500, masked_frame(opcode, between))
            writer.write(b"".join(burst) + masked_frame(TEXT, b'{"type":"ping","id":"end"}'))
            pongs: list[bytes] = []
            answered = False
            while not (answered and pongs and pongs[-1] == b"0999"):  # the last ping's answer comes
                kind, payload = await _read_frame(reader)
                if kind == PONG:
                    pongs.append(payload)
                answered = answered or (kind == TEXT and b'"end"' in payload)
            assert len(pongs) <= 200, f"{len(pongs)} pongs for 1,000 pings"  # (PONGS per read, a read or a few)
    finally:
        writer.close()


async def test_a_client_that_floods_pings_and_never_reads_holds_a_few_pongs(wsgate_server: StartServer) -> None:
    """Input A: 125-byte pings as fast as the client can, never reading. At most PONGS pongs wait, then only
    the latest ping is answered (RFC 6455 5.5.3), in one write per read: the socket's buffer stays under its
    high-water mark. Once the pongs cannot be written, the client is closed after write_wait: pings do not
    keep it alive."""
    server = await wsgate_server(websocket={"write_wait": "1s"})
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "quiet")  # type: ignore[arg-type]
        conn = next(iter(server.hub.rooms["quiet"]))
        transport = conn._transport
        assert transport is not None
        # a small kernel buffer, so that a pong per read fills it within the test (the client's is 4 KiB too)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        high = transport.get_write_buffer_limits()[1]
        burst = masked_frame(PING, b"p" * 125) * 1000  # 131 KB a burst
        loop = asyncio.get_running_loop()
        largest = 0
        for _ in range(2_000):  # up to 260 MB of pings, until closed (with each pong written at once, 13 MB
            try:  # grew the buffer without end)
                await loop.sock_sendall(stalled.sock, burst)
            except OSError:
                break  # closed by the server: its write deadline passed
            largest = max(largest, transport.get_write_buffer_size())
            assert conn._pongs is None or len(conn._pongs) <= PONGS
            if conn.closed.is_set():
                break
        await wait_until(conn.closed)
        assert (conn.close_code, conn.close_reason) == (1008, "write timeout")
        assert largest <= high + PONGS * 127 + 256, f"the socket's buffer held {largest} bytes"
    finally:
        stalled.close()


async def test_history_answers_to_a_client_that_never_reads_are_bounded(wsgate_server: StartServer) -> None:
    """Input B: 100 messages of 100 KB kept; 25 `history` requests of 39 bytes, never reading. The answers
    pile up to send_queue_bytes (4 MiB), then the client is closed as a slow consumer and counted."""
    server = await wsgate_server(history={"rooms": ["h:*"]})
    for n in range(100):
        await server.gateway.publish("h:big", [n, "x" * 100_000])
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "h:big")  # type: ignore[arg-type]
        conn = server.hub.rooms["h:big"].copy().pop()
        request = b'{"type":"history","room":"h:big"}'
        for _ in range(25):
            await stalled.send(0x1, request)
        await wait_until(conn.closed)
        assert (conn.close_code, conn.close_reason) == (1008, "slow consumer")
        assert server.metrics.error_count("slow_consumer") == 1
    finally:
        stalled.close()


async def test_a_subscriber_that_never_reads_is_bounded_in_bytes_not_messages(wsgate_server: StartServer) -> None:
    """Fan-out: 100 messages of 100 KB are far under send_queue_size (256 messages) but over 4 MiB."""
    server = await wsgate_server()
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "wide")  # type: ignore[arg-type]
        conn = next(iter(server.hub.rooms["wide"]))
        for n in range(100):
            await server.gateway.publish("wide", [n, "x" * 100_000])
            if conn.state.value != "open":
                break
            assert conn.held_bytes() <= 4 * 1024 * 1024
        await wait_until(conn.closed)
        assert (conn.close_code, conn.close_reason) == (1008, "slow consumer")
    finally:
        stalled.close()


async def test_plugin_replies_count_against_the_byte_bound(wsgate_server: StartServer) -> None:
    """A plugin's `client.send` to a client that never reads: the same bound as fan-out."""
    server = await wsgate_server(
        websocket={"send_queue_bytes": 65_536, "max_message_size": 32_768},
        history={"max_answer_bytes": 32_768},
        presence={"max_answer_bytes": 32_768},
    )
    stalled = StalledClient()
    try:
        await stalled.join(server.test_server.port, "any")  # type: ignore[arg-type]
        conn = next(iter(server.hub.rooms["any"]))
        sent = 0  # (what the socket takes while it is below its high-water mark goes there, as it goes)
        while conn.state.value == "open" and sent < 10_000:
            conn.send({"type": "notice", "data": "y" * 1000})
            sent += 1
            assert conn.state.value != "open" or conn.held_bytes() <= 65_536
        assert sent < 10_000 and conn.close_reason == "slow consumer"
        await wait_until(conn.closed)
    finally:
        stalled.close()


def _reset_at_once(port: int, source: str) -> None:
    """Connect and close with a reset (SO_LINGER 0), before the server could answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((source, 0))
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        pass
    finally:
        sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["reset", "close"])
async def test_refused_sockets_are_closed_whatever_the_peer_does_first(wsgate_server: StartServer, how: str) -> None:
    """max_connections_per_ip = 5; one address connects and leaves at once, 1,500 times. The peer's reset often
    arrives before the 429 is written: every socket is still closed, nothing leaks, nothing is logged per
    socket, and clients from other addresses connect afterwards."""
    server = await wsgate_server(websocket={"limits": {"max_connections_per_ip": 5}})
    port = server.test_server.port
    assert port is not None
    await server.health()  # the fixture's own HTTP connection exists before the baseline
    baseline = open_fds()
    loop = asyncio.get_running_loop()

    def storm(count: int) -> None:
        for _ in range(count):
            if how == "reset":
                _reset_at_once(port, "127.0.0.2")
            else:
                with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)):
                    pass

    holders = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) for _ in range(5)]
    try:  # the address is at its limit: every socket of the storm is refused
        await eventually(lambda: server.hub.addresses.get("127.0.0.2") == 5)
        # In batches smaller than the listen backlog (128): a connection the kernel's full accept queue dropped
        # would never reach the server, and the count below would wait for it in vain.
        for done in range(BATCH, 1501, BATCH):
            await loop.run_in_executor(None, storm, BATCH)
            await eventually(lambda done=done: server.metrics.error_count("address_limit") == done)
    finally:
        for holder in holders:
            holder.close()
    await eventually(lambda: "127.0.0.2" not in server.hub.addresses, timeout=TIMEOUT)
    await eventually(lambda: open_fds() <= baseline, timeout=TIMEOUT)  # refused sockets linger 1 s, then close
    for n in range(3, 13):  # ten clients from other addresses
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0))) as session:
            async with session.ws_connect(server.url("/ws")) as ws:
                assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "connected"
    assert open_fds() <= baseline


async def test_what_is_written_no_longer_counts(server: Server) -> None:
    """The byte count follows the outbox down once it is written, so a client that reads is never closed
    for what it was sent long ago."""
    client = await server.connect()
    conn = server.hub.connections[client.id]
    await client.subscribe("r")
    for _ in range(3):  # 3 x 2 MB through a 4 MiB bound, each read before the next
        await server.gateway.publish("r", "x" * 2_000_000)
        assert len((await client.recv())["data"]) == 2_000_000
        await eventually(lambda: conn.held_bytes() == 0)
    assert conn.state.value == "open"


# --- a message too large for any member's queue: refused to its publisher, never closing the members ------------

TIGHT = {"send_queue_bytes": 65_536, "max_message_size": 65_536}
GROWS = '{"type":"%s",%s"data":[%s],"id":"big"}'  # 1e15 is 4 bytes sent, 18 delivered: "1000000000000000.0"


async def answer_to(peer: Any, request_id: str) -> dict[str, Any]:
    while (message := await peer.recv()).get("id") != request_id:
        pass
    return message


@pytest.mark.parametrize("room", ["plain", "kept:1", None])  # a room, a room with history, a broadcast
async def test_a_publish_that_grows_past_send_queue_bytes_as_it_is_encoded_is_refused_and_closes_no_one(
    wsgate_server: StartServer, room: str | None
) -> None:
    """The adversary's next input: with `max_message_size` = `send_queue_bytes` (allowed), 60 KB of `1e15`s is
    under the first and 220 KB once encoded for delivery: every member of the room was closed as a slow consumer.
    Now the publisher is told, nobody gets it, nobody is closed."""
    server = await wsgate_server(websocket=TIGHT, history={"rooms": ["kept:*"], **SMALL}, presence=SMALL)
    publisher, member = await server.connect(), await server.connect()
    if room is not None:
        for peer in (publisher, member):
            await peer.subscribe(room)
    kind, where = ("publish", f'"room":"{room}",') if room else ("broadcast", "")
    text = GROWS % (kind, where, ",".join(["1e15"] * 12_000))
    assert len(text) < TIGHT["max_message_size"]
    await publisher.send(text)
    refused = await answer_to(publisher, "big")
    assert (refused["type"], refused["error"]) == ("error", "message is too large"), refused
    assert "bytes once encoded" in refused["detail"]
    after = {"type": "publish", "room": room, "data": "after"} if room else {"type": "broadcast", "data": "after"}
    await publisher.send(after)
    assert (await member.recv())["data"] == "after"  # the refused one never came; the member is still here
    assert len(server.hub.connections) == 2 and server.metrics.error_count("slow_consumer") == 0
    assert server.metrics.error_count("message_too_large") == 1


class Pushes:
    """A plugin that pushes what its client asks for: `big_room` to a room through the gateway, `big_reply` to
    the client alone."""

    def __init__(self) -> None:
        self.gateway: Any = None
        self.refused: list[str] = []

    @hookimpl
    def wsgate_startup(self, gateway: Any) -> None:
        self.gateway = gateway

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        async def big_room(client: Client, message: Message) -> None:
            try:
                await self.gateway.publish("news", "x" * 70_000)
            except ClientError as err:
                self.refused.append(str(err))
            client.enqueue(b'{"type":"done"}')

        async def big_reply(client: Client, message: Message) -> None:
            await client.send({"type": "big", "data": "x" * 70_000})

        return {"big_room": big_room, "big_reply": big_reply}


async def test_plugin_code_gets_an_error_for_a_message_no_client_could_be_sent(wsgate_server: StartServer) -> None:
    """Plugin code's publish of a message over `send_queue_bytes` closed every member; its reply that large
    closed its client. The publish raises ClientError `message is too large`, the reply ValueError (answered
    `internal error`); nobody is closed, and the HTTP API answers 413."""
    pushes = Pushes()
    server = await wsgate_server(pushes, websocket=TIGHT, history=SMALL, presence=SMALL, api={"key": "k"})
    client, member = await server.connect(), await server.connect()
    await member.subscribe("news")
    assert (await client.request({"type": "big_room"}))["type"] == "done"
    assert pushes.refused == ["message is too large"]
    answer = await client.request({"type": "big_reply", "id": 1})
    assert (answer["error"], answer["id"]) == ("internal error", 1)
    headers = {"Authorization": "Bearer k"}
    body = {"room": "news", "data": "x" * 70_000}
    async with server.session.post(server.url("/api/publish"), json=body, headers=headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "message is too large"
    await server.gateway.publish("news", "small")
    assert (await member.recv())["data"] == "small"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert len(server.hub.connections) == 2 and server.metrics.error_count("slow_consumer") == 0


@pytest.mark.parametrize("room", ["news", "kept:2", None])  # a room, a room with history, a broadcast
async def test_the_publishers_outside_the_gateway_are_refused_a_message_too_large(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str, room: str | None
) -> None:
    """RedisPublisher writes to Redis itself: it reads the largest message the gateways announce and refuses one
    over it (413, as the HTTP API and so HttpPublisher answer); nothing is sent, nobody is closed."""
    server = await wsgate_server(
        broker={"url": redis_url, "prefix": broker_prefix},
        websocket=TIGHT,
        history={"rooms": ["kept:*"], **SMALL},
        presence=SMALL,
        api={"key": "k"},
    )
    member = await server.connect()
    if room is not None:
        await member.subscribe(room)
    async with (
        RedisPublisher(redis_url, prefix=broker_prefix) as through_redis,
        HttpPublisher(server.url("/"), "k") as through_http,
    ):
        for publisher in (through_redis, through_http):
            big = "x" * 70_000
            with pytest.raises(PublishError) as refused:
                await (publisher.publish(room, big) if room else publisher.broadcast(big))
            assert (refused.value.status, str(refused.value)) == (413, "message is too large")
        await (through_redis.publish(room, "small") if room else through_redis.broadcast("small"))
    assert (await member.recv())["data"] == "small"
    assert len(server.hub.connections) == 1 and server.metrics.error_count("slow_consumer") == 0


@pytest.mark.parametrize("room", ["news", "kept:3", None])  # a room, a room with history, a broadcast
async def test_a_message_from_a_node_that_allows_more_is_delivered_to_nobody_and_closes_no_one(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str, room: str | None
) -> None:
    """The adversary's input: nodes with different `send_queue_bytes` (a rolling change of it); a message another
    node accepted, over this node's limit, closed every member here. It is delivered to nobody here, counted and
    logged; the next message goes through, in a room with history too (its offset leaves no gap)."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    small = await wsgate_server(broker=broker, websocket=TIGHT, history={"rooms": ["kept:*"], **SMALL}, presence=SMALL)
    large = await wsgate_server(broker=broker, history={"rooms": ["kept:*"]})
    member = await small.connect()
    if room is not None:
        await member.subscribe(room)
    for data in ("x" * 100_000, "after"):
        await (large.gateway.publish(room, data) if room else large.gateway.broadcast(data))
    assert (await member.recv())["data"] == "after"
    assert small.metrics.error_count("message_too_large") == 1
    assert len(small.hub.connections) == 1 and small.metrics.error_count("slow_consumer") == 0


async def test_the_largest_message_a_room_with_history_takes_fits_a_history_answer(wsgate_server: StartServer) -> None:
    """The adversary's input: a message just under what a client may be sent, kept, made every `history` answer
    an `internal error` (the answer's envelope around it did not fit). The largest message taken leaves room for
    that envelope, a long room name and the longest request id."""
    server = await wsgate_server(websocket=TIGHT, history={"rooms": ["kept:*"], **SMALL}, presence=SMALL)
    room = "kept:" + "r" * 251  # max_room_name_length (256)
    overhead = len(protocol.encode(protocol.MESSAGE, room=room, data=""))
    size = largest_message(TIGHT["send_queue_bytes"], 256) - overhead + 8  # (the timestamp's digits, at most)
    while True:  # the largest the gateway takes
        try:
            await server.gateway.publish(room, "x" * size)
            break
        except ClientError:
            size -= 1
    reader = await server.connect()
    answer = await reader.request({"type": "history", "room": room, "id": "i" * 64})
    assert (answer["type"], answer["id"], len(answer["data"]["messages"][-1]["data"])) == ("history", "i" * 64, size)


# --- the review's findings on the above, without sockets -----------------------------------------------------


class ResetAfterOneWrite(RecordingTransport):
    """A socket whose peer reset it: the first write fails, and asyncio closes the transport."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        super().write(data)
        self.closing = True


async def test_a_deflate_member_whose_socket_resets_mid_fan_out_raises_nothing_into_it() -> None:
    """aiohttp's synchronous deflate raises once the transport is closing (a raw write never did): from a fan-out
    it stopped the delivery to the members after it, and from Redis's receive loop it looked like a lost Redis."""
    parts = Parts(send_queue_size=2)
    reset, transport = parts.connect()
    reset._transport = transport = ResetAfterOneWrite()
    reset._raw, reset._deflate = False, WebSocketWriter(None, transport, compress=15)  # type: ignore[arg-type]
    other, other_transport = parts.connect()
    for conn in (reset, other):
        parts.hub.join(conn, "r")
    for n in range(4):  # past its outbox: written at once (`_room_made`), the first write resets
        assert parts.hub.deliver("r", b'{"type":"message","data":%d}' % n) == 2
    await turn()
    assert [m["data"] for m in other_transport.messages()] == [0, 1, 2, 3] and transport.writes == 1


async def test_a_message_too_large_is_not_held_for_a_recovering_member() -> None:
    """From a node that allows more: held for a member reading its history, it closed that member."""
    parts = Parts(send_queue_bytes=65_536)
    conn, _ = parts.connect()
    parts.hub.join(conn, "h1", hold=True)
    assert parts.hub.deliver("h1", b'{"data":"%s"}' % (b"x" * 70_000)) == 0
    assert conn.state is State.OPEN and not parts.hub.holding["h1"][conn]
    assert parts.metrics.error_count("message_too_large") == 1


async def test_only_a_recovery_keeps_room_for_its_replay() -> None:
    """What is held for a subscriber without `since` (no replay comes) may use the whole bound; a recovering one
    leaves `replay_bytes` free."""
    parts = Parts(send_queue_bytes=65_536, replay_bytes=60_000)
    plain, recovering = parts.connect()[0], parts.connect()[0]
    parts.hub.join(plain, "h1", hold=True)
    parts.hub.join(recovering, "h1", hold=True, replay=True)
    for n in range(10):  # 10 KB each
        parts.hub.deliver("h1", b'{"data":"%s","n":%d}' % (b"x" * 1000, n))
    assert plain.state is State.OPEN and len(parts.hub.holding["h1"][plain]) == 10
    assert recovering.state is State.CLOSING  # past 65,536 - 60,000
