"""Per-client rate limits, rooms per client, connections per address, room names: `[websocket.limits]`."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from wsgate.config import LimitsSettings
from wsgate.ratelimit import RateLimiter, TokenBucket, Verdict
from wsgate.testing import TIMEOUT, Peer, StartServer, eventually


async def test_messages_over_the_rate_are_answered_and_dropped(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"messages_per_second": 0.001, "burst": 5}})
    client = await server.connect()
    for _ in range(8):
        await client.send({"type": "ping"})
    replies = [await client.recv() for _ in range(8)]
    assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 3
    assert {(r["error"], r["detail"]) for r in replies[5:]} == {
        ("rate limit exceeded", "the message was dropped; send less often")
    }
    assert server.metrics.error_count("rate_limited") == 3
    # malformed frames and binary frames count too: a flood of garbage is limited like any other
    await client.send("not json")
    await client.ws.send_bytes(b"\x00")
    assert [(await client.recv())["error"] for _ in range(2)] == ["rate limit exceeded"] * 2
    # other clients have buckets of their own
    other = await server.connect()
    assert (await other.request({"type": "ping"}))["type"] == "pong"


async def test_a_client_kept_over_the_limit_for_the_grace_period_is_closed_with_1008(
    wsgate_server: StartServer,
) -> None:
    server = await wsgate_server(
        websocket={"limits": {"messages_per_second": 0.001, "burst": 1, "rate_limit_grace": "100ms"}}
    )
    client = await server.connect()
    async with asyncio.timeout(TIMEOUT):
        while True:  # keep sending: the server closes us once we have been over the limit for 100 ms
            try:
                await client.send({"type": "ping"})
            except ConnectionResetError:
                pass
            msg = await client.ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "rate limit exceeded")
    registry = server.metrics.registry
    await eventually(
        lambda: registry.get_sample_value("websocket_connections_closed_total", {"reason": "rate_limited"}) == 1
    )


async def test_bytes_per_second_limits_large_publishes(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"bytes_per_second": 300}})
    client = await server.connect()
    await client.subscribe("r")  # about 40 characters of the 300
    big = {"type": "publish", "room": "r", "data": "x" * 400}  # larger than a whole second's allowance
    reply = await client.request(big)
    assert reply["error"] == "rate limit exceeded"
    assert (await client.request({"type": "publish", "room": "r", "data": "x" * 100}))["type"] == "message"


def test_token_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1, 0.5)  # half a second at 2/s: one token back
    assert not bucket.take(1, 0.5)
    assert [bucket.take(1, 100.0) for _ in range(4)] == [True, True, True, False]  # never above capacity


def test_grace_counts_from_the_first_refusal_until_a_quiet_second() -> None:
    limits = LimitsSettings(messages_per_second=1.0, burst=1, rate_limit_grace=5.0)
    limiter = RateLimiter(limits, now=0.0)
    assert limiter.check(10, 0.0) is Verdict.ALLOW
    assert limiter.check(10, 0.1) is Verdict.REFUSE  # over the limit from 0.1
    # twice the allowed rate: every other message passes, but the client stays over the limit
    verdicts = [limiter.check(10, 0.1 + i * 0.5) for i in range(1, 11)]
    assert Verdict.ALLOW in verdicts and verdicts[-1] is Verdict.CLOSE
    # a client that slows down is forgiven after a quiet second
    calm = RateLimiter(limits, now=0.0)
    calm.check(10, 0.0), calm.check(10, 0.0)
    assert [calm.check(10, t) for t in (1.0, 2.0, 3.0, 5.5, 7.0)] == [Verdict.ALLOW] * 5
    assert calm.check(10, 7.0) is Verdict.REFUSE  # 7 s after its first refusal, but a new spell: not closed


def test_no_limiter_without_limits() -> None:
    assert not RateLimiter.needed(LimitsSettings())
    assert RateLimiter.needed(LimitsSettings(bytes_per_second=10))


async def test_max_rooms_per_client(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_rooms_per_client": 2}})
    client = await server.connect()
    await client.subscribe("a")
    await client.subscribe("b")
    reply = await client.request({"type": "subscribe", "room": "c"})
    assert (reply["error"], reply["detail"]) == ("too many rooms", "a client may be in at most 2 rooms")
    assert "c" not in server.hub.rooms
    await client.subscribe("a")  # already in it: not a new room
    await client.request({"type": "unsubscribe", "room": "b"})
    await client.subscribe("c")
    assert server.metrics.error_count("too_many_rooms") == 1


async def test_connections_per_address_are_refused_with_429_before_the_upgrade(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"max_connections_per_ip": 2}})
    first, _second = await server.connect(), await server.connect()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw()
    assert refused.value.status == 429
    async with server.session.get(server.url("/ws")) as resp:  # the body says why
        assert (resp.status, await resp.json()) == (429, {"error": "too many connections from this address"})
    assert server.metrics.error_count("address_limit") == 2
    await first.ws.close()
    await eventually(lambda: server.hub.addresses.get("127.0.0.1") == 1)
    third = await server.connect()
    assert (await third.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.slow
async def test_a_connection_storm_from_one_address_leaves_the_server_responsive(wsgate_server: StartServer) -> None:
    """2,000 connection attempts in a burst from 127.0.0.2 with max_connections_per_ip = 100."""
    server = await wsgate_server(websocket={"limits": {"max_connections_per_ip": 100}})
    bystander = await server.connect()  # from 127.0.0.1
    await bystander.subscribe("news")
    connector = aiohttp.TCPConnector(limit=0, local_addr=("127.0.0.2", 0))
    outcomes: dict[str, int] = {"open": 0, "429": 0}
    held: list[aiohttp.ClientWebSocketResponse] = []
    async with aiohttp.ClientSession(connector=connector) as storm:

        async def attempt() -> None:
            try:
                ws = await storm.ws_connect(server.url("/ws"))
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
                outcomes["429"] += 1
            else:
                held.append(ws)
                outcomes["open"] += 1

        burst = asyncio.gather(*(attempt() for _ in range(2000)))
        # while the storm goes on, the bystander is served
        reply = await bystander.request({"type": "publish", "room": "news", "data": "still here"})
        assert reply["data"] == "still here"
        async with asyncio.timeout(130):  # past the kernel's 6 SYN retries (63 s) for connects over the backlog
            await burst
        assert outcomes == {"open": 100, "429": 1900}
        assert server.hub.addresses == {"127.0.0.2": 100, "127.0.0.1": 1}
        assert (await server.counts())[1]["clients"] == 101
        assert (await bystander.request({"type": "ping"}))["type"] == "pong"
        for ws in held:
            await ws.close()
    await eventually(lambda: "127.0.0.2" not in server.hub.addresses)  # (127.0.0.1 also holds /health's socket)


@pytest.mark.parametrize(
    "room",
    [
        "bad\nroom",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "next\x85line",
        "csi\x9b",
        "evil\u202etxt.exe",
        "zero\u200bwidth",
        "bom\ufeff",
        "tag\U000e0041",  # C1, format
        "line\u2028sep",
        "para\u2029sep",  # line and paragraph separators
    ],
)
async def test_room_names_with_control_characters_are_refused(server_client: Peer, room: str) -> None:
    reply = await server_client.request({"type": "subscribe", "room": room})
    assert (reply["error"], reply["detail"]) == ("invalid room name", "room names may not contain control characters")


async def test_room_name_pattern(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"limits": {"room_name_pattern": "[a-z0-9:\\s-]+"}})
    client = await server.connect()
    await client.subscribe("chat:lobby-1")
    reply = await client.request({"type": "subscribe", "room": "Chat Lobby"})
    assert (reply["error"], reply["detail"]) == ("invalid room name", "room names must match [a-z0-9:\\s-]+")
    reply = await client.request(json.dumps({"type": "publish", "room": "ünïcode", "data": 1}))
    assert reply["error"] == "invalid room name"
    reply = await client.request(
        {"type": "subscribe", "room": "a\nb"}
    )  # control characters: never, whatever the pattern
    assert reply["detail"] == "room names may not contain control characters"
    assert server.metrics.error_count("invalid_room") == 3


@pytest.fixture
async def server_client(wsgate_server: StartServer) -> Peer:
    return await (await wsgate_server()).connect()
