"""`wsgate.sdk.client.GatewayClient` against a real gateway: requests, reconnecting, resuming, failed recovery."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import wsgate
import wsgate.testing
from wsgate import Client, Handler, Message
from wsgate.history import Position
from wsgate.sdk import client as sdk_client
from wsgate.sdk.client import GatewayClient, GatewayError, RequestTimeout
from wsgate.testing import TIMEOUT, Server, StartServer

from .test_auth import jwt_server

HISTORY = {"rooms": ["chat:*"], "size": 1000}


class Silent:
    """A plugin whose `silent` message is never answered."""

    @wsgate.hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        async def silent(client: Client, message: Message) -> None:
            pass

        return {"silent": silent}


class Pusher:
    """A plugin whose `push_me` is answered by a push with an id of the plugin's own."""

    @wsgate.hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        async def push_me(client: Client, message: Message) -> None:
            client.send({"type": "pushed", "id": "order-7"})

        return {"push_me": push_me}


@pytest.fixture
async def server(wsgate_server: StartServer) -> Server:
    return await wsgate_server(history=HISTORY)


def connection_of(server: Server, client: GatewayClient):  # type: ignore[no-untyped-def]
    return server.hub.connections[client.client_id]  # type: ignore[index]


async def test_requests(server: Server) -> None:
    async with GatewayClient(server.url("/ws")) as client:
        subscribed = await client.subscribe("chat:a")
        assert (subscribed["room"], subscribed["offset"]) == ("chat:a", 0)
        await client.publish("chat:a", {"text": "hi"})
        message = await client.receive()
        assert (message["data"], message["offset"], message["client_id"]) == ({"text": "hi"}, 1, client.client_id)
        assert client.positions["chat:a"] == Position(1, message["epoch"])
        assert (await client.history("chat:a"))["messages"][0]["data"] == {"text": "hi"}
        assert await client.ping() > 0
        with pytest.raises(GatewayError) as refused:
            await client.history("lobby")
        assert (refused.value.text, refused.value.detail) == (
            "room has no history",
            "history.rooms does not include this room",
        )
        await client.broadcast("everyone")
        assert (await client.receive())["data"] == "everyone"
        await client.unsubscribe("chat:a")
        assert "chat:a" not in client.positions


async def test_after_a_disconnection_it_reconnects_and_gets_what_it_missed(server: Server) -> None:
    publisher = await server.connect()
    await publisher.subscribe("chat:a")
    async with GatewayClient(server.url("/ws"), backoff=(0.01, 0.1)) as client:
        await client.subscribe("chat:a")
        for n in range(5):
            await publisher.request({"type": "publish", "room": "chat:a", "data": n})
        assert [(await client.receive())["data"] for _ in range(5)] == list(range(5))
        connection_of(server, client).drop(1012, "service restart")
        for n in range(5, 55):  # published while it is away (or coming back)
            await publisher.request({"type": "publish", "room": "chat:a", "data": n})
        assert [(await client.receive())["data"] for _ in range(50)] == list(range(5, 55))
        await client.connected()
        assert client.connects == 2
        assert await client.ping() > 0


async def test_a_recovery_that_fails_is_passed_on_to_the_application(server: Server) -> None:
    async with GatewayClient(server.url("/ws"), backoff=(0.01, 0.1)) as client:
        await client.subscribe("chat:a")
        client.positions["chat:a"] = Position(7, "an-epoch-that-is-gone")
        connection_of(server, client).drop(1012, "service restart")
        notice = await client.receive()
        assert notice["type"] == "subscribed" and notice["data"]["recovered"] is False
        assert client.positions["chat:a"] == Position(0, notice["data"]["epoch"])  # resumes from the new epoch


async def test_a_room_the_gateway_could_not_recover_yet_is_subscribed_again_later(
    wsgate_server: StartServer, private_redis: Any, broker_prefix: str
) -> None:
    """Found by the chaos run: while Redis restarted, a re-subscription answered `history is unavailable`
    and the client gave the room up until its next reconnection; it now tries again with backoff."""
    server = await wsgate_server(
        broker={"url": private_redis.url, "prefix": broker_prefix, "required": False}, history=HISTORY
    )
    publisher = await server.connect()
    await publisher.subscribe("chat:r")
    async with GatewayClient(server.url("/ws"), backoff=(0.01, 0.05)) as client:
        await client.subscribe("chat:r")
        await publisher.request({"type": "publish", "room": "chat:r", "data": 1})
        assert (await client.receive())["data"] == 1
        await private_redis.stop()
        connection_of(server, client).drop(1012, "service restart")  # the network blips while Redis is away
        async with asyncio.timeout(10):
            while client.connects < 2:
                await asyncio.sleep(0.01)  # the client's own backoff timer: nothing else to wait on
        await private_redis.start()
        async with asyncio.timeout(20):
            while True:  # once Redis is back, the client's retry gets the room back, on the same connection
                answer = await publisher.request({"type": "publish", "room": "chat:r", "data": 2})
                if answer.get("type") == "message":
                    break
                await asyncio.sleep(0.2)  # the broker reconnects by itself
        lost = await asyncio.wait_for(client.receive(), 20)  # this Redis keeps nothing across a restart:
        assert (lost["type"], lost["data"]["recovered"]) == ("subscribed", False)  # told, not silently
        await publisher.request({"type": "publish", "room": "chat:r", "data": 3})
        async with asyncio.timeout(20):
            while (await client.receive())["data"] != 3:  # (2 too, if the retry came before it was published)
                pass
        assert client.connects == 2  # in the room again, on the same connection


async def test_an_error_a_publish_caused_does_not_fail_the_next_request(server: Server) -> None:
    """Issue 24: with the oldest-request rule, `not subscribed to this room` answering a fire-and-forget
    publish failed the ping sent right after it. Each reply now names its request (`id`)."""
    async with GatewayClient(server.url("/ws")) as client:
        await client.publish("chat:not-joined", "lost")
        assert await client.ping() > 0
        error = await client.receive()  # it answers no request: the application sees it
        assert (error["type"], error["error"], "id" in error) == ("error", "not subscribed to this room", False)


async def test_requests_wait_side_by_side_and_each_gets_its_own_reply(server: Server) -> None:
    async with GatewayClient(server.url("/ws")) as client:
        subscribed, history, rtt = await asyncio.gather(
            client.subscribe("chat:a"), client.history("chat:b"), client.ping()
        )
        assert (subscribed["room"], history["messages"], rtt > 0) == ("chat:a", [], True)


async def test_a_reply_no_request_waits_for_is_passed_on_and_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    async with GatewayClient(server.url("/ws")) as client:
        with caplog.at_level(logging.DEBUG, logger="wsgate.sdk.client"):
            await client._send({"type": "ping", "id": 10**9})  # (as if its request had timed out)
            assert await client.ping() > 0
        assert any("no request waits for" in record.getMessage() for record in caplog.records)
        assert client._inbox.empty()  # (a pong is no message for the application)


async def test_a_push_with_an_id_of_its_own_reaches_the_application(wsgate_server: StartServer) -> None:
    """Found in review: any message with a top-level "id" was taken for a reply and dropped, a plugin's own
    pushes included (a plugin's `client.send({..., "id": x})` keeps its id)."""
    server = await wsgate_server(Pusher())
    async with GatewayClient(server.url("/ws")) as client:
        await client._send({"type": "push_me"})
        pushed = await asyncio.wait_for(client.receive(), TIMEOUT)
        assert (pushed["type"], pushed["id"]) == ("pushed", "order-7")


async def test_the_servers_own_subscriptions_reach_the_application(server: Server) -> None:
    async with GatewayClient(server.url("/ws")) as client:
        await client.ping()  # (connected: the server knows it)
        conn = connection_of(server, client)
        await server.gateway.server_subscribe(conn, "news")
        assert server.gateway.server_unsubscribe(conn, "news")
        for kind in ("subscribed", "unsubscribed"):
            message = await asyncio.wait_for(client.receive(), TIMEOUT)
            assert (message["type"], message["room"], message["server"]) == (kind, "news", True)


async def test_a_request_without_a_reply_times_out_clearly(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Silent())
    # (the timeout bounds the connect and the ping too: two seconds, not less, for a loaded machine)
    async with GatewayClient(server.url("/ws"), request_timeout=2.0) as client:
        with pytest.raises(RequestTimeout, match=r"no reply to 'silent' \(id \d+\) within 2 s"):
            await client._request({"type": "silent"})
        assert await client.ping() > 0  # the connection is fine


class Closer:
    """A plugin whose `close_me` closes the client for the reason its data names (one of wsgate.errors')."""

    @wsgate.hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        async def close_me(client: Client, message: Message) -> None:
            client.drop(getattr(wsgate.errors, message.data))

        return {"close_me": close_me}


def test_the_clients_reconnect_table_is_the_registry() -> None:
    """The Python and JavaScript clients carry `wsgate.errors.CLOSE_CODES` as a table of their own."""
    registry = {close.code: close.reconnect.value for close in wsgate.errors.CLOSE_CODES}
    assert sdk_client.RECONNECT_BY_CODE == registry
    source = (Path(wsgate.__file__).parent / "static" / "client.js").read_text()
    table = re.search(r"const RECONNECT_BY_CODE = \{(.*?)\};", source, re.S)
    assert table is not None
    assert {int(code): advice for code, advice in re.findall(r'(\d+): "(\w+)"', table.group(1))} == registry


@pytest.mark.parametrize(
    ("code", "reason", "advice"),
    [
        (1008, "disconnected by an operator [reconnect=no]", "no"),
        (1008, "slow consumer [reconnect=backoff]", "backoff"),
        (1008, "slow consumer", "backoff"),  # protocol 1: the code's
        (1012, "service restart", "now"),
        (1009, "", "backoff"),  # a new connection works: the oversized message is not sent again
        (4999, "a plugin's", "backoff"),
        (None, "", "backoff"),  # lost without a close frame
        (1001, "going away [reconnect=now] and more", "backoff"),  # advice only at the end
    ],
)
def test_reconnect_advice_comes_from_the_reason_then_the_code(code: int | None, reason: str, advice: str) -> None:
    assert sdk_client.reconnect_advice(code, reason) == advice


async def test_errors_carry_their_code_and_whether_they_are_temporary(server: Server) -> None:
    async with GatewayClient(server.url("/ws")) as client:
        assert client.protocol == 2
        with pytest.raises(GatewayError) as refused:
            await client.history("lobby")
        assert (refused.value.code, refused.value.temporary, refused.value.transient) == (130, False, False)


async def test_told_not_to_come_back_it_stops(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Closer())
    client = GatewayClient(server.url("/ws"), backoff=(0.01, 0.01))
    await client.connect()
    await client._send({"type": "close_me", "data": "OPERATOR_DISCONNECT"})
    assert client._runner is not None
    await asyncio.wait_for(client._runner, TIMEOUT)  # the loop ended: no reconnection
    assert client.connects == 1 and not server.hub.connections
    assert client.stopped is not None
    assert (client.stopped.code, client.stopped.reason) == (1008, "disconnected by an operator [reconnect=no]")
    with pytest.raises(sdk_client.GatewayClosed):
        await client.receive()
    with pytest.raises(sdk_client.GatewayClosed):
        await client.subscribe("chat:a")
    assert [message async for message in client] == []  # an iteration ends
    await client.close()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the client chose, each the longest its jitter allows (a minute with backoff=(60, 60),
    which would outlast any test): a client that waits is caught waiting."""
    chosen: list[float] = []

    def longest(low: float, high: float) -> float:
        chosen.append(high)
        return high

    monkeypatch.setattr(sdk_client.random, "uniform", longest)
    return chosen


async def test_after_a_restart_it_comes_back_at_once(wsgate_server: StartServer, waits: list[float]) -> None:
    """1012 `[reconnect=now]`: no backoff, and it resumes."""
    server = await wsgate_server(Closer(), history=HISTORY)
    async with GatewayClient(server.url("/ws"), backoff=(60.0, 60.0)) as client:
        await client.subscribe("chat:a")
        await client._send({"type": "close_me", "data": "SERVICE_RESTART"})
        await wsgate.testing.eventually(lambda: client.connects == 2 and client._connected.is_set())
        await client.publish("chat:a", "back")
        assert (await client.receive())["data"] == "back"
    assert waits == []


class RestartsAtOnce:
    """A plugin that closes every client with 1012 as soon as it connected: a server in a restart loop."""

    def __init__(self) -> None:
        self.connections = 0

    @wsgate.hookimpl
    def wsgate_client_connected(self, client: Client) -> None:
        self.connections += 1
        client.drop(wsgate.errors.SERVICE_RESTART)


async def test_a_server_that_restarts_at_every_connect_is_not_hammered(
    wsgate_server: StartServer, waits: list[float]
) -> None:
    """Found in review: `now` after every connection reconnected in a tight loop. Once per backoff ceiling."""
    restarts = RestartsAtOnce()
    server = await wsgate_server(restarts)
    client = GatewayClient(server.url("/ws"), backoff=(60.0, 60.0))
    client._session = aiohttp.ClientSession()
    client._runner = asyncio.create_task(client._run())
    await wsgate.testing.eventually(lambda: bool(waits))  # (it waits a minute: caught here)
    assert (restarts.connections, waits) == (2, [60.0])  # once at once, then with backoff
    await client.close()


async def test_it_stops_only_when_every_url_refused_for_good(wsgate_server: StartServer) -> None:
    off = await wsgate_server(websocket={"enabled": False})  # /ws answers 404
    on = await wsgate_server()
    async with GatewayClient([off.url("/ws"), on.url("/ws")], backoff=(0.01, 0.01)) as client:
        assert client.url == on.url("/ws") and client.stopped is None  # the other node served it
    client = GatewayClient(off.url("/ws"), backoff=(0.01, 0.01))
    client._session = aiohttp.ClientSession()
    client._runner = asyncio.create_task(client._run())
    await asyncio.wait_for(client._runner, TIMEOUT)
    assert client.stopped is not None and client.stopped.code == 404
    await client.close()


async def test_a_token_refused_for_good_stops_it(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server)
    client = GatewayClient(server.url("/ws"), token="not-a-jwt", backoff=(0.01, 0.01))
    client._session = aiohttp.ClientSession()
    client._runner = asyncio.create_task(client._run())
    await asyncio.wait_for(client._runner, TIMEOUT)
    assert client.stopped is not None and client.stopped.code == 401
    with pytest.raises(sdk_client.GatewayClosed):
        await client.connected()
    await client.close()


class ClosesAtOnce:
    """A plugin that closes every client at its first subscribe, with backoff advice: a server in trouble."""

    @wsgate.hookimpl
    def wsgate_authorize(self, client: Client, action: str, room: str | None) -> None:
        client.drop(wsgate.errors.WRITE_TIMEOUT)


async def test_a_server_that_closes_at_once_gets_a_growing_backoff(
    wsgate_server: StartServer, waits: list[float]
) -> None:
    """Found by the adversary: every handshake reset the backoff, so a server closing each connection at once
    was asked again every 0-100 ms for ever. Only a connection that lasted resets it."""
    server = await wsgate_server(ClosesAtOnce())
    client = GatewayClient(server.url("/ws"), backoff=(0.001, 10.0))
    client._rooms.add("chat")  # subscribed again after each `connected`: closed there
    client._session = aiohttp.ClientSession()
    client._runner = asyncio.create_task(client._run())
    await wsgate.testing.eventually(lambda: len(waits) >= 5)
    await client.close()
    assert client.connects >= 5  # each time `connected` came, then the close
    assert waits[:5] == [0.001, 0.002, 0.004, 0.008, 0.016]


async def test_a_long_outage_never_ends_the_reconnect_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Second review: past about 1,024 failed attempts (an hour and a half of outage with the default backoff)
    the delay overflowed a float and the loop died, silently."""
    import socket

    with socket.socket() as closed:  # a port nobody listens on: every attempt is refused at once
        closed.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/ws"
    attempts: list[float] = []

    def at_once(low: float, high: float) -> float:
        attempts.append(high)
        return 0.0

    monkeypatch.setattr(sdk_client.random, "uniform", at_once)
    client = GatewayClient(url, backoff=(0.1, 10.0))
    client._session = aiohttp.ClientSession()
    client._runner = asyncio.create_task(client._run())
    await wsgate.testing.eventually(lambda: len(attempts) > 1100 or client._runner.done(), timeout=60)
    assert not client._runner.done(), client._runner
    assert attempts[-1] == 10.0
    await client.close()


async def test_after_a_failed_recovery_the_position_is_where_the_room_stands(wsgate_server: StartServer) -> None:
    """Second review: a recovery answered `recovered: false` with a lower offset in the same epoch (a Redis
    failover lost the history's tail) kept the client's higher position, and a later resume skipped messages."""
    server = await wsgate_server(history=HISTORY)
    async with GatewayClient(server.url("/ws")) as client:
        await client.subscribe("chat:a")
        await client.publish("chat:a", 1)
        first = await client.receive()
        await client._request({"type": "unsubscribe", "room": "chat:a"})  # (as after a disconnection)
        client.positions["chat:a"] = Position(first["offset"] + 5, first["epoch"])  # (ahead of the history)
        data = await client._subscribe("chat:a")
        assert data["recovered"] is False
        assert client.positions["chat:a"] == Position(first["offset"], first["epoch"])
        assert (await client.receive())["data"]["recovered"] is False  # (passed on: reload the room)
