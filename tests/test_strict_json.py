"""Strict JSON in and out (RFC 8259): text UTF-8 cannot encode and numbers a double cannot carry are refused
at the decoder, everywhere a client or a backend can send them, and nothing wsgate sends is anything but JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import pytest

from wsgate import Client, Message, hookimpl
from wsgate.testing import Server, StartServer

SURROGATE = "the text holds a lone surrogate (\\ud800-\\udfff), which UTF-8 cannot encode"
NON_FINITE = "numbers must be finite: JSON has no Infinity or NaN"
TOO_LARGE = "the number {} is too large: it overflows to infinity"
TOO_SMALL = "the number {} is too small: it underflows to zero"
BIG = "123456789012345678901234567890"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"type":"subscribe","room":"\\ud800"}', SURROGATE),  # the field report's input
        ('{"type":"subscribe","room":"a\\udfffb"}', SURROGATE),
        ('{"type":"subscribe","room":"r","since":{"offset":1,"epoch":"\\udc00"}}', SURROGATE),
        ('{"type":"ping","data":{"\\ud800":1}}', SURROGATE),  # a key
        ('{"type":"ping\\ud800"}', SURROGATE),
        ('{"type":"publish","room":"r","data":["\\ude00", ' + BIG + "]}", SURROGATE),
        ('{"type":"publish","room":"r","data":{"x":1e400,"id":' + BIG + "}}", TOO_LARGE.format("1e400")),  # reported
        ('{"type":"publish","room":"r","data":{"x":1e400}}', TOO_LARGE.format("1e400")),
        ('{"type":"publish","room":"r","data":-2.5E+999}', TOO_LARGE.format("-2.5E+999")),
        ('{"type":"publish","room":"r","data":1e-400}', TOO_SMALL.format("1e-400")),
        ('{"type":"publish","room":"r","data":0.' + "0" * 50 + "1e-300}", TOO_SMALL.format("0.00000000...00001e-300")),
        ('{"type":"publish","room":"r","data":1' + "0" * 60 + ".5e300}", TOO_LARGE.format("1000000000...0000.5e300")),
    ],
)
async def test_the_decoder_refuses_what_cannot_be_carried(server: Server, text: str, detail: str) -> None:
    client = await server.connect()
    await client.subscribe("r")
    reply = await client.request(text)
    assert (reply["type"], reply["error"], reply["detail"]) == ("error", "invalid JSON format", detail)
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # nothing else was sent: refused whole
    assert (await server.counts())[1]["rooms"] == 1


async def test_what_can_be_carried_passes_exactly(server: Server) -> None:
    client = await server.connect()
    await client.subscribe("r")
    text = (
        '{"type":"publish","room":"r","data":{"pair":"\\ud83d\\ude00","big":' + BIG + ',"zero":0.0e-400,"e":1.5e300}}'
    )
    await client.send(text)
    raw = (await client.ws.receive()).data
    assert '"big":' + BIG in raw  # digit for digit
    assert json.loads(raw)["data"] == {"pair": "\U0001f600", "big": int(BIG), "zero": 0.0, "e": 1.5e300}


async def test_a_lone_surrogate_never_reaches_the_redis_broker(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    """The field report: the subscription task died, the node went deaf and /health still said ok."""
    broker = {"url": redis_url, "prefix": broker_prefix}
    a, b = await wsgate_server(broker=broker), await wsgate_server(broker=broker)
    client = await a.connect()
    reply = await client.request('{"type":"subscribe","room":"\\ud800"}')
    assert reply["detail"] == SURROGATE
    await client.subscribe("after")
    other = await b.connect()
    await other.subscribe("after")
    await other.send({"type": "publish", "room": "after", "data": 1})
    assert (await client.recv())["data"] == 1  # the node still hears other nodes
    assert (await a.health())[1]["broker"] == "ok"


async def test_the_http_api_refuses_the_same(wsgate_server: StartServer) -> None:
    server = await wsgate_server(api={"key": "k"})
    for body, detail in (
        ('{"room":"\\ud800","data":1}', SURROGATE),
        ('{"room":"r","data":1e400}', TOO_LARGE.format("1e400")),
    ):
        async with server.session.post(
            server.url("/api/publish"), data=body, headers={"Authorization": "Bearer k"}
        ) as resp:
            assert (resp.status, await resp.json()) == (400, {"error": "invalid JSON format", "detail": detail})


class Sender:
    """A plugin that sends what JSON cannot carry."""

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        return {
            "bad_send": self.bad_send,
            "bad_publish": self.bad_publish,
            "plugin_send": self.send,
            "plugin_publish": self.publish,
        }

    async def bad_send(self, client: Client, message: Message) -> None:
        await client.send({"n": int(BIG), "x": float("inf")})

    async def bad_publish(self, client: Client, message: Message) -> None:
        await client.gateway.publish("r", {"n": int(BIG), "s": "\udc00"})

    async def send(self, client: Client, message: Message) -> None:  # whatever the message's `data` names
        await client.send({"x": VALUES[message.data]})

    async def publish(self, client: Client, message: Message) -> None:
        await client.gateway.publish("r", VALUES[message.data])


@dataclasses.dataclass
class Point:
    x: float


class Level(enum.Enum):
    TOP = float("inf")


VALUES: dict[str, Any] = {  # without a big integer, orjson encodes these (and writes null for the number)
    "inf": float("inf"),
    "nan": float("nan"),
    "nested": {"a": [None, (1.5, -float("inf"))]},
    "dataclass": [None, Point(float("nan"))],
    "enum": {"level": Level.TOP, "n": None},
    "null": None,
    "finite": [None, 1e308, -0.0],
}


async def test_output_is_strict_json_whatever_a_plugin_sends(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Sender())
    client = await server.connect()
    await client.subscribe("r")
    reply = await client.request({"type": "bad_send"})
    assert (reply["error"], reply["detail"]) == ("invalid JSON format", NON_FINITE)
    reply = await client.request({"type": "bad_publish"})
    assert (reply["error"], reply["detail"]) == ("invalid JSON format", SURROGATE)
    for kind in ("plugin_send", "plugin_publish"):
        for name in ("inf", "nan", "nested", "dataclass", "enum"):
            reply = await client.request({"type": kind, "data": name})
            assert (reply["error"], reply["detail"]) == ("invalid JSON format", NON_FINITE), (kind, name)
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # nobody got anything else
    assert (await client.request({"type": "plugin_send", "data": "null"}))["x"] is None  # null itself still goes out
    assert (await client.request({"type": "plugin_publish", "data": "finite"}))["data"] == [None, 1e308, -0.0]


async def test_a_token_whose_claims_json_cannot_carry_is_refused(wsgate_server: StartServer) -> None:
    from .test_auth import bearer, jwt_server, refusal, token

    server = await jwt_server(wsgate_server)
    for claims in ({"sub": "\ud800"}, {"sub": "bob", "team": ["\udfff"]}):
        status, body = await refusal(server, **bearer(token(**claims)))
        assert (status, body["detail"]) == (
            401,
            "the token's claims are not strict JSON (a lone surrogate, or a number JSON cannot carry)",
        )


def test_a_setting_utf8_cannot_encode_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsgate.config import ConfigError, load_settings

    monkeypatch.setenv("WSGATE_API__SERVER_ID", "billing\udcff")  # an environment variable with an invalid byte
    with pytest.raises(ConfigError, match=r"api.server_id.*: expected text that UTF-8 can encode"):
        load_settings()


async def test_numbers_longer_than_the_digit_limit_are_refused(wsgate_server: StartServer) -> None:
    """The security review: integers of thousands of digits cost quadratic time; 20 a second stalled the loop."""
    server = await wsgate_server(websocket={"limits": {"max_number_digits": 40}})
    client = await server.connect()
    await client.subscribe("r")
    for number in ("9" * 41, "-" + "9" * 41, "1." + "5" * 40, "9" * 5000):
        reply = await client.request(f'{{"type":"publish","room":"r","data":{number}}}')
        assert (reply["error"], reply["detail"]) == ("invalid JSON format", "numbers may have at most 40 digits")
    reply = await client.request('{"type":"publish","room":"r","data":%s}' % ("9" * 40))
    assert reply["data"] == int("9" * 40)  # up to the limit: digit for digit
    assert (await client.request('{"type":"publish","room":"r","data":"%s"}' % ("9" * 500)))["data"] == "9" * 500


def test_bytes_that_are_not_utf8_are_refused_whole() -> None:
    """Found in review: the stdlib decodes bytes with surrogatepass, so CESU-8 surrogates came through."""
    from wsgate.protocol import ClientError, loads

    for body in (b'{"a":"\xed\xa0\x80"}', b'{"a":"\xff"}'):
        with pytest.raises(ClientError) as refused:
            loads(body)
        assert refused.value.detail == "the text is not valid UTF-8"


def test_a_message_that_contains_itself_is_refused_as_such() -> None:
    from wsgate.protocol import ClientError, dumps

    loop: dict[str, Any] = {"n": int(BIG)}  # (a big integer: the stdlib path, which reports the cycle)
    loop["self"] = loop
    with pytest.raises(ClientError) as caught:
        dumps(loop)
    assert caught.value.detail == "the message contains itself (a circular reference)"


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"publish","room":"r","data":[18446744073709551615,-9223372036854775808,0,-0,"12345678901234567890"]}',
        '{"type":"publish","room":"r","data":[18446744073709551616,-9223372036854775809]}',  # beyond 64 bits
        '{"type":"publish","room":"r","data":{"a":[1,{"b":' + BIG + "}]}}",
        '{"type":"publish","room":"r","data":[1.5,2e300,0.0,12345678901234567890.5]}',
        '{"type":"publish","room":"r","data":[[[[[1]]]],{"x":{"y":null}},true,false]}',
        '{"a":[{"b":[{"c":[1,2,{"d":0.5}]}]}]}',
        "1.5",
        "18446744073709551616",
        "5",
        "[]",
    ],
)
def test_loads_keeps_every_number_exactly_whichever_parser_reads_it(text: str) -> None:
    """`loads` takes orjson's answer when it holds no float (each integer then fits in 64 bits, exact), else
    decides as before: the value is the stdlib's, integer for integer."""
    from wsgate.protocol import loads

    decoded = loads(text)
    assert decoded == json.loads(text)
    assert json.dumps(decoded) == json.dumps(json.loads(text))  # (ints stay ints, floats floats)


def test_the_decoder_checks_each_room_name_once_and_refuses_bad_ones_every_time() -> None:
    from wsgate.protocol import ClientError, Decoder
    from wsgate.regex import LinearPattern

    decoder = Decoder(max_room_length=8, room_pattern=LinearPattern("[a-z-]+"))
    for _ in range(2):
        assert decoder.decode('{"type":"publish","room":"ok-room"}').room == "ok-room"
        for room, detail in (
            ('"too-long-room"', "room names are at most 8 characters"),
            ('"a\\u0000b"', "room names may not contain control characters"),
            ('"UPPER"', "room names must match [a-z-]+"),
            ("5", "field 'room' must be a string"),
            ('["r"]', "field 'room' must be a string"),
        ):
            with pytest.raises(ClientError) as refused:
                decoder.decode('{"type":"publish","room":' + room + "}")
            assert refused.value.detail == detail

    class Small(Decoder):
        ACCEPTED_ROOMS = 3  # (bounded: emptied when full, then filled again)

    decoder = Small()
    for name in ("a", "b", "c", "d", "e"):
        assert decoder.decode(json.dumps({"type": "ping", "room": name})).room == name
    assert len(decoder._accepted) <= 3


def test_a_decoded_message_is_the_frozen_dataclass_its_constructor_makes() -> None:
    import dataclasses

    from wsgate.protocol import Decoder

    text = '{"type":"publish","room":"r","data":[1,"x"],"id":3,"skip_self":true}'
    message = Decoder().decode(text)
    assert message == Message("publish", "r", [1, "x"], json.loads(text), 3)
    assert dataclasses.asdict(message)["fields"] == json.loads(text)
    assert dataclasses.replace(message, room="s").room == "s"
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.room = "s"  # type: ignore[misc]
