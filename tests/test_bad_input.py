"""Malformed input gets the right error, keeps the connection usable and never hurts the server."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from wsgate.testing import TIMEOUT, Server, StartServer, wait_until
from wsgate.wire import frame_payloads

from .test_bounds import masked_frame


async def assert_still_usable(client) -> None:  # type: ignore[no-untyped-def]
    assert (await client.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize(
    ("frame", "error", "detail"),
    [
        ("not json", "invalid JSON format", "the frame is not valid JSON"),
        ('{"type": "ping"', "invalid JSON format", "the frame is not valid JSON"),
        ("", "invalid JSON format", "the frame is not valid JSON"),
        ("NaN", "invalid JSON format", "the frame is not valid JSON"),
        ("[]", "invalid JSON format", "a message must be a JSON object"),
        ('"x"', "invalid JSON format", "a message must be a JSON object"),
        ("5", "invalid JSON format", "a message must be a JSON object"),
        ("null", "invalid JSON format", "a message must be a JSON object"),
        ("{}", "unknown message type", "the message has no type"),
        ('{"type": ""}', "unknown message type", "the message has no type"),
        ('{"type": null}', "unknown message type", "the message has no type"),
        ('{"type": 5}', "invalid JSON format", "field 'type' must be a string"),
        ('{"type": ["subscribe"]}', "invalid JSON format", "field 'type' must be a string"),
        ('{"type": "subscribe", "room": 5}', "invalid JSON format", "field 'room' must be a string"),
        ('{"type": "subscribe", "room": {"a": 1}}', "invalid JSON format", "field 'room' must be a string"),
        ('{"type": "nope"}', "unknown message type", None),
        ('{"type": "Subscribe", "room": "a"}', "unknown message type", None),
    ],
)
async def test_malformed_message_gets_its_error(server: Server, frame: str, error: str, detail: str | None) -> None:
    client = await server.connect()
    reply = await client.request(frame)
    assert reply["type"] == "error"
    assert reply["error"] == error
    assert reply.get("detail") == detail
    assert isinstance(reply["timestamp"], int)
    await assert_still_usable(client)


async def test_room_name_longer_than_the_maximum(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_room_name_length": 8}})
    client = await server.connect()
    reply = await client.request({"type": "subscribe", "room": "x" * 9})
    assert reply["error"] == "room name is too long"
    assert (await client.subscribe("x" * 8))["room"] == "x" * 8


async def test_default_room_name_limit_is_256(server: Server) -> None:
    client = await server.connect()
    assert (await client.request({"type": "subscribe", "room": "r" * 257}))["error"] == "room name is too long"
    assert (await client.subscribe("r" * 256))["data"]["client_count"] == 1


async def test_binary_frame_gets_an_error_and_the_connection_stays(server: Server) -> None:
    client = await server.connect()
    await client.ws.send_bytes(b'{"type":"ping"}')
    reply = await client.recv()
    assert reply["type"] == "error"
    assert reply["error"] == "binary frames are not supported"
    await assert_still_usable(client)


async def test_frame_over_max_message_size_closes_with_1009(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"max_message_size": 1024})
    client = await server.connect()
    conn = server.hub.connections[client.id]
    await client.send({"type": "ping", "pad": "x" * 900})  # under the limit: fine
    assert (await client.recv())["type"] == "pong"
    await client.send({"type": "ping", "pad": "x" * 2000})
    closing = await client.closed()
    assert closing.data == 1009
    await wait_until(conn.closed)
    assert server.metrics.error_count("message_too_big") == 1


async def test_invalid_utf8_closes_with_1007(server: Server) -> None:
    client = await server.connect()
    # aiohttp's client only sends str as text; write a raw text frame with bad UTF-8
    await client.ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)
    closing = await client.closed()
    assert closing.data == 1007


async def test_flood_of_malformed_frames_leaves_the_server_responsive(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(websocket={"send_queue_size": 20_000})
    flooder, bystander = await server.connect(), await server.connect()
    await bystander.subscribe("calm")
    tasks_before = len(asyncio.all_tasks())

    async def flood() -> None:
        for n in range(10_000):
            await flooder.ws.send_str("{bad" if n % 2 else "[]")

    async def read_errors() -> int:
        count = 0
        while count < 10_000:
            assert (await flooder.recv())["type"] == "error"
            count += 1
        return count

    flooding = asyncio.gather(flood(), read_errors())
    for n in range(20):  # the bystander is served while the flood runs
        assert (await bystander.request({"type": "publish", "room": "calm", "data": n}))["data"] == n
    assert (await flooding)[1] == 10_000
    await assert_still_usable(flooder)
    assert server.metrics.error_count("invalid_json") == 10_000
    assert len(asyncio.all_tasks()) == tasks_before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_no_input_logs_a_traceback(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    client = await server.connect()
    frames = [
        "{",
        "[]",
        "{}",
        '{"type":1}',
        '{"type":"subscribe","room":[]}',
        '{"type":"publish","room":"x"}',
        '{"type":"publish"}',
        '{"type":"broadcast"}',
        json.dumps({"type": "x" * 10_000}),
        '{"type":"subscribe","room":"' + "\\ud800" + '"}',
        '{"type":"broadcast","data":' + "[" * 5000 + "]" * 5000 + "}",
    ]
    for frame in frames:
        await client.send(frame)
    replies = [await client.recv() for _ in frames]
    assert all(r["type"] in ("error", "subscribed", "message") for r in replies), replies
    await assert_still_usable(client)
    assert not [r for r in caplog.records if r.exc_info]


async def test_message_nested_deeper_than_max_json_depth_is_refused(server: Server) -> None:
    client = await server.connect()
    await client.subscribe("deep")
    at_limit = "[" * 31 + "]" * 31  # the message object is level 1: data may nest 31 more (max_json_depth = 32)
    reply = await client.request('{"type":"publish","room":"deep","data":' + at_limit + "}")
    assert reply["type"] == "message"
    reply = await client.request('{"type":"publish","room":"deep","data":{"a":' + at_limit + "}}")
    assert (reply["error"], reply["detail"]) == (
        "message is nested too deeply",
        "arrays and objects may nest at most 32 levels",
    )
    # brackets inside strings are not nesting
    assert (await client.request('{"type":"publish","room":"deep","data":"' + "[" * 100 + '"}'))["type"] == "message"
    assert server.metrics.error_count("too_deep") == 1


async def test_data_nested_too_deeply_to_encode_is_refused_not_crashed(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(websocket={"limits": {"max_json_depth": 2000}})
    client = await server.connect()
    await client.subscribe("deep")
    deep = "[" * 1000 + "]" * 1000  # orjson reads 1024 levels but writes 255; the stdlib gives up below 1000
    reply = await client.request('{"type":"publish","room":"deep","data":' + deep + "}")
    assert (reply["error"], reply["detail"]) == ("invalid JSON format", "the message is nested too deeply")
    ok = "[" * 200 + "]" * 200
    assert (await client.request('{"type":"publish","room":"deep","data":' + ok + "}"))["type"] == "message"
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    ("sent", "answered"),
    [(1000, 1000), (1001, 1000), (4000, 1000), (1006, 1002), (1005, 1002), (1015, 1002), (2999, 1002)],
)
async def test_a_clients_close_is_answered_per_rfc6455(server: Server, sent: int, answered: int) -> None:
    """Section 7.4: codes that may never be sent (1005, 1006, 1015) or are unassigned are a protocol error."""
    import struct

    client = await server.connect()
    await client.ws._writer.send_frame(struct.pack("!H", sent), aiohttp.WSMsgType.CLOSE)  # type: ignore[attr-defined]
    reply = await client.ws.receive(timeout=5)
    assert (reply.type, reply.data) == (aiohttp.WSMsgType.CLOSE, answered)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_a_client_that_leaves_during_its_handshake_leaves_no_traceback() -> None:
    """Clients that reset or close their socket right after the upgrade request: each is one access-log
    line (499 when it left before the answer), never aiohttp's "Unhandled exception"."""
    from .processes import environment, start_wsgate

    process = await start_wsgate(env=environment(WEBSOCKET_ENABLED="true"))
    try:
        for abort in (True, False) * 5:
            _, writer = await asyncio.open_connection("127.0.0.1", process.port)
            writer.write(UPGRADE)
            await writer.drain()
            if abort:
                writer.transport.abort()  # RST
            else:
                writer.close()  # FIN
        for _ in range(10):
            await process.wait_for_line(r'"GET /ws HTTP/1\.1" \d{3} ')
        process.proc.terminate()
        await process.finish(20)
    finally:
        await process.kill()
    log = "".join(process.lines)
    assert "Traceback" not in log and "Unhandled exception" not in log, log


async def test_malformed_http_requests_are_logged_as_one_throttled_line(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the adversary: each request aiohttp's parser refuses (a URL or a header over its limits) was an
    ERROR with a traceback; anyone may send them as often as they like."""
    server = await wsgate_server()
    port = server.test_server.port
    requests = [
        b"GET /ws?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 9_000 + b"\r\n\r\n",
    ] * 10
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            assert (await reader.readline()).startswith(b"HTTP/1.0 400")
            writer.close()
            await writer.wait_closed()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert records[0].getMessage().startswith("refused 1 malformed HTTP requests since the last report, the last")


def _rsv1(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        (masked_frame(0x1, b"\xff\xfe"), 1007, b"Invalid UTF-8"),  # text that is not UTF-8
        (masked_frame(0x3, b"x"), 1002, b"Unexpected opcode=3"),  # a reserved opcode
        (_rsv1(masked_frame(0x1, b"{}")), 1002, b"Received frame with non-zero reserved bits"),  # RSV1, no extension
        (masked_frame(0x1, b'{"type":"ping","pad":"' + b"x" * 3000 + b'"}'), 1009, b"message too big"),
        # the same kind, found by the second adversary: the client's own close, and a half-close, right after
        (masked_frame(0x8, (1000).to_bytes(2, "big")), 1000, b""),
        (b"", None, None),  # a half-close: the client shuts its sending side down, no close frame at all
    ],
    ids=["1007", "1002 opcode", "1002 rsv1", "1009", "client close", "half-close"],
)
@pytest.mark.parametrize("first", ["ping", "subscribe"])  # handled in the read callback, or in a reader task
async def test_a_bad_frame_after_good_ones_in_one_read_closes_after_their_answers(
    wsgate_server: StartServer, bad: bytes, code: int | None, reason: bytes | None, first: str
) -> None:
    """Messages handled before a bad frame in the same read took effect; their answers are sent before the close
    (they were dropped with it: a client could not know its publish went out). The close says why: "message
    too big", or aiohttp parser's words (it had no reason)."""
    server = await wsgate_server(websocket={"max_message_size": 2048})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.test_server.port)  # type: ignore[arg-type]
    good = [{"type": first, "room": "r", "id": "a"}, {"type": "ping", "id": "b"}]
    head = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sent = b"".join(masked_frame(0x1, json.dumps(message).encode()) for message in good)
    sent += masked_frame(0x9, b"last") + bad  # a ping read before the close is answered (section 5.5.2)
    received = b""
    if bad:
        writer.write(head + sent)
    else:  # once connected (a FIN before the 101 is a client that left during its handshake)
        writer.write(head)
        received = await asyncio.wait_for(reader.readuntil(b'"connected"'), TIMEOUT)
        writer.write(sent)
        writer.write_eof()
    received += await asyncio.wait_for(reader.read(), TIMEOUT)  # all of it: the server closes the socket
    frames = list(frame_payloads(received.partition(b"\r\n\r\n")[2]))
    answers = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert [(answer["type"], answer.get("id")) for answer in answers] == [
        ("connected", None),
        ("subscribed" if first == "subscribe" else "pong", "a"),
        ("pong", "b"),
    ]
    assert [payload for opcode, payload in frames if opcode == 0xA] == [b"last"]
    closings = [payload for opcode, payload in frames if opcode == 0x8]
    if code is None:
        assert closings == []
    else:
        assert int.from_bytes(closings[0][:2], "big") == code
        assert closings[0][2:].startswith(reason), closings  # type: ignore[arg-type]
        assert (not reason) == (not closings[0][2:])
    writer.close()


async def test_with_deflate_too_a_bad_frame_closes_after_the_answers_before_it(wsgate_server: StartServer) -> None:
    """As above, on a connection that negotiated permessage-deflate: its writer sends the answers, then the close."""
    server = await wsgate_server(websocket={"compression": True})
    ws = await server.session.ws_connect(server.url("/ws"), compress=15)
    assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "connected"
    await asyncio.gather(  # (one write each, back to back: read together)
        ws.send_str('{"type":"ping","id":"a"}'),
        ws.send_str('{"type":"ping","id":"b"}'),
        ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT),
    )
    answers = [json.loads((await ws.receive(timeout=TIMEOUT)).data)["id"] for _ in range(2)]
    closing = await ws.receive(timeout=TIMEOUT)
    assert (answers, closing.type, closing.data) == (["a", "b"], aiohttp.WSMsgType.CLOSE, 1007)
