"""Everything wsgate writes on the wire is valid RFC 6455, whoever asked for it (issue 21 item 6).

aiohttp's client is the checker: it fails the connection (1002, 1007) on a close frame over 125 bytes, a
close code no endpoint may send, or a text frame or close reason that is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate import Client, Message, hookimpl
from wsgate.errors import plugin_close
from wsgate.testing import TIMEOUT, StartServer
from wsgate.types import Handler
from wsgate.wire import MAX_CLOSE_REASON, SENDABLE_CODES, close_fields, control_frame, data_frame

pytestmark = pytest.mark.every_loop  # asyncio's loop and uvloop's (tests/conftest.py)


class Closer:
    """`drop` closes the sender with the message's `code` and `reason` (a ValueError is answered `refused`);
    `enqueue` sends the bytes of `hex` as they are (ditto)."""

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {"drop": self.drop, "enqueue": self.enqueue}

    async def drop(self, client: Client, message: Message) -> None:
        try:
            if message.data.get("last") is not None:  # a last word before the close
                client.send({"type": "last", "data": message.data["last"]})
            client.drop(message.data["code"], message.data["reason"])
        except ValueError as exc:
            client.send({"type": "refused", "data": str(exc)})

    async def enqueue(self, client: Client, message: Message) -> None:
        try:
            client.enqueue(bytes.fromhex(message.data))
        except ValueError as exc:
            client.send({"type": "refused", "data": str(exc)})


async def close_of(client: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    msg = await client.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg  # not ERROR: aiohttp found the frame valid
    return msg


@pytest.mark.parametrize(
    ("code", "reason", "sent"),
    [
        (4000, "x" * 200, "x" * 123),  # the input: 202 bytes of payload, 125 allowed
        (3000, "é" * 100, "é" * 61),  # 200 bytes of two-byte characters: cut on a character boundary (122 bytes)
        (1000, "a" + "€" * 50, "a" + "€" * 40),  # three-byte characters: 121 bytes
        (4999, "🙂" * 40, "🙂" * 30),  # four-byte characters: 120 bytes
        (1008, "short", "short"),
    ],
    ids=["ascii-200-bytes", "2-byte-chars", "3-byte-chars", "4-byte-chars", "short"],
)
async def test_a_plugins_close_reason_is_cut_to_fit_a_control_frame(
    wsgate_server: StartServer,
    code: int,
    reason: str,
    sent: str,
) -> None:
    server = await wsgate_server(Closer())
    client = await server.connect()
    await client.send({"type": "drop", "data": {"code": code, "reason": reason}})
    msg = await close_of(client.ws)
    assert (msg.data, msg.extra) == (code, sent)


@pytest.mark.parametrize("code", [1006, 1005, 1004, 1015, 999, 0, 1016, 2000, 2999, 5000, 65535])
async def test_a_close_code_no_endpoint_may_send_is_refused_to_the_plugin(
    wsgate_server: StartServer,
    code: int,
) -> None:
    server = await wsgate_server(Closer())
    client = await server.connect()
    reply = await client.request({"type": "drop", "data": {"code": code, "reason": "abnormal"}})
    assert reply["type"] == "refused" and f"close code {code}" in reply["data"], reply
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # still open: nothing was sent


@pytest.mark.parametrize("payload", [b'{"type":"x","data":"\xff"}', b'{"type":"\xed\xa0\x80"}', b"\xc3"])
async def test_a_text_frame_is_never_sent_with_invalid_utf8(wsgate_server: StartServer, payload: bytes) -> None:
    server = await wsgate_server(Closer())
    client = await server.connect()
    reply = await client.request({"type": "enqueue", "data": payload.hex()})
    assert reply["type"] == "refused" and "UTF-8" in reply["data"], reply
    assert (await client.request({"type": "enqueue", "data": '{"type":"café"}'.encode().hex()}))["type"] == "café"


async def test_the_drain_goes_through_the_same_rule(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect()
    conn = server.hub.connections[client.id]
    with pytest.raises(ValueError, match="close code 1006"):
        conn.close_gracefully(plugin_close(1006, "abnormal"), 1.0)
    conn.close_gracefully(plugin_close(1001, "ü" * 100), 1.0)
    msg = await close_of(client.ws)
    assert (msg.data, msg.extra) == (1001, "ü" * 61)


@pytest.mark.slow
@given(st.text())
def test_close_fields_cut_any_reason_to_valid_utf8_within_a_control_frame(reason: str) -> None:
    code, encoded = close_fields(1000, reason)
    assert code == 1000 and len(encoded) <= MAX_CLOSE_REASON
    text = encoded.decode()  # valid UTF-8
    whole = reason.encode("utf-8", "replace")
    assert whole.startswith(encoded) and text == whole[: len(encoded)].decode()
    assert encoded == whole or len(encoded) > MAX_CLOSE_REASON - 4  # cut only at the last whole character


def test_sendable_close_codes_are_rfc_6455s() -> None:
    """Sections 7.4.1 and 7.4.2: 1000-1003, 1007-1011 and the registered 1012-1014; 3000-4999 for libraries,
    frameworks and applications. Never 1004-1006 or 1015, nothing unassigned, no bool."""
    assert SENDABLE_CODES == {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}
    with pytest.raises(ValueError):
        close_fields(True, "")  # (True == 1 in Python, but not a close code)


def test_frames_wsgate_builds_are_valid_or_refused() -> None:
    assert data_frame("é".encode()) == b"\x81\x02" + "é".encode()
    assert data_frame(b"\xff", 0x2) == b"\x82\x01\xff"  # binary: any bytes
    with pytest.raises(ValueError, match="UTF-8"):
        data_frame(b"\xff")
    with pytest.raises(ValueError):
        data_frame(b"", 0x8)  # a close frame is not a data frame
    assert control_frame(0xA, b"p" * 125)[:2] == b"\x8a\x7d"
    with pytest.raises(ValueError, match="125"):
        control_frame(0xA, b"p" * 126)


async def test_what_a_plugin_sends_before_it_drops_its_client_arrives_before_the_close(
    wsgate_server: StartServer,
) -> None:
    """The reviewer's input, of the kind the adversary found (answers dropped by a close): `client.send` then
    `client.drop` lost the message (drop emptied the outbox). It goes first now, as does the answer to a
    message read before the one that closes (a rate limit's close, a plugin's)."""
    server = await wsgate_server(Closer())
    client = await server.connect()
    await client.send({"type": "ping", "id": "before"})
    await client.send({"type": "drop", "data": {"code": 4000, "reason": "bye", "last": "word"}})
    got = [await client.recv() for _ in range(2)]
    assert [(m["type"], m.get("id"), m.get("data")) for m in got][1] == ("last", None, "word")
    assert got[0]["type"] == "pong"
    closing = await client.closed()
    assert (closing.data, closing.extra) == (4000, "bye")
