"""Background tasks never die unseen, and a node never stays deaf to the others while /health says ok."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsgate import Gateway, hookimpl
from wsgate.metrics import Metrics
from wsgate.supervision import Supervisor
from wsgate.testing import Server, StartServer, eventually

from .conftest import PrivateRedis


async def test_a_task_that_fails_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics, backoff=(0.01, 0.02))
    runs: list[int] = []
    finished = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        finished.set()

    supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(finished.wait(), 5)
    assert runs == [0, 1, 2]
    assert metrics.registry.get_sample_value("wsgate_task_restarts_total", {"task": "flaky"}) == 2
    failures = [r for r in caplog.records if r.getMessage().startswith("task flaky failed")]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # with the traceback
    await supervisor.stop()


class Flaky:
    """A plugin whose background task (through `gateway.spawn`) fails until it is told to stop failing."""

    def __init__(self) -> None:
        self.healthy = asyncio.Event()

    @hookimpl
    def wsgate_startup(self, gateway: Gateway) -> None:
        gateway.spawn("flaky", self.run)

    async def run(self) -> None:
        if not self.healthy.is_set():
            raise RuntimeError("not yet")
        await asyncio.Event().wait()


@pytest.mark.slow
async def test_health_and_readiness_show_a_task_that_is_down(wsgate_server: StartServer) -> None:
    flaky = Flaky()
    server = await wsgate_server(flaky)

    def restarts() -> float:
        return server.metrics.registry.get_sample_value("wsgate_task_restarts_total", {"task": "flaky"}) or 0

    await eventually(lambda: restarts() >= 4)  # by now it waits 0.8 s and more between tries
    status, body = await server.health()
    assert (status, body["status"], body["tasks"]["down"]) == (200, "healthy", ["flaky"])
    async with server.session.get(server.url("/ready")) as resp:
        assert (resp.status, await resp.json()) == (503, {"ready": False, "reasons": ["task flaky is down"]})
    flaky.healthy.set()
    async with asyncio.timeout(10):
        while True:
            async with server.session.get(server.url("/ready")) as resp:
                if resp.status == 200:
                    assert await resp.json() == {"ready": True}
                    break
            await asyncio.sleep(0.05)  # the task restarts after its backoff: nothing to wait on from outside


async def two_nodes(wsgate_server: StartServer, url_a: str, url_b: str, prefix: str) -> tuple[Server, Server]:
    broker = {"prefix": prefix, "probe_interval": "200ms", "connect_timeout": "1s"}
    return (await wsgate_server(broker={"url": url_a, **broker}), await wsgate_server(broker={"url": url_b, **broker}))


async def hears(listener: Any, talker: Any, room: str = "r", timeout: float = 10) -> None:
    """`talker` publishes until `listener` (on the other node) gets one: a node that hears again."""
    async with asyncio.timeout(timeout):
        n = 0
        while True:
            n += 1
            await talker.send({"type": "publish", "room": room, "data": n})
            await talker.recv()  # its own copy
            try:
                got = await asyncio.wait_for(listener.recv(), 0.3)
            except TimeoutError:
                continue  # not yet: the node is still resubscribing
            assert got["data"] <= n
            return


async def test_the_redis_receive_loop_survives_a_failure(
    wsgate_server: StartServer, redis_url: str, broker_prefix: str
) -> None:
    a, b = await two_nodes(wsgate_server, redis_url, redis_url, broker_prefix)
    on_a, on_b = await a.connect(), await b.connect()
    await on_a.subscribe("r")
    await on_b.subscribe("r")
    broker: Any = a.broker
    deliver, calls = broker._receive, []

    def fails_once(room: str | None, message: bytes) -> None:  # a bug in delivery, inside the receive loop
        calls.append(room)
        if len(calls) == 1:
            raise RuntimeError("a bug in delivery")
        deliver(room, message)

    broker._receive = fails_once
    await hears(on_a, on_b)
    assert a.metrics.registry.get_sample_value("wsgate_task_restarts_total", {"task": "redis-receive"}) == 1


async def test_a_node_whose_subscription_redis_killed_hears_again(
    wsgate_server: StartServer, private_redis: PrivateRedis, broker_prefix: str
) -> None:
    """The field report's python-socketio worker, deaf for a day: Redis dropped its pub/sub client."""
    import redis.asyncio as aioredis

    a, b = await two_nodes(wsgate_server, private_redis.url, private_redis.url, broker_prefix)
    on_a, on_b = await a.connect(), await b.connect()
    await on_a.subscribe("r")
    await on_b.subscribe("r")
    await hears(on_a, on_b)
    admin = aioredis.from_url(private_redis.url)
    try:
        assert await admin.client_kill_filter(_type="pubsub") >= 2  # both nodes' subscriptions
    finally:
        await admin.aclose()
    await hears(on_a, on_b)
    await hears(on_b, on_a)
    assert (await a.health())[1]["broker"] == "ok"


class FrozenProxy:
    """A TCP proxy to Redis that can stop forwarding without closing anything: a silent network fault."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    await self.thawed.wait()  # frozen: hold everything, close nothing
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def close(self) -> None:
        self.thaw()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def frozen_proxy(private_redis: PrivateRedis) -> AsyncIterator[FrozenProxy]:
    proxy = FrozenProxy(private_redis.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.mark.slow
async def test_a_silently_deaf_node_notices_and_says_so(
    wsgate_server: StartServer,
    private_redis: PrivateRedis,
    frozen_proxy: FrozenProxy,
    broker_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "wsgate.broker.redis")
    a, b = await two_nodes(wsgate_server, f"redis://127.0.0.1:{frozen_proxy.port}", private_redis.url, broker_prefix)
    on_a, on_b = await a.connect(), await b.connect()
    await on_a.subscribe("r")
    await on_b.subscribe("r")
    await hears(on_a, on_b)
    frozen_proxy.freeze()  # nothing errors, nothing closes: a's subscription simply hears nothing more
    async with asyncio.timeout(10):
        while (await a.health())[1]["broker"] != "degraded":
            await asyncio.sleep(0.05)  # the probe's bound: probe_interval + connect_timeout
    assert "the subscription is deaf" in caplog.text
    async with a.session.get(a.url("/ready")) as resp:
        assert resp.status == 503 and "broker degraded" in (await resp.json())["reasons"]
    frozen_proxy.thaw()
    await hears(on_a, on_b, timeout=20)


def test_a_supervised_task_name_is_taken_once() -> None:
    from wsgate.supervision import Supervisor

    async def scenario() -> None:
        supervisor = Supervisor(Metrics())
        supervisor.spawn("x", asyncio.Event().wait)
        with pytest.raises(ValueError, match="running already"):
            supervisor.spawn("x", asyncio.Event().wait)
        await supervisor.stop()

    asyncio.run(scenario())
