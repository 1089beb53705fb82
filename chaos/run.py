"""The chaos run: three nodes, a Redis that restarts, clients that keep losing their sockets; nothing is lost.

    make chaos                                   # the full run: 1,000 clients, about 4 minutes
    .venv/bin/python chaos/run.py --clients 100 --duration 40   # the short run CI makes (tests/test_chaos.py)

Loopback only, bounded in time, stops by itself. It runs:

- a private redis-server with append-only persistence (`appendfsync always`);
- three wsgate nodes (`python -m wsgate`) on it, `shutdown.mode = "restart"`, history for `chaos:*` sized
  to keep every message of the run;
- `--clients` GatewayClients spread over 20 rooms and the three nodes, each resuming with `since`;
- per room, publishers at a steady rate through a client's publish, a plugin's `gateway.publish`
  (chaos/chaos_plugin.py) and the HTTP API.

While it runs, every client's socket is cut (no close frame) about every `--cut-every` seconds and
stays away about 2 s; one node is restarted in restart mode (SIGTERM: 1012 in batches); one node is
SIGKILLed and started again; Redis is restarted once; three clients that stop reading are dropped as
slow consumers (reported apart). At the end it reports, per room and in total: messages stored (with
an offset), deliveries expected and delivered, duplicates, order violations, recoveries attempted,
succeeded and refused, p50/p99 recovery latency, and the RSS of the node that ran throughout.
The goal: every stored message delivered exactly once, in offset order, to every client, and no
refused recovery. Anything short of it exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import logging
import os
import platform
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from wsgate.sdk.client import GatewayClient
from wsgate.sdk.publisher import HttpPublisher, PublishError, PublishOutcomeUnknown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # (run as a script from chaos/: the fault model's harness is beside it)
from faults import harness  # noqa: E402
from faults.harness import RedisServer  # noqa: E402

KEY = "chaos-api-key"
PREFIX = "chaos"
ROOMS = [f"chaos:{n}" for n in range(20)]
SLOW_CONSUMERS = 3
SLOW_LANE = "slow-lane"  # a plain room where 8 KB messages go 50 times a second: readers that stall fall behind


class Node(harness.Node):
    """A wsgate node of the run (the fault model's `Node`), with this run's settings and plugin."""

    def __init__(self, name: str, redis_url: str, log_dir: Path) -> None:
        super().__init__(
            name,
            log_dir,
            {
                "broker.url": redis_url,
                "broker.prefix": PREFIX,
                "broker.required": False,
                "broker.connect_timeout": "2s",
                "broker.probe_interval": "2s",
                "history.rooms": ["chaos:*"],
                "history.size": 100000,
                "history.ttl": "1h",
                "shutdown.mode": "restart",
                "shutdown.window": "2s",
                "api.key": KEY,
                "plugins.modules": ["chaos_plugin"],
            },
            home=HERE,
        )

    async def restart_gracefully(self) -> None:
        """SIGTERM (restart mode: 1012 in batches, then exit 0), then start again."""
        await self.terminate(60)
        await self.start()

    async def kill_and_start(self) -> None:
        await self.kill()
        await self.start()


class Subscriber(GatewayClient):
    """A GatewayClient that records every kept message it gets, and how each recovery went."""

    def __init__(self, urls: list[str], room: str) -> None:
        super().__init__(urls, backoff=(4.0, 4.0), request_timeout=15.0)  # away about 2 s (full jitter of 4)
        self.room = room
        self.received: list[tuple[str, int]] = []  # (epoch, offset) in arrival order
        self.recoveries = Counter[str]()
        self.latencies: list[float] = []

    async def _subscribe(self, room: str) -> dict[str, Any]:
        since = self.positions.get(room)
        started = time.monotonic()
        data = await super()._subscribe(room)
        if since is not None:
            self.recoveries["attempted"] += 1
            self.recoveries["succeeded" if data.get("recovered") else "refused"] += 1
            self.latencies.append(time.monotonic() - started)
        return data

    async def consume(self) -> None:
        async for message in self:
            if message.get("type") == "message" and "offset" in message:
                self.received.append((message["epoch"], message["offset"]))

    def cut(self) -> None:
        """Lose the socket as a network fault does: no close frame."""
        ws = self._ws
        connection = getattr(ws, "_conn", None) if ws is not None else None
        if connection is not None and connection.transport is not None:
            connection.transport.abort()


async def slow_consumer(port: int, rooms: list[str], stop: asyncio.Event) -> None:
    """Subscribe to `rooms`, then never read again (a tiny receive buffer): the server must drop it by itself."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        for room in rooms:
            payload = f'{{"type":"subscribe","room":"{room}"}}'.encode()
            mask = os.urandom(4)
            await loop.sock_sendall(
                sock, bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            )
        await stop.wait()
    finally:
        sock.close()


async def flood_slow_lane(url: str, stop: asyncio.Event) -> None:
    """Publish 8 KB messages into SLOW_LANE, 50 a second, until told to stop."""
    async with GatewayClient(url, backoff=(0.2, 2.0)) as client:
        await client.subscribe(SLOW_LANE)
        drain = asyncio.create_task(_discard(client))
        payload = "x" * 8192
        while not stop.is_set():
            try:
                await client.publish(SLOW_LANE, payload)
            except (ConnectionError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.02)
        drain.cancel()


async def _discard(client: GatewayClient) -> None:
    async for _ in client:
        pass


async def dropped_slow(node: Node) -> int:
    """How many clients node-a closed for not reading (slow consumer, write timeout), from its /metrics."""
    async with aiohttp.ClientSession() as session, session.get(node.url("/metrics")) as resp:
        text = await resp.text()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("websocket_connections_closed_total")
        and ('reason="slow_consumer"' in line or 'reason="write_timeout"' in line)
    )


class Publishers:
    """Per room, one message a `period` through each path: a client's publish, a plugin, the HTTP API."""

    def __init__(self, nodes: list[Node], period: float) -> None:
        self.nodes = nodes
        self.period = period
        self.sent = Counter[str]()
        self.refused = Counter[str]()
        self.clients: list[GatewayClient] = []

    async def run(self, stop: asyncio.Event) -> None:
        urls = [node.ws_url for node in self.nodes]
        tasks = []
        for n, room in enumerate(ROOMS):
            client = GatewayClient(urls[n % 3 :] + urls[: n % 3], backoff=(0.2, 2.0), request_timeout=15.0)
            await client.connect()
            await client.subscribe(room)
            self.clients.append(client)
            tasks.append(asyncio.create_task(self._drain(client)))
            tasks.append(asyncio.create_task(self._room(client, room, n, stop)))
        await stop.wait()
        await asyncio.gather(*tasks[1::2])
        for task in tasks[0::2]:
            task.cancel()
        for client in self.clients:
            await client.close()

    async def _drain(self, client: GatewayClient) -> None:
        async for message in client:
            if message.get("type") == "error":
                self.refused[message.get("error", "?")] += 1

    async def _room(self, client: GatewayClient, room: str, n: int, stop: asyncio.Event) -> None:
        http = HttpPublisher(self.nodes[(n + 1) % 3].url(""), KEY)
        seq = 0
        await asyncio.sleep(random.uniform(0, self.period))
        try:
            while not stop.is_set():
                seq += 1
                for path in ("client", "plugin", "http"):
                    data = {"path": path, "seq": seq}
                    try:
                        if path == "client":
                            await client.publish(room, data)
                        elif path == "plugin":
                            await client._send({"type": "chaos_publish", "room": room, "data": data})
                        else:
                            await http.publish(room, data)
                        self.sent[path] += 1
                    except PublishOutcomeUnknown:  # Redis took it and did not answer: stored or not, Redis says
                        self.refused[f"{path}: outcome unknown"] += 1
                    except (PublishError, aiohttp.ClientError, ConnectionError, TimeoutError, OSError):
                        self.refused[f"{path}: not sent"] += 1  # a node or Redis is away: not stored, not expected
                await asyncio.sleep(self.period)
        finally:
            await http.close()


async def stored_offsets(redis_url: str) -> dict[str, tuple[str, list[int]]]:
    """What the run stored, from Redis itself: per room its epoch and offsets."""
    redis = aioredis.from_url(redis_url)
    try:
        found = {}
        for room in ROOMS:
            meta = await redis.hgetall(f"{PREFIX}:history:{room}:meta")
            entries = await redis.xrange(f"{PREFIX}:history:{room}:stream")
            found[room] = (meta.get(b"epoch", b"").decode(), [int(entry_id.split(b"-")[0]) for entry_id, _ in entries])
        return found
    finally:
        await redis.aclose()


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of publishing and faults")
    parser.add_argument("--cut-every", type=float, default=15.0, help="seconds between two cuts of one client")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between two messages of one publisher")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    logging.getLogger("wsgate.sdk").setLevel(logging.ERROR)  # clients' reconnect notes: expected here, by the thousand
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-chaos-"))
    redis = RedisServer(workdir, persistent=True)
    await redis.start()
    nodes = [Node(name, redis.url, workdir) for name in ("node-a", "node-b", "node-c")]
    for node in nodes:
        await node.start()
    urls = [node.ws_url for node in nodes]
    subscribers = [Subscriber(urls[n % 3 :] + urls[: n % 3], ROOMS[n % len(ROOMS)]) for n in range(args.clients)]
    publishers = Publishers(nodes, args.period)
    events: list[str] = []
    rss_before = 0
    try:
        for batch in range(0, len(subscribers), 50):
            await asyncio.gather(*(client.connect() for client in subscribers[batch : batch + 50]))
        await asyncio.gather(*(client.subscribe(client.room) for client in subscribers))
        consumers = [asyncio.create_task(client.consume()) for client in subscribers]
        await asyncio.sleep(2)
        rss_before = nodes[0].rss_kib()  # node-a runs throughout
        stop_faults, stop_publishing = asyncio.Event(), asyncio.Event()
        publishing = asyncio.create_task(publishers.run(stop_publishing))

        async def cutter(client: Subscriber) -> None:
            while not stop_faults.is_set():
                await asyncio.sleep(random.uniform(0.6, 1.4) * args.cut_every)
                if not stop_faults.is_set():
                    client.cut()

        cutters = [asyncio.create_task(cutter(client)) for client in subscribers]
        d = args.duration

        slow = [
            asyncio.create_task(slow_consumer(nodes[0].port, [SLOW_LANE, *ROOMS], stop_faults))
            for _ in range(SLOW_CONSUMERS)
        ]
        flood = asyncio.create_task(flood_slow_lane(nodes[0].ws_url, stop_faults))

        async def faults() -> None:
            await asyncio.sleep(0.2 * d)
            events.append(f"{time.monotonic() - started:.0f}s: node-b restarted in restart mode (SIGTERM)")
            await nodes[1].restart_gracefully()
            await asyncio.sleep(0.2 * d)
            events.append(f"{time.monotonic() - started:.0f}s: node-c SIGKILLed and started again")
            await nodes[2].kill_and_start()
            await asyncio.sleep(0.2 * d)
            events.append(f"{time.monotonic() - started:.0f}s: Redis restarted")
            await redis.stop()
            await asyncio.sleep(1)
            await redis.start()

        await faults()
        await asyncio.sleep(max(0.0, started + d - time.monotonic()))
        events.append(
            f"slow consumers dropped by node-a: {await dropped_slow(nodes[0])} of {SLOW_CONSUMERS} "
            "(they subscribed to every room and never read)"
        )
        stop_faults.set()
        await asyncio.gather(*slow, flood)
        for task in cutters:
            task.cancel()
        stop_publishing.set()
        await publishing
        stored = await stored_offsets(redis.url)
        async with asyncio.timeout(120):  # every client catches up: resumed, replayed, live
            while any(len({o for _, o in c.received}) < len(stored[c.room][1]) for c in subscribers):
                await asyncio.sleep(0.5)
        rss_after = nodes[0].rss_kib()
        for task in consumers:
            task.cancel()
        return report(args, subscribers, stored, publishers, events, rss_before, rss_after, started)
    except TimeoutError:
        stored = await stored_offsets(redis.url)
        return report(args, subscribers, stored, publishers, events, rss_before, nodes[0].rss_kib(), started)
    finally:
        await asyncio.gather(*(client.close() for client in subscribers), return_exceptions=True)
        for node in nodes:
            await node.kill()
        await redis.stop()


def report(
    args: argparse.Namespace,
    subscribers: list[Subscriber],
    stored: dict[str, tuple[str, list[int]]],
    publishers: Publishers,
    events: list[str],
    rss_before: int,
    rss_after: int,
    started: float,
) -> int:
    rows = []
    totals = Counter[str]()
    latencies: list[float] = []
    for room in ROOMS:
        epoch, offsets = stored[room]
        members = [c for c in subscribers if c.room == room]
        row = Counter[str](stored=len(offsets), expected=len(offsets) * len(members))
        for client in members:
            seen = [o for e, o in client.received if e == epoch]
            row["delivered"] += len(set(seen) & set(offsets))
            row["duplicates"] += len(seen) - len(set(seen))
            row["order_violations"] += sum(1 for a, b in zip(seen, seen[1:], strict=False) if b <= a)
            row["other_epoch"] += sum(1 for e, _ in client.received if e != epoch)
            for outcome in ("attempted", "succeeded", "refused"):
                row[f"recoveries_{outcome}"] += client.recoveries[outcome]
            latencies += client.latencies
        rows.append((room, row))
        totals.update(row)
    columns = (
        "stored",
        "expected",
        "delivered",
        "duplicates",
        "order_violations",
        "recoveries_attempted",
        "recoveries_succeeded",
        "recoveries_refused",
    )
    table = ["| room | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    table += [f"| {room} | " + " | ".join(f"{row[c]:,}" for c in columns) + " |" for room, row in rows]
    table.append("| **total** | " + " | ".join(f"**{totals[c]:,}**" for c in columns) + " |")
    share = totals["delivered"] / totals["expected"] if totals["expected"] else 0.0
    ok = (
        totals["delivered"] == totals["expected"]
        and not totals["duplicates"]
        and not totals["order_violations"]
        and not totals["recoveries_refused"]
        and totals["stored"] > 0
    )
    command = " ".join(
        [
            "chaos/run.py",
            f"--clients {args.clients}",
            f"--duration {args.duration:g}",
            f"--cut-every {args.cut_every:g}",
            f"--period {args.period:g}",
        ]
    )
    text = f"""# Chaos run results

Measured {datetime.date.today().isoformat()} on {os.cpu_count()} cores, Python {platform.python_version()}, with
`.venv/bin/python {command}` ({time.monotonic() - started:.0f} s in all). Three wsgate nodes on a private Redis
(append-only, `appendfsync always`), {args.clients} GatewayClients in {len(ROOMS)} history rooms, publishers in
every room through a client's publish, a plugin's `gateway.publish` and the HTTP API; every client's socket cut
about every {args.cut_every:g} s (away about 2 s). Faults, in order:

{chr(10).join(f"- {event}" for event in events)}

**{share:.4%} of stored messages delivered exactly once, in offset order, to every subscribed client**
({totals["delivered"]:,} of {totals["expected"]:,}); duplicates {totals["duplicates"]}, order violations
{totals["order_violations"]}, refused recoveries {totals["recoveries_refused"]}, messages of another epoch
{totals["other_epoch"]}. Result: {"PASS" if ok else "FAIL"}.

Recovery latency (from the re-subscription with `since` to its `subscribed`, {len(latencies):,} recoveries):
p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms.
RSS of node-a (ran throughout): {rss_before / 1024:.1f} MiB before the faults, {rss_after / 1024:.1f} MiB after.
Sent: {dict(publishers.sent)}; not stored (a node or Redis away, the publisher was told): {dict(publishers.refused)}.
Slow consumers are not among the subscribers counted above (see the faults).

{chr(10).join(table)}
"""
    Path(args.output).write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
