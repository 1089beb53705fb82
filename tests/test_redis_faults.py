"""Redis faults a node must see for itself (issue 21, part 2, items 2 and 3), each against a private redis-server.

- A reconnect that redis-py makes on its own (it retries inside `get_message` and resubscribes) is still a
  reconnect: logged once with its kind, counted in `wsgate_broker_reconnects_total{connection}`, and followed
  by everything the node keeps in Redis or expects from it (subscriptions, the catch-up from history, the
  announced history settings, presence entries and the node's liveness key).
- Writes that Redis refuses (a read-only replica after a failover, `maxmemory` with noeviction) make the
  broker degraded and `/ready` answer 503 within `broker.probe_interval` + `broker.connect_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsgate.testing import Peer, Server, StartServer, eventually

from .conftest import PrivateRedis

pytestmark = pytest.mark.slow  # private Redis servers killed, restarted and limited

HISTORY = {"rooms": ["h*"], "size": 100, "ttl": "60s"}
PRESENCE = {"rooms": ["h*", "p*"], "node_ttl": "3s"}
BOUND = 5.0  # seconds: every wait below is bounded by this (probe_interval 200ms, connect_timeout 1s)


@pytest.fixture
async def admin(private_redis: PrivateRedis) -> AsyncIterator[Any]:
    """A client of the test's own Redis, for injecting faults (never the shared 127.0.0.1:6379)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(private_redis.url)
    yield client
    await client.aclose()


async def start_nodes(wsgate_server: StartServer, url: str, prefix: str, count: int = 2) -> list[Server]:
    broker = {"url": url, "prefix": prefix, "probe_interval": "200ms", "connect_timeout": "1s"}
    return [await wsgate_server(broker=broker, history=HISTORY, presence=PRESENCE) for _ in range(count)]


async def joined(server: Server, room: str) -> Peer:
    client = await server.connect()
    await client.subscribe(room)
    return client


def reconnects(server: Server, kind: str) -> float:
    return server.metrics.registry.get_sample_value("wsgate_broker_reconnects_total", {"connection": kind}) or 0.0


def reconnect_lines(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"({kind} connection)" in r.getMessage()]


async def ready(server: Server) -> tuple[int, dict[str, Any]]:
    async with server.session.get(server.url("/ready")) as resp:
        return resp.status, await resp.json()


async def _status_is(server: Server, status: int) -> bool:
    """Whether /ready answers `status` now (its verdict comes from the broker's probe, in the background)."""
    return (await ready(server))[0] == status


async def _truthy(value: Any) -> bool:
    return bool(await value)


# --- item 2: a reconnect that the Redis client hides is still a reconnect ------------------------------


async def test_a_subscription_redis_dropped_for_its_output_buffer_is_seen_and_caught_up(
    private_redis: PrivateRedis,
    admin: Any,
    wsgate_server: StartServer,
    broker_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handed input: `client-output-buffer-limit pubsub 64kb 32kb 1` and one 100 kB message."""
    caplog.set_level(logging.INFO, "wsgate")
    a, b = await start_nodes(wsgate_server, private_redis.url, broker_prefix)
    on_a, on_b = await joined(a, "h1"), await joined(b, "h1")
    await on_a.send({"type": "publish", "room": "h1", "data": "before"})
    assert (await on_a.recv())["data"] == (await on_b.recv())["data"] == "before"
    await admin.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    big = "x" * 100_000
    await on_a.send({"type": "publish", "room": "h1", "data": big})
    assert (await on_a.recv())["data"] == big
    got = await asyncio.wait_for(on_b.recv(), BOUND)  # nothing else is published: the catch-up brings it
    assert (got["data"], got["offset"]) == (big, 2)
    await eventually(lambda: reconnects(b, "pubsub") >= 1, BOUND)
    assert reconnects(a, "pubsub") + reconnects(b, "pubsub") == len(reconnect_lines(caplog, "pubsub"))  # once each
    assert (await b.health())[1]["broker"] == "ok"
    await on_a.send({"type": "publish", "room": "h1", "data": "after"})
    assert (await on_b.recv())["data"] == "after"  # exactly once: the big one is not delivered again


async def test_killed_pubsub_and_normal_clients_are_seen_logged_and_counted_by_kind(
    private_redis: PrivateRedis,
    admin: Any,
    wsgate_server: StartServer,
    broker_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`CLIENT KILL TYPE pubsub`, then `CLIENT KILL TYPE normal`: every connection a node holds, by its kind."""
    caplog.set_level(logging.INFO, "wsgate")
    a, b = await start_nodes(wsgate_server, private_redis.url, broker_prefix)
    on_a, on_b = await joined(a, "p1"), await joined(b, "p1")
    assert await admin.client_kill_filter(_type="pubsub") >= 2
    await eventually(lambda: reconnects(a, "pubsub") >= 1 and reconnects(b, "pubsub") >= 1, BOUND)
    assert any("plain rooms" in line for line in reconnect_lines(caplog, "pubsub"))  # says what may be lost
    config_key = f"{broker_prefix}:history:config"
    await admin.delete(config_key)  # as if Redis had lost it: the command connections' reconnect restores it
    assert await admin.client_kill_filter(_type="normal", skipme=True) >= 2
    # the probe uses the command pool every probe_interval; presence writes beat every node_ttl / 3
    await eventually(lambda: all(reconnects(n, kind) >= 1 for n in (a, b) for kind in ("commands", "presence")), BOUND)
    for kind in ("commands", "presence"):
        assert reconnect_lines(caplog, kind)
    await eventually(lambda: _truthy(admin.get(config_key)), BOUND)  # written again by the node's restore task
    await on_a.send({"type": "publish", "room": "p1", "data": "still"})
    assert (await on_b.recv())["data"] == "still"


async def test_a_redis_that_came_back_empty_gets_the_nodes_state_again(
    private_redis: PrivateRedis,
    admin: Any,
    wsgate_server: StartServer,
    broker_prefix: str,
) -> None:
    """A restart that comes back empty at once (no window in which Redis is away): FLUSHALL, then every
    client killed. redis-py reconnects each connection on its next use; the node writes again what it keeps
    there: the announced history settings, its liveness key and presence entries."""
    a, b = await start_nodes(wsgate_server, private_redis.url, broker_prefix)
    on_a, on_b = await joined(a, "h1"), await joined(b, "h1")
    config_key = f"{broker_prefix}:history:config"
    assert json.loads(await admin.get(config_key))["rooms"] == ["h*"]

    async def count() -> int:
        answer = await on_a.request({"type": "presence", "room": "h1"})
        return int(answer["data"]["count"])

    async def both_present() -> bool:
        return await count() == 2

    await eventually(both_present, BOUND)  # b writes its member in the background
    await admin.flushall()
    for kind in ("pubsub", "normal"):
        await admin.client_kill_filter(_type=kind, skipme=True)

    async def restored() -> bool:
        return bool(await admin.get(config_key)) and await both_present()

    await eventually(restored, BOUND)  # node_ttl / 3 + the beat's round trip
    node_keys = [key async for key in admin.scan_iter(f"{broker_prefix}:node:*")]
    assert len(node_keys) == 2
    await on_b.send({"type": "publish", "room": "h1", "data": "again"})
    assert (await on_a.recv())["data"] == "again"


# --- item 3: health sees refusals, not only reachability ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def refuse_writes(admin: Any, how: str) -> None:
    if how == "replica":  # what Sentinel does to the old master: same address, now a replica
        await admin.config_set("replica-read-only", "yes")
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
    else:  # maxmemory reached with noeviction: writes answer OOM
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")


async def take_writes(admin: Any, how: str) -> None:
    if how == "replica":
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    else:
        await admin.config_set("maxmemory", "0")


async def rejected_sets(admin: Any) -> int:
    """How many SET commands Redis refused so far (every probe sends one)."""
    stats = (await admin.info("commandstats")).get("cmdstat_set", {})
    return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))


@pytest.mark.parametrize("how", ["replica", "oom"])
async def test_redis_that_refuses_writes_makes_the_broker_degraded_then_recovers(
    private_redis: PrivateRedis,
    admin: Any,
    wsgate_server: StartServer,
    broker_prefix: str,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handed input (a replica, as after a Sentinel failover) and maxmemory with noeviction: /ready answers
    503 within probe_interval + connect_timeout, the fault is logged once, and it recovers."""
    caplog.set_level(logging.INFO, "wsgate")
    (a,) = await start_nodes(wsgate_server, private_redis.url, broker_prefix, count=1)
    on_a = await joined(a, "h1")
    assert (await ready(a))[0] == 200
    await refuse_writes(admin, how)
    await eventually(lambda: _status_is(a, 503), BOUND)  # (the bound itself is measured by `make faults`)
    assert (await ready(a))[1]["reasons"] == ["broker degraded"]
    assert (await a.health())[1]["broker"] == "degraded"
    seen = await rejected_sets(admin)

    async def refused_thrice() -> bool:  # three more probes refused
        return await rejected_sets(admin) >= seen + 3

    await eventually(refused_thrice, BOUND)
    refusals = [r for r in caplog.records if "Redis refuses writes" in r.getMessage()]
    assert (
        len(refusals) == 1 and ("ReadOnlyError" if how == "replica" else "OutOfMemoryError") in refusals[0].getMessage()
    )
    await take_writes(admin, how)
    await eventually(lambda: _status_is(a, 200), BOUND)
    assert "Redis takes writes again" in caplog.text
    await on_a.send({"type": "publish", "room": "h1", "data": "taken"})
    assert (await on_a.recv())["data"] == "taken"
