"""Protocol versions (docs/protocol.md, "Protocol versions"): `/ws?protocol=2` adds error codes, reconnect advice
in close reasons and discovery in `connected`; a client that asks for nothing gets the guide's bytes exactly."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

import aiohttp
import pytest

import wsgate
import wsgate.testing
from wsgate import Client, ClientError, Handler, Message, errors, protocol
from wsgate.errors import Reconnect
from wsgate.registry import HandlerRegistry
from wsgate.testing import TIMEOUT, Peer, Server, StartServer

from .test_docs_examples import page_block
from .test_request_ids import raw_reply


class Coded:
    """A third-party plugin with errors of its own and a close of the server's."""

    QUOTA = errors.plugin_error("quota exceeded", code=1001, temporary=True)

    @wsgate.hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {
            "spend": self.spend,
            "plain": self.plain,
            "kick": self.kick,
            "bad_code": self.bad_code,
            "kick_oddly": self.kick_oddly,
        }

    async def kick_oddly(self, client: Client, message: Message) -> None:
        client.drop(4000, "bad \ud800 input")  # a lone surrogate: UTF-8 cannot carry it

    async def spend(self, client: Client, message: Message) -> None:
        raise ClientError(self.QUOTA, "100 of 100 used today")

    async def plain(self, client: Client, message: Message) -> None:
        raise ClientError("nothing to do")

    async def kick(self, client: Client, message: Message) -> None:
        client.drop(errors.OPERATOR_DISCONNECT)

    async def bad_code(self, client: Client, message: Message) -> None:
        raise ClientError("mine", code=42)  # outside PLUGIN_CODES: a bug of the plugin's


async def connect(server: Server, version: int | None = None) -> tuple[Peer, dict[str, object]]:
    path = "/ws" if version is None else f"/ws?protocol={version}"
    peer = Peer(await server.session.ws_connect(server.url(path)))
    hello = await peer.recv()
    assert hello["type"] == "connected"
    peer.id = hello["data"]["client_id"]
    return peer, hello


# --- pure values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", errors.CLOSE_REASONS, ids=lambda r: r.text)
def test_every_close_reason_has_its_code_in_the_registry_and_its_advice_in_the_reason(
    reason: errors.CloseReason,
) -> None:
    assert reason.code in errors.RECONNECT_BY_CODE
    assert errors.close_text(reason, advise=False) == reason.text
    advised = errors.close_text(reason, advise=True)
    assert advised == f"{reason.text} [reconnect={reason.reconnect.value}]"
    assert len(advised.encode()) <= errors.MAX_REASON_BYTES


def test_a_reason_with_a_lone_surrogate_is_sent_with_a_question_mark() -> None:
    """Found in review: under protocol 2 a plugin's reason with a lone surrogate raised in `drop` after the
    connection was marked closing, leaving it open for ever."""
    advised = errors.close_text(errors.plugin_close(4000, "bad \ud800 input"), advise=True)
    assert advised == "bad ? input [reconnect=backoff]"


def test_a_long_reason_is_cut_so_that_its_advice_always_fits() -> None:
    long = errors.plugin_close(4000, "ü" * 100)  # 200 bytes of UTF-8
    advised = errors.close_text(long, advise=True)
    assert advised.endswith(" [reconnect=backoff]")
    assert len(advised.encode()) <= errors.MAX_REASON_BYTES
    advised.encode().decode()  # cut on a character boundary


def test_a_plugins_close_takes_the_advice_of_its_code() -> None:
    assert errors.plugin_close(1012, "moving").reconnect is Reconnect.NOW
    assert errors.plugin_close(1009, "big").reconnect is Reconnect.BACKOFF  # a new connection works
    assert errors.plugin_close(4321, "mine").reconnect is Reconnect.BACKOFF  # a code not in the registry


def test_the_close_code_registry_lists_each_code_once() -> None:
    codes = [close.code for close in errors.CLOSE_CODES]
    assert len(codes) == len(set(codes))
    assert {1001, 1008, 1009, 1011, 1012, 1013, 4001} <= set(codes)


def test_plugin_errors_take_codes_from_their_range_only() -> None:
    assert ClientError("mine").kind.code == errors.PLUGIN_ERROR_CODE == 1000
    own = ClientError("mine", code=1999, temporary=True)
    assert (own.kind.code, own.kind.temporary, own.kind.label) == (1999, True, "rejected")
    for code in (999, 2000, 101, -1, True, 1001.0):
        with pytest.raises(ValueError, match="from 1000 to 1999"):
            ClientError("mine", code=code)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="own code"):
        ClientError(errors.NOT_ALLOWED, code=1001)
    with pytest.raises(ValueError, match="own code"):
        ClientError(protocol.NOT_ALLOWED, code=1001)  # a documented text keeps its code too
    assert ClientError(protocol.NOT_ALLOWED).kind is errors.NOT_ALLOWED


@pytest.mark.parametrize(
    ("kind", "closest"),
    [
        ("Subscribe", "subscribe"),
        ("SUBSCRIBE", "subscribe"),
        ("subscibe", "subscribe"),
        ("pubish", "publish"),
        ("unsubscribed", "unsubscribe"),
        ("pin", "ping"),
        ("teleport", None),
        ("x" * 1000, None),
    ],
)
def test_the_closest_type_is_named_for_a_typo(kind: str, closest: str | None) -> None:
    registry = HandlerRegistry()
    registry.register("core", dict.fromkeys(["subscribe", "unsubscribe", "publish", "broadcast", "ping"], print))
    assert registry.closest(kind) == closest
    detail = registry.unknown(kind)
    assert detail.endswith("this server handles broadcast, ping, publish, subscribe, unsubscribe")
    assert detail.startswith(f"did you mean {closest!r}?") if closest else detail.startswith("this server")


@pytest.mark.parametrize("asked", [None, "1", "2"])
def test_negotiate_takes_the_supported_versions(asked: str | None) -> None:
    assert protocol.negotiate(asked) == (1 if asked is None else int(asked))


def test_negotiate_refuses_a_repeated_parameter() -> None:
    with pytest.raises(ClientError) as refused:
        protocol.negotiate("2", "3")
    assert (refused.value.text, refused.value.detail) == (
        "unsupported protocol version",
        "give the protocol parameter once",
    )


@pytest.mark.parametrize("asked", ["3", "0", "", "2.0", " 2", "02", "two", "1,2"])
def test_negotiate_refuses_anything_else(asked: str) -> None:
    with pytest.raises(ClientError) as refused:
        protocol.negotiate(asked)
    assert refused.value.kind is errors.UNSUPPORTED_PROTOCOL
    assert refused.value.detail == "ask for protocol 1 or 2 (?protocol=2)"


# --- over the wire --------------------------------------------------------------------------------------


async def test_a_guide_client_gets_the_guides_bytes(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Coded())
    for version in (None, 1):  # asking for 1 is asking for the guide's protocol
        peer, hello = await connect(server, version)
        assert hello["data"] == {"client_id": peer.id, "message": "Connected to WebSocket server"}
        assert await raw_reply(peer, '{"type":"Subscribe","room":"a"}') == (
            '{"type":"error","error":"unknown message type","timestamp":0}'
        )
        assert await raw_reply(peer, '{"type":"publish","room":"a"}') == (
            '{"type":"error","error":"not subscribed to this room","timestamp":0}'
        )
        assert await raw_reply(peer, '{"type":"spend"}') == (
            '{"type":"error","error":"quota exceeded","detail":"100 of 100 used today","timestamp":0}'
        )
        await peer.send({"type": "kick"})
        closed = await peer.closed()
        assert (closed.data, closed.extra) == (1008, "disconnected by an operator")


async def test_protocol_2_says_what_it_speaks_in_connected(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Coded())
    peer, hello = await connect(server, 2)
    data = hello["data"]
    assert (data["protocol"], data["extensions"]) == (2, list(protocol.EXTENSIONS))
    assert data["types"] == sorted(server.registry.owners())
    assert {"subscribe", "publish", "spend"} <= set(data["types"])
    assert list(data)[:2] == ["client_id", "message"]  # the guide's keys first, as they were


async def test_protocol_2_errors_carry_code_and_temporary(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Coded(), websocket={"limits": {"max_rooms_per_client": 1}})
    peer, _ = await connect(server, 2)
    assert await raw_reply(peer, '{"type":"publish","room":"a","id":3}') == (
        '{"type":"error","error":"not subscribed to this room","code":103,"temporary":false,"timestamp":0,"id":3}'
    )
    assert await raw_reply(peer, "[1]") == (
        '{"type":"error","error":"invalid JSON format","detail":"a message must be a JSON object",'
        '"code":100,"temporary":false,"timestamp":0}'
    )
    await peer.subscribe("a")
    assert (await peer.request({"type": "subscribe", "room": "b"}))["code"] == errors.TOO_MANY_ROOMS.code
    assert await raw_reply(peer, '{"type":"spend"}') == (
        '{"type":"error","error":"quota exceeded","detail":"100 of 100 used today","code":1001,"temporary":true,'
        '"timestamp":0}'
    )
    assert await raw_reply(peer, '{"type":"plain"}') == (
        '{"type":"error","error":"nothing to do","code":1000,"temporary":false,"timestamp":0}'
    )
    answer = await peer.request({"type": "bad_code"})  # the plugin's bug: logged, answered as wsgate's own error
    assert (answer["error"], answer["code"], answer["temporary"]) == ("internal error", 500, True)
    await peer.ws.send_bytes(b"{}")
    assert (await peer.recv())["code"] == errors.BINARY_NOT_SUPPORTED.code


async def test_protocol_2_unknown_types_name_the_known_ones_and_the_closest(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Coded())
    peer, _ = await connect(server, 2)
    answer = await peer.request({"type": "Subscribe", "room": "a"})
    known = ", ".join(sorted(server.registry.owners()))
    assert (answer["error"], answer["code"]) == ("unknown message type", 101)
    assert answer["detail"] == f"did you mean 'subscribe'? this server handles {known}"
    answer = await peer.request({"type": "teleport"})
    assert answer["detail"] == f"this server handles {known}"


@pytest.mark.parametrize(
    ("handler", "code", "reason"),
    [
        ("kick", 1008, "disconnected by an operator [reconnect=no]"),
        ("kick_oddly", 4000, "bad ? input [reconnect=backoff]"),
    ],
)
async def test_protocol_2_close_reasons_end_with_their_advice(
    wsgate_server: StartServer, handler: str, code: int, reason: str
) -> None:
    server = await wsgate_server(Coded())
    peer, _ = await connect(server, 2)
    await peer.send({"type": handler})
    closed = await peer.closed()
    assert (closed.data, closed.extra) == (code, reason)
    await wsgate.testing.eventually(lambda: not server.hub.connections)  # gone, not left closing


@pytest.mark.parametrize(("mode", "code", "advice"), [("drain", 1001, "backoff"), ("restart", 1012, "now")])
async def test_protocol_2_shutdown_closes_advise_how_to_come_back(
    wsgate_server: StartServer, mode: str, code: int, advice: str
) -> None:
    server = await wsgate_server(shutdown={"mode": mode})
    guide, _ = await connect(server)
    peer, _ = await connect(server, 2)
    await server.drain(TIMEOUT)
    closed = await peer.closed()
    assert closed.data == code and closed.extra.endswith(f" [reconnect={advice}]"), closed
    closed = await guide.closed()
    assert closed.data == code and "[reconnect=" not in closed.extra, closed


async def test_a_full_server_answers_protocol_2_with_a_code_and_advice(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_connections": 1}})
    first, _ = await connect(server)
    ws = await server.session.ws_connect(server.url("/ws?protocol=2"))
    error = json.loads((await ws.receive(timeout=TIMEOUT)).data)
    assert (error["error"], error["code"], error["temporary"]) == ("server is at maximum capacity", 105, True)
    closed = await ws.receive(timeout=TIMEOUT)
    assert (closed.data, closed.extra) == (1013, "server is at maximum capacity [reconnect=backoff]")
    assert await first.request({"type": "ping"}) != {}


@pytest.mark.parametrize("asked", ["3", "x", ""])
async def test_an_unsupported_version_is_refused_before_the_upgrade(wsgate_server: StartServer, asked: str) -> None:
    server = await wsgate_server()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.session.ws_connect(server.url(f"/ws?protocol={asked}"))
    assert refused.value.status == 400
    async with server.session.get(
        server.url(f"/ws?protocol={asked}"),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": "unsupported protocol version",
            "detail": "ask for protocol 1 or 2 (?protocol=2)",
        }
    assert server.metrics.totals()["errors"].get("unsupported_protocol") == 2


async def test_a_plain_get_on_ws_is_answered_with_json(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    async with server.session.get(server.url("/ws")) as resp:
        assert resp.status == 426
        assert resp.headers["Upgrade"] == "websocket"
        assert await resp.json() == {
            "error": "WebSocket upgrade required",
            "detail": "connect with a WebSocket client (Upgrade: websocket)",
        }


UPGRADE = {"Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({"Sec-WebSocket-Version": "13"}, 400, "No CONNECTION upgrade hdr"),  # no Connection: Upgrade
        # RFC 6455 section 4.2.2: another version is a 426 naming the one the server speaks (aiohttp took 7 and 8)
        ({**UPGRADE, "Sec-WebSocket-Version": "99"}, 426, "Sec-WebSocket-Version '99' is not supported: 13 is"),
        ({**UPGRADE, "Sec-WebSocket-Version": "8"}, 426, "Sec-WebSocket-Version '8' is not supported: 13 is"),
        ({**UPGRADE, "Sec-WebSocket-Version": "13, 8"}, 400, "Sec-WebSocket-Version is not a number"),
        ({**UPGRADE, "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"}, 400, "Handshake error"),
    ],
)
async def test_a_malformed_handshake_is_answered_with_json(
    wsgate_server: StartServer, headers: dict[str, str], status: int, detail: str
) -> None:
    server = await wsgate_server()
    async with server.session.get(server.url("/ws"), headers={"Upgrade": "websocket", **headers}) as resp:
        body = await resp.json()
        assert resp.status == status
        assert body["error"] == "WebSocket upgrade required"
        assert body["detail"].startswith(f"the opening handshake is malformed: {detail}"), body
        if status == 426:  # (RFC 9110 section 15.5.22: a 426 names the protocol to upgrade to)
            assert (resp.headers["Sec-WebSocket-Version"], resp.headers["Upgrade"]) == ("13", "websocket")
    assert not server.hub.connections


@pytest.mark.parametrize(
    ("head", "detail"),
    [
        # a body: aiohttp read it from the socket after the upgrade, and logged a traceback for each such request
        (b"Content-Length: 5\r\n", "an opening handshake has no body"),
        (b"Transfer-Encoding: chunked\r\n", "an opening handshake has no body"),
        (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Key is repeated"),
        (b"Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Version is repeated"),
    ],
)
async def test_a_handshake_aiohttp_would_take_but_rfc_6455_refuses_is_a_400(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture, head: bytes, detail: str
) -> None:
    """The second adversary's inputs, on aiohttp's path (the front door declines anything but a plain
    handshake): each was upgraded. Nothing is logged at ERROR, and the server serves on."""
    server = await wsgate_server()
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + head + b"\r\n"
    )
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert status.startswith(b"HTTP/1.1 400"), status
    assert detail.encode() in await asyncio.wait_for(reader.read(4096), TIMEOUT)
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await (await server.connect()).request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("version", [b"1.0", b"2.0"])
async def test_a_handshake_not_over_http_1_1_is_a_400(wsgate_server: StartServer, version: bytes) -> None:
    """RFC 6455 section 4.2.1: an HTTP/1.1 request; aiohttp answered HTTP/1.0 (and "HTTP/2.0") with a 101."""
    server = await wsgate_server()
    port = server.test_server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/" + version + b"\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(4096), TIMEOUT)
    assert b" 400 " in answer.partition(b"\r\n")[0] and b"needs HTTP/1.1" in answer, answer
    writer.close()


CONNECTED_2 = "\n".join(
    [
        "{",
        '  "type": "connected",',
        '  "data": {',
        '    "client_id": "uuid-string",',
        '    "message": "Connected to WebSocket server",',
        '    "protocol"',
    ]
)


async def test_the_protocol_pages_examples_are_what_the_server_sends(wsgate_server: StartServer) -> None:
    """docs/protocol.md's protocol 2 examples: `connected`, a coded error, the unknown type's detail, the refusal."""
    server = await wsgate_server()
    peer, hello = await connect(server, 2)
    page = json.loads(
        page_block(
            "protocol.md",
            CONNECTED_2,
            "json",
        )
    )
    assert list(page["data"]) == list(hello["data"])
    assert page["data"]["extensions"] == hello["data"]["extensions"]
    assert set(page["data"]["types"]) <= set(hello["data"]["types"])  # (plus the installed plugins')
    coded = json.loads(page_block("protocol.md", '{"type": "error", "error": "not subscribed', "json"))
    answer = await peer.request({"type": "publish", "room": "a"})
    assert {**answer, "timestamp": 0} == {**coded, "timestamp": 0}
    unknown = json.loads(page_block("protocol.md", '{"type": "error", "error": "unknown message type"', "json"))
    answer = await peer.request({"type": "Subscribe"})
    assert list(answer) == list(unknown)
    assert answer["detail"].startswith("did you mean 'subscribe'? this server handles broadcast, ")
    assert set(unknown["detail"].split("handles ")[1].split(", ")) <= set(hello["data"]["types"])
    refused = json.loads(page_block("protocol.md", '{"error": "unsupported protocol version"', "json"))
    with pytest.raises(ClientError) as raised:
        protocol.negotiate("3")
    assert refused == {"error": raised.value.text, "detail": raised.value.detail}
    reasons = page_block("protocol.md", "disconnected by an operator", "text").splitlines()
    assert reasons == [errors.close_text(r, advise=True) for r in (errors.OPERATOR_DISCONNECT, errors.SERVICE_RESTART)]
    plain = json.loads(page_block("protocol.md", '{"error": "WebSocket upgrade required"', "json"))
    async with server.session.get(server.url("/ws")) as resp:
        assert await resp.json() == plain


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"])
async def test_another_method_on_ws_is_answered_405_in_json(wsgate_server: StartServer, method: str) -> None:
    server = await wsgate_server()
    handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    async with server.session.request(method, server.url("/ws"), headers=handshake) as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "GET")
        if method != "HEAD":
            assert await resp.json() == {
                "error": "WebSocket upgrade required",
                "detail": f"the opening handshake is a GET, not a {method}",
            }
    assert not server.hub.connections


async def test_a_repeated_protocol_parameter_is_refused(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    for query in ("protocol=2&protocol=3", "protocol=3&protocol=2", "protocol=2&protocol=2"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await server.session.ws_connect(server.url(f"/ws?{query}"))
        assert refused.value.status == 400
