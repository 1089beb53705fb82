"""The catalogue: one scenario per fault production brings, each a short, bounded script against real processes.

A scenario sets up a World (a private Redis, nodes, members), injects its fault, and records what it checks
in a `Verdicts`; the runner (`faults.run`) then checks what every scenario must leave behind (no traceback,
no client socket held once the clients are gone, no task down). `quick` scenarios run in `make test`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .harness import WAIT, Member, Node, World, until
from .invariants import NOT_SENT, OK, UNKNOWN, Verdicts, exactly_once_in_order, logged_at_most, told_the_truth, within

Run = Callable[[World, Verdicts], Awaitable[None]]

REDIS = {
    "broker.connect_timeout": "1s",
    "broker.probe_interval": "250ms",
    "broker.required": False,
    "history.rooms": ["h:*"],
    "presence.rooms": ["p:*"],
}
HEALTH_BOUND = 0.25 + 1.0 + 1.0  # probe_interval + connect_timeout, and a second of slack for a loaded machine


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # what production does
    promises: tuple[str, ...]  # what the scenario checks (faults.invariants.PROMISES)
    run: Run
    quick: bool  # part of `make test`


CATALOGUE: list[Scenario] = []


def scenario(fault: str, *promises: str, quick: bool = False) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        CATALOGUE.append(Scenario(run.__name__.replace("_", "-"), fault, promises, run, quick))
        return run

    return register


# --- what the scenarios share ----------------------------------------------------------------------------


async def publish(member: Member, room: str, key: str, timeout: float = WAIT) -> str:
    """Publish `{"key": key}` and learn what the publisher was told: OK (its own copy came back), NOT_SENT
    (`history is unavailable` ... "not sent"), UNKNOWN (any other answer: the gateway cannot know)."""
    start = len(member.messages)
    await member.send({"type": "publish", "room": room, "data": {"key": key}})
    answer = await member.wait_for(
        lambda m: (m["type"] == "error") or (m.get("room") == room and (m.get("data") or {}).get("key") == key),
        timeout,
        start,
    )
    if answer["type"] != "error":
        return OK
    if answer["error"] == "history is unavailable" and str(answer.get("detail", "")).startswith("the message was not"):
        return NOT_SENT
    return UNKNOWN


def keys_seen(member: Member, room: str) -> Counter[str]:
    return Counter(
        m["data"]["key"] for m in member.of_room(room) if isinstance(m.get("data"), dict) and "key" in m["data"]
    )


def stamps(member: Member, room: str) -> list[tuple[str, int]]:
    return [(m["epoch"], m["offset"]) for m in member.of_room(room) if "offset" in m]


async def kept(member: Member, room: str) -> list[tuple[str, int]]:
    """Every (epoch, offset) the room's history holds now (its current epoch)."""
    answer = await member.request({"type": "history", "room": room}, lambda m: m["type"] == "history")
    return [(m["epoch"], m["offset"]) for m in answer["data"]["messages"]]


async def settle(members: list[Member], sender: Member, room: str) -> None:
    """Publish a last message and wait until every member has it: whatever was on its way has arrived."""
    key = await until_ok(sender, room, f"settle-{uuid.uuid4().hex[:8]}")
    for member in members:
        await member.wait_for(lambda m: (m.get("data") or {}).get("key") == key)


async def until_ok(member: Member, room: str, key: str) -> str:
    """Publish until the gateway says it was sent (after a fault, Redis may take a moment to be back); returns
    the key of the message that got through (`key`, or `key.N` for the Nth retry)."""
    deadline = time.monotonic() + WAIT
    n = 0
    while await publish(member, room, sent := f"{key}.{n}" if n else key) != OK:
        n += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"no publish to {room} got through within {WAIT}s")
        await asyncio.sleep(0.1)  # Redis is coming back: nothing to wait on but time
    return sent


async def two_nodes(
    world: World, room: str, settings: dict[str, Any] | None = None, *, via: bool = False
) -> tuple[Node, Node, Member, Member, Member]:
    """Nodes A and B on one Redis; a publisher and a member on A, a member on B, all in `room`."""
    await world.start_redis()
    link = await world.link() if via else None
    a = await world.node("a", {**REDIS, **(settings or {})}, via=link)
    b = await world.node("b", {**REDIS, **(settings or {})}, via=link)
    publisher, ma, mb = await world.member(a, "publisher"), await world.member(a, "ma"), await world.member(b, "mb")
    for member in (publisher, ma, mb):
        assert (await member.subscribe(room))["type"] == "subscribed"
    return a, b, publisher, ma, mb


async def check_delivery(verdicts: Verdicts, outcomes: dict[str, str], room: str, members: list[Member]) -> None:
    """`told` over every publish, and `history` over what the room kept, for members that stayed."""
    await settle(members, members[0], room)
    seen = {m.name: keys_seen(m, room) for m in members}
    verdicts.add("told", told_the_truth(outcomes, seen, [m.name for m in members]))
    if room.startswith("h:"):
        kept_now = await kept(members[0], room)
        for member in members:
            got = [s for s in stamps(member, room) if s[0] == kept_now[-1][0]] if kept_now else []
            verdicts.add("history", exactly_once_in_order(got, kept_now, member.name))


async def ready_within(node: Node, status: int, bound: float, verdicts: Verdicts, what: str) -> float:
    """Seconds until /ready answers `status`; a violation of `health` past `bound`."""
    started = time.monotonic()
    await until_status(node, "/ready", status)
    took = time.monotonic() - started
    verdicts.add("health", within(took, bound, f"{node.name} /ready {status} after {what}"))
    return took


async def until_status(node: Node, path: str, status: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while (await node.get(path))[0] != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name} {path} never answered {status}")
        await asyncio.sleep(0.05)  # polling an HTTP endpoint: its answer is the event


class RawClient:
    """A client on a raw socket: completes the handshake, then sends frames as told and reads nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)

    async def open(self, node: Node, *, rooms: tuple[str, ...] = ()) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", node.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            self.sock,
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        for room in rooms:
            await self.send(0x1, f'{{"type":"subscribe","room":"{room}"}}'.encode())
        seen = b""
        async with asyncio.timeout(WAIT):
            while seen.count(b'"subscribed"') < len(rooms):
                chunk = await loop.sock_recv(self.sock, 4096)
                assert chunk, "the node closed the connection"
                seen += chunk

    async def send(self, opcode: int, payload: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, frame(opcode, payload))

    def close(self) -> None:
        self.sock.close()


def frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x80 | opcode]) + (
        bytes([0x80 | len(payload)]) if len(payload) < 126 else struct.pack("!BH", 0x80 | 126, len(payload))
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# --- Redis -------------------------------------------------------------------------------------------------


@scenario("Redis stalls for less than broker.connect_timeout (a fork, a slow command)", "told", "history", quick=True)
async def redis_stall_short(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    stall = await world.redis.stall(0.5)
    outcomes = {f"s{n}": await publish(publisher, "h:1", f"s{n}") for n in range(5)}
    await stall
    verdicts.that("told", all(o == OK for o in outcomes.values()), f"a short stall failed publishes: {outcomes}")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario("Redis stalls for longer than broker.connect_timeout while a client publishes", "told", "history")
async def redis_stall_long(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    stall = await world.redis.stall(2.5)
    await asyncio.sleep(0.2)  # the input: 0.2 s into the stall
    outcomes = {"during": await publish(publisher, "h:1", "during")}
    await stall
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario(
    "Redis restarts and comes back empty, sooner than broker.connect_timeout", "told", "history", "health", quick=True
)
async def redis_restart_empty(world: World, verdicts: Verdicts) -> None:
    a, b, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    outcomes = {"before": await publish(publisher, "h:1", "before")}
    await world.redis.stop()
    await world.redis.start()
    after = await until_ok(publisher, "h:1", "after")
    await mb.wait_for(lambda m: (m.get("data") or {}).get("key") == after)  # B subscribed again by itself
    for node in (a, b):
        await ready_within(node, 200, HEALTH_BOUND, verdicts, "Redis came back")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario("Redis is down for longer than broker.connect_timeout", "told", "health", "logged")
async def redis_down_long(world: World, verdicts: Verdicts) -> None:
    a, b, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    await world.redis.stop()
    await ready_within(a, 503, HEALTH_BOUND, verdicts, "Redis went away")
    outcomes = {"down": await publish(publisher, "h:1", "down")}
    verdicts.that(
        "told",
        outcomes["down"] == NOT_SENT,
        f"with Redis down for seconds the publisher was told {outcomes['down']}, not 'not sent'",
    )
    await world.redis.start()
    await ready_within(a, 200, HEALTH_BOUND, verdicts, "Redis came back")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])
    for node in (a, b):  # one line for the loss, whatever was published meanwhile
        verdicts.add("logged", logged_at_most(node.text(), r"lost the connection to Redis", 1, node.name))


@scenario(
    "Redis kills the nodes' pub/sub connections (CLIENT KILL TYPE pubsub)", "told", "history", "logged", quick=True
)
async def redis_kill_pubsub(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    await world.redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    outcomes = {f"k{n}": await publish(publisher, "h:1", f"k{n}") for n in range(3)}
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])
    for node in world.nodes:  # the reconnect redis-py would hide is seen, once
        await node.wait_log(r"\(pubsub connection\)")
        verdicts.add("logged", logged_at_most(node.text(), r"\(pubsub connection\)", 1, node.name))


@scenario("Redis drops a pub/sub connection over its output buffer limit", "told", "history")
async def redis_output_buffer_limit(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    await world.redis.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 32kb 1")
    outcomes = {"big": await publish(publisher, "h:1", "big")}
    await publisher.send({"type": "publish", "room": "h:1", "data": {"key": "filler", "pad": "x" * 100_000}})
    outcomes["after"] = await publish(publisher, "h:1", "after")
    await mb.wait_for(lambda m: (m.get("data") or {}).get("key") == "after", timeout=3)  # not 7 s later
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario("Redis kills the nodes' command connections (CLIENT KILL TYPE normal)", "told", "history", quick=True)
async def redis_kill_normal(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    await world.redis.command("CLIENT", "KILL", "TYPE", "normal")
    outcomes = {f"n{n}": await publish(publisher, "h:1", f"n{n}") for n in range(3)}
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario(
    "Redis is demoted to a read-only replica at the same address (a Sentinel failover)", "told", "health", "logged"
)
async def redis_read_only(world: World, verdicts: Verdicts) -> None:
    a, _, publisher, ma, mb = await two_nodes(world, "h:1")
    assert world.redis is not None
    await world.redis.command("REPLICAOF", "127.0.0.1", "1")  # a master that never answers: read-only for good
    outcomes = {"ro": await publish(publisher, "h:1", "ro")}
    verdicts.that("told", outcomes["ro"] != OK, "a replica refused the script, yet the publisher was told sent")
    await ready_within(a, 503, HEALTH_BOUND, verdicts, "Redis became a replica")
    await world.redis.command("REPLICAOF", "NO", "ONE")
    await ready_within(a, 200, HEALTH_BOUND, verdicts, "Redis became a master again")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])
    verdicts.add("logged", logged_at_most(a.text(), r"Redis refuses writes", 1, a.name))


@scenario("The link to Redis adds 30 ms to every packet", "told", "history", quick=True)
async def link_latency(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1", via=True)
    world.proxies[0].latency = 0.03
    for n in range(10):
        await publisher.send({"type": "publish", "room": "h:1", "data": {"key": f"l{n}"}})
    for member in (publisher, ma, mb):
        await member.wait_for(lambda m: (m.get("data") or {}).get("key") == "l9")
    outcomes = {f"l{n}": OK for n in range(10)}
    errors = [m for m in publisher.messages if m["type"] == "error"]
    verdicts.that("told", not errors, f"latency under connect_timeout failed publishes: {errors}")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario("The link to Redis stops carrying packets for 2.5 s, then resumes", "told", "history")
async def link_stall(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1", via=True)
    link = world.proxies[0]
    link.flowing.clear()
    resume = asyncio.get_running_loop().call_later(2.5, link.flowing.set)
    try:
        outcomes = {"stalled": await publish(publisher, "h:1", "stalled")}
    finally:
        await until(link.flowing.is_set, "the link to resume")
        resume.cancel()
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


@scenario("The link to Redis is reset (every connection at once)", "told", "history", quick=True)
async def link_reset(world: World, verdicts: Verdicts) -> None:
    _, _, publisher, ma, mb = await two_nodes(world, "h:1", via=True)
    outcomes = {"before": await publish(publisher, "h:1", "before")}
    world.proxies[0].reset()
    outcomes["right-after"] = await publish(publisher, "h:1", "right-after")
    await check_delivery(verdicts, outcomes, "h:1", [publisher, ma, mb])


# --- nodes -------------------------------------------------------------------------------------------------


@scenario("A node is SIGKILLed; its clients resume on another node", "history", quick=True)
async def node_sigkill(world: World, verdicts: Verdicts) -> None:
    a, b, publisher, ma, mb = await two_nodes(world, "h:1")
    await publish(publisher, "h:1", "first")
    await mb.wait_for(lambda m: (m.get("data") or {}).get("key") == "first")
    position = stamps(mb, "h:1")[-1]
    await b.kill()
    await mb.closed.wait()
    for n in range(3):
        await publish(publisher, "h:1", f"away{n}")
    resumed = await world.member(a, "mb-resumed")
    answer = await resumed.subscribe("h:1", since={"epoch": position[0], "offset": position[1]})
    verdicts.that("history", answer["data"].get("recovered") is True, f"resuming after a SIGKILL: {answer}")
    await settle([publisher, ma, resumed], publisher, "h:1")
    kept_now = await kept(publisher, "h:1")
    verdicts.add("history", exactly_once_in_order(stamps(mb, "h:1") + stamps(resumed, "h:1"), kept_now, "mb"))


@scenario("A node is SIGKILLed while its members are in a presence room followed on another node", "presence")
async def node_sigkill_presence(world: World, verdicts: Verdicts) -> None:
    await world.start_redis()
    settings = {**REDIS, "presence.events": True, "presence.interval": "100ms", "presence.node_ttl": "2s"}
    a, b = await world.node("a", settings), await world.node("b", settings)
    ma, mb = await world.member(a, "ma"), await world.member(b, "mb")
    await ma.subscribe("p:1")
    await mb.subscribe("p:1")
    await ma.wait_for(
        lambda m: m["type"] == "presence_diff" and any(j["client_id"] == mb.id for j in m["data"]["joins"])
    )
    await b.kill()
    started = time.monotonic()
    await ma.wait_for(
        lambda m: m["type"] == "presence_diff" and any(left["client_id"] == mb.id for left in m["data"]["leaves"]),
        timeout=2 + 2 + 5,
    )
    verdicts.add("presence", within(time.monotonic() - started, 2 + 2, "the dead node's member left after"))
    leaves = [
        m
        for m in ma.messages
        if m["type"] == "presence_diff" and any(left["client_id"] == mb.id for left in m["data"]["leaves"])
    ]
    verdicts.that("presence", len(leaves) == 1, f"the leave came {len(leaves)} times")
    answer = await ma.request({"type": "presence", "room": "p:1"}, lambda m: m["type"] in ("presence", "error"))
    members = {m["client_id"] for m in answer.get("data", {}).get("members", [])}
    verdicts.that("presence", members == {ma.id}, f"after the leave, presence answers {members}, not {{{ma.id}}}")


@scenario("A node's link to Redis is cut for longer than presence.node_ttl, then comes back", "presence", quick=True)
async def link_partition_presence(world: World, verdicts: Verdicts) -> None:
    await world.start_redis()
    settings = {**REDIS, "presence.events": True, "presence.interval": "100ms", "presence.node_ttl": "2s"}
    a = await world.node("a", settings)
    link = await world.link()
    b = await world.node("b", settings, via=link)
    ma, mb = await world.member(a, "ma"), await world.member(b, "mb")
    await ma.subscribe("p:1")
    await mb.subscribe("p:1")

    def diff(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda m: m["type"] == "presence_diff" and any(e["client_id"] == mb.id for e in m["data"][kind])

    await ma.wait_for(diff("joins"))
    link.flowing.clear()  # node B cannot reach Redis: the others take it for dead
    await ma.wait_for(diff("leaves"), timeout=2 + 2 + 5)
    back = len(ma.messages)
    link.flowing.set()
    await ma.wait_for(diff("joins"), timeout=10, start=back)  # it lived: its member is back, as a join
    answer = await ma.request({"type": "presence", "room": "p:1"}, lambda m: m["type"] in ("presence", "error"))
    members = {m["client_id"] for m in answer.get("data", {}).get("members", [])}
    verdicts.that("presence", members == {ma.id, mb.id}, f"after the partition, presence answers {members}")
    joins = [m for m in ma.messages[back:] if diff("joins")(m)]
    verdicts.that("presence", len(joins) == 1, f"the member came back {len(joins)} times")


@scenario(
    "A node is stopped with SIGTERM while a client has messages queued (shutdown.mode = drain)", "bounded", quick=True
)
async def node_sigterm_drain(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", {"shutdown.mode": "drain"}, redis=False)
    member, publisher = await world.member(node, "reader"), await world.member(node, "publisher")
    await member.subscribe("r")
    await publisher.subscribe("r")
    for n in range(200):
        await publisher.send({"type": "publish", "room": "r", "data": {"key": f"q{n}", "pad": "x" * 1000}})
    await publisher.wait_for(lambda m: (m.get("data") or {}).get("key") == "q199")
    code = await node.terminate()
    await member.closed.wait()
    got = [m["data"]["key"] for m in member.of_room("r")]
    verdicts.that("bounded", got == [f"q{n}" for n in range(200)], f"the drain delivered {len(got)} of 200")
    verdicts.that("bounded", (member.close_code, code) == (1001, 0), f"close {member.close_code}, exit {code}")


@scenario("A node restarts (shutdown.mode = restart): 1012, and its clients resume elsewhere", "history")
async def node_restart_mode(world: World, verdicts: Verdicts) -> None:
    a, b, publisher, ma, mb = await two_nodes(world, "h:1", {"shutdown.mode": "restart", "shutdown.window": "1s"})
    await publish(publisher, "h:1", "first")
    await mb.wait_for(lambda m: (m.get("data") or {}).get("key") == "first")
    position = stamps(mb, "h:1")[-1]
    await b.terminate()
    await mb.closed.wait()
    verdicts.that("history", mb.close_code == 1012, f"a restart closed with {mb.close_code}, not 1012")
    await publish(publisher, "h:1", "meanwhile")
    resumed = await world.member(a, "mb-resumed")
    answer = await resumed.subscribe("h:1", since={"epoch": position[0], "offset": position[1]})
    verdicts.that("history", answer["data"].get("recovered") is True, f"resuming after a restart: {answer}")
    await settle([publisher, ma, resumed], publisher, "h:1")
    verdicts.add(
        "history", exactly_once_in_order(stamps(mb, "h:1") + stamps(resumed, "h:1"), await kept(publisher, "h:1"), "mb")
    )


@scenario("A handler blocks the node's event loop for 2 s (ping_interval 1 s, pong_wait 1.5 s)", "bounded")
async def node_loop_stall(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", {"websocket.ping_interval": "1s", "websocket.pong_wait": "1.5s"}, redis=False)
    chatty, staller = await world.member(node, "chatty"), await world.member(node, "staller")
    stop = asyncio.Event()

    async def keep_pinging() -> None:
        while not stop.is_set():
            await chatty.send({"type": "ping"})
            await asyncio.sleep(0.1)  # the input: a ping every 100 ms

    pinger = asyncio.create_task(keep_pinging())
    try:
        await staller.request({"type": "stall", "data": 2}, lambda m: m["type"] == "stalled", timeout=10)
        await chatty.ping()
        await staller.ping()
    finally:
        stop.set()
        await pinger
    verdicts.that(
        "bounded",
        not chatty.closed.is_set() and not staller.closed.is_set(),
        f"the server's own stall closed its clients ({chatty.close_code}, {staller.close_code})",
    )


# --- clients -----------------------------------------------------------------------------------------------


@scenario("A client subscribes to a busy room and never reads", "bounded", quick=True)
async def client_never_reads(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    publisher, reader = await world.member(node, "publisher"), await world.member(node, "reader")
    await publisher.subscribe("busy")
    await reader.subscribe("busy")
    stalled = RawClient()
    try:
        await stalled.open(node, rooms=("busy",))
        rss = node.rss_kib()
        for n in range(600):  # 60 MB through the room
            await publisher.send({"type": "publish", "room": "busy", "data": {"key": f"b{n}", "pad": "x" * 100_000}})
            if n % 50 == 49:
                await reader.wait_for(lambda m, k=f"b{n}": (m.get("data") or {}).get("key") == k)
        await reader.wait_for(lambda m: (m.get("data") or {}).get("key") == "b599")
        await node.wait_log("too slow")
        verdicts.add("bounded", within((node.rss_kib() - rss) / 1024, 64, "MiB the node grew by"))
    finally:
        stalled.close()
    verdicts.that("bounded", len(keys_seen(reader, "busy")) == 600, "a reader missed messages")


@scenario("A client floods pings and never reads", "bounded", quick=True)
async def client_ping_flood(world: World, verdicts: Verdicts) -> None:
    """13 MB of pings. A read's pongs go in one write, at most 16 (connection.PONGS): what the node holds for
    the flooder stays bounded, and a bystander is served all along (a write per ping stalled everyone; with
    so few pongs, the flooder's socket no longer fills within the scenario, so no write timeout is waited)."""
    node = await world.node("solo", {"websocket.write_wait": "1s"}, redis=False)
    rss = node.rss_kib()
    bystander = await world.member(node, "bystander")
    flooder = RawClient()
    try:
        await flooder.open(node)
        burst = frame(0x9, b"p" * 125) * 1000
        for n in range(100):
            try:
                await asyncio.get_running_loop().sock_sendall(flooder.sock, burst)
            except OSError:
                break  # closed by the node: its write deadline passed
            if n % 10 == 9:
                await bystander.ping()  # served meanwhile
    finally:
        flooder.close()
    await bystander.ping()
    verdicts.add("bounded", within((node.rss_kib() - rss) / 1024, 32, "MiB the node grew by"))


@scenario("A client floods requests (websocket.limits.messages_per_second = 50)", "bounded", quick=True)
async def client_request_flood(world: World, verdicts: Verdicts) -> None:
    node = await world.node(
        "solo", {"websocket.limits.messages_per_second": 50, "websocket.limits.rate_limit_grace": "1s"}, redis=False
    )
    flooder, bystander = await world.member(node, "flooder"), await world.member(node, "bystander")

    async def flood() -> None:  # as fast as it can, for longer than the grace
        with contextlib.suppress(ConnectionError):
            while not flooder.closed.is_set():
                for _ in range(100):
                    await flooder.send({"type": "ping"})
                await asyncio.sleep(0)

    flooding = asyncio.create_task(flood())
    try:
        while not flooder.closed.is_set():
            await bystander.ping()  # served meanwhile (five times a second: within its own limit)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flooder.closed.wait(), 0.2)
    finally:
        flooding.cancel()
    verdicts.that("bounded", flooder.close_code == 1008, f"a flooder was closed with {flooder.close_code}")


@scenario("A client sends half a frame and nothing more (websocket.pong_wait = 2 s)", "bounded", quick=True)
async def client_slow_upload(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", {"websocket.ping_interval": "1s", "websocket.pong_wait": "2s"}, redis=False)
    slow = RawClient()
    try:
        await slow.open(node)
        await asyncio.get_running_loop().sock_sendall(slow.sock, frame(0x1, b'{"type":"ping"}' * 10)[:40])
        await node.wait_log(r"sent nothing for [0-9.]+s and did not answer a ping; closing", timeout=10)
    finally:
        slow.close()


@scenario("Clients leave during their handshake (reset after the upgrade request)", "bounded", "logged", quick=True)
async def client_leaves_in_handshake(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    for _ in range(20):
        client = RawClient()
        await client.open(node)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    member = await world.member(node, "after")
    await member.ping()


@scenario("A client leaves while a hook it started hangs", "bounded", quick=True)
async def client_leaves_in_hook(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    member = await world.member(node, "leaver")
    await member.send({"type": "subscribe", "room": "hang:1"})
    await member.close()
    await node.wait_log(rf"client {member.id} disconnected", timeout=10)


# --- plugins -----------------------------------------------------------------------------------------------


@scenario("A plugin's hook raises", "bounded", quick=True)
async def plugin_hook_raises(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    member = await world.member(node, "m")
    answer = await member.subscribe("boom:1")
    verdicts.that("bounded", answer.get("error") == "internal error", f"a failing hook answered {answer}")
    failed = await member.request({"type": "fail"}, lambda m: m["type"] == "error")
    verdicts.that("bounded", failed["error"] == "internal error", f"a failing handler answered {failed}")
    await member.ping()


@scenario("A plugin's hook hangs", "bounded")
async def plugin_hook_hangs(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", {"plugins.hook_timeout": "1s"}, redis=False)
    member = await world.member(node, "m")
    answer = await member.subscribe("hang:1")
    verdicts.that("bounded", answer["type"] == "error", f"a hanging hook answered {answer}")
    await member.ping()


@scenario("A plugin's hook is slow (0.3 s), for many clients at once", "bounded", quick=True)
async def plugin_hook_slow(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    members = [await world.member(node, f"m{n}") for n in range(10)]
    bystander = await world.member(node, "bystander")
    for member in members:
        await member.send({"type": "subscribe", "room": "slow:1"})
    await bystander.ping()
    answered = sum(1 for m in members if m.of_room("slow:1", "subscribed"))
    verdicts.that("bounded", answered < len(members), "the bystander waited for the slow hooks")
    for member in members:
        await member.wait_for(lambda m: m["type"] == "subscribed")


# --- the earlier rounds' kinds -----------------------------------------------------------------------------


@scenario(
    "Undecodable and non-JSON input: control characters in names, NaN, 1e400, lone surrogates", "bounded", quick=True
)
async def earlier_bad_input(world: World, verdicts: Verdicts) -> None:
    node = await world.node("solo", redis=False)
    member = await world.member(node, "m")
    for text, error in [
        ('{"type":"subscribe","room":"a\\u0000b"}', "invalid room name"),
        ('{"type":"publish","room":"r","data":NaN}', "invalid JSON format"),
        ('{"type":"publish","room":"r","data":1e400}', "invalid JSON format"),
        ('{"type":"publish","room":"r","data":"\\ud800"}', "invalid JSON format"),
        ('{"type":"subscribe","room":"evil\\u202etxt"}', "invalid room name"),
    ]:
        start = len(member.messages)
        assert member._ws is not None
        await member._ws.send_str(text)
        answer = await member.wait_for(lambda m: m["type"] == "error", start=start)
        verdicts.that("bounded", answer["error"] == error, f"{text} answered {answer}")
    await member.ping()


@scenario("A token expires while its client is connected", "bounded", quick=True)
async def earlier_token_expiry(world: World, verdicts: Verdicts) -> None:
    import jwt

    secret = "faults-secret-of-at-least-32-bytes!!"
    node = await world.node("solo", {"auth.jwt.secret": secret, "auth.jwt.leeway": "0s"}, redis=False)
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 2}, secret, algorithm="HS256")
    member = await world.member(node, "m", headers={"Authorization": f"Bearer {token}"})
    await member.closed.wait()
    verdicts.that(
        "bounded",
        (member.close_code, member.close_reason) == (4001, "token expired"),
        f"an expired token closed with {member.close_code} {member.close_reason!r}",
    )
