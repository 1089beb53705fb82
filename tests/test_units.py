"""Unit tests of the core on the memory broker: Router, Hub, Connection and Dispatcher, without a server.

The functional tests (real sockets, real Redis) prove the whole; these pin each part's own promise.
A Connection here writes to a recording transport instead of a socket.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from wsgate import protocol
from wsgate.broker import BrokerError, MemoryBroker
from wsgate.clients import GatewayConnection
from wsgate.config import LimitsSettings, WebSocketSettings
from wsgate.connection import Flusher, State
from wsgate.dispatch import Dispatcher
from wsgate.history import Position, stamp, stamp_of
from wsgate.hub import Hub
from wsgate.metrics import Metrics
from wsgate.protocol import ClientError, Decoder, Message
from wsgate.registry import HandlerRegistry
from wsgate.rooms import RoomPatterns
from wsgate.routing import Router
from wsgate.wire import frame_payloads


class RecordingTransport:
    """Stands in for the socket: records every write."""

    def __init__(self) -> None:
        self.written = b""
        self.writes = 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 0, 65536

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for _, payload in frame_payloads(self.written)]


class FakeRequest:
    def __init__(self) -> None:
        self.remote = "127.0.0.1"
        self.transport = RecordingTransport()


class FakeWebSocket:
    compress = False
    close_code = None

    async def close(self, code: int, message: bytes) -> None:
        pass


class Parts:
    """A hub, router and memory broker wired as create_app wires them."""

    def __init__(self, send_queue_size: int = 100, limits: LimitsSettings | None = None) -> None:
        self.metrics = Metrics()
        self.broker = MemoryBroker()
        self.settings = WebSocketSettings(send_queue_size=send_queue_size)
        self.hub = Hub(
            limits or LimitsSettings(),
            self.metrics,
            send_queue_size=send_queue_size,
            room_added=self.broker.room_added,
            room_removed=self.broker.room_removed,
        )
        self.router = Router(self.hub, self.broker, RoomPatterns(("h*",)), self.metrics)
        self.flusher = Flusher()

    def connect(self) -> tuple[GatewayConnection, RecordingTransport]:
        request = FakeRequest()
        conn = GatewayConnection(
            FakeWebSocket(),
            None,
            request,
            settings=self.settings,  # type: ignore[arg-type]
            flusher=self.flusher,
            metrics=self.metrics,
            on_drop=self.hub.remove,
            gateway=None,
        )  # type: ignore[arg-type]
        assert self.hub.admit(conn)
        return conn, request.transport


async def turn() -> None:
    """Let the flusher (scheduled with call_soon) run."""
    await asyncio.sleep(0)


# --- Router -------------------------------------------------------------------------------------


class SlowHistory(MemoryBroker):
    """A memory broker whose history appends complete only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[asyncio.Future[bytes], bytes]] = []
        self.relayed: list[tuple[str | None, bytes]] = []

    def relay(self, room: str | None, message: bytes) -> None:
        self.relayed.append((room, message))

    def append(self, room: str, head: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append((future, self.history.append(room, head)))
        self.relayed.append((room, head))
        return future


async def test_router_delivers_locally_in_publish_order_behind_a_pending_offset() -> None:
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    conn, transport = parts.connect()
    for room in ("h1", "p1"):
        parts.hub.join(conn, room)
    first = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    await turn()
    second = asyncio.create_task(router.publish("p1", protocol.encode("message", room="p1", data=2)))
    third = asyncio.create_task(router.publish(None, protocol.encode("message", data=3)))
    await turn()
    assert transport.written == b""  # 2 and 3 wait for 1's offset
    assert [room for room, _ in broker.relayed] == ["h1", "p1", None]  # relayed in publish order at once
    future, stamped = broker.pending.pop()
    future.set_result(stamped)
    assert await asyncio.gather(first, second, third) == [1, 1, 1]
    await turn()
    assert [(m["data"], m.get("offset")) for m in transport.messages()] == [(1, 1), (2, None), (3, None)]


async def test_router_tells_the_publisher_when_history_cannot_be_kept_and_goes_on() -> None:
    parts = Parts()
    broker = SlowHistory()
    router = Router(parts.hub, broker, RoomPatterns(("h*",)), parts.metrics)
    conn, transport = parts.connect()
    parts.hub.join(conn, "h1")
    refused = asyncio.create_task(router.publish("h1", protocol.encode("message", room="h1", data=1)))
    later = asyncio.create_task(router.publish(None, protocol.encode("message", data=2)))
    await turn()
    broker.pending[0][0].set_exception(BrokerError("Redis is unreachable"))
    with pytest.raises(BrokerError):
        await refused
    assert await later == 1
    await turn()
    assert [m["data"] for m in transport.messages()] == [2]  # never 1 without an offset


async def test_router_on_the_memory_broker_never_waits() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    parts.hub.join(conn, "h1")
    assert await parts.router.publish("h1", protocol.encode("message", room="h1", data=1)) == 1
    assert (len(conn._outbox), transport.writes) == (1, 0)  # queued without the loop ever turning
    await turn()
    assert transport.messages()[0]["offset"] == 1


# --- Hub ------------------------------------------------------------------------------------------


async def test_hub_counts_members_enforces_limits_and_forgets_empty_rooms() -> None:
    added: list[str] = []
    removed: list[str] = []
    parts = Parts()
    hub = Hub(
        LimitsSettings(max_rooms_per_client=1, max_connections_per_room=1),
        parts.metrics,
        send_queue_size=10,
        room_added=added.append,
        room_removed=removed.append,
    )
    parts.hub = hub
    a, _ = parts.connect()
    b, _ = parts.connect()
    assert hub.join(a, "r") == 1
    assert hub.join(a, "r") == 1  # twice is harmless
    with pytest.raises(ClientError, match=protocol.TOO_MANY_ROOMS):
        hub.join(a, "s")
    with pytest.raises(ClientError, match=protocol.ROOM_FULL):
        hub.join(b, "r")
    with pytest.raises(ClientError, match=protocol.NOT_SUBSCRIBED):
        hub.leave(b, "r")
    hub.remove(a)
    assert (added, removed, hub.rooms) == (["r"], ["r"], {})  # the broker hears of the first and the last


async def test_hub_builds_one_frame_for_a_whole_fan_out() -> None:
    parts = Parts()
    members = [parts.connect() for _ in range(3)]
    for conn, _ in members:
        parts.hub.join(conn, "r")
    assert parts.hub.deliver("r", b'{"n":1}') == 3
    frames = {id(conn._outbox[0]) for conn, _ in members}
    assert len(frames) == 1  # the same bytes object in every outbox


# --- Connection ---------------------------------------------------------------------------------


async def test_connection_writes_every_queued_frame_with_one_system_call_per_turn() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    for n in range(5):
        conn.enqueue(b'{"n":%d}' % n)
    assert transport.writes == 0  # nothing written inside the turn
    await turn()
    assert (transport.writes, [m["n"] for m in transport.messages()]) == (1, [0, 1, 2, 3, 4])


async def test_a_full_outbox_drops_the_slow_client_and_leaves_its_rooms() -> None:
    parts = Parts(send_queue_size=2)
    conn, _ = parts.connect()
    parts.hub.join(conn, "r")
    assert [conn.put(b"x") for _ in range(3)] == [True, True, False]
    assert (conn.state, conn.close_code, conn.close_reason) == (State.CLOSING, 1008, "slow consumer")
    await turn()  # the hub forgets it on the next turn (it may be inside a fan-out now)
    assert parts.hub.rooms == {} and conn.id not in parts.hub.connections
    assert parts.metrics.error_count("slow_consumer") == 1
    await conn.stop()


# --- Dispatcher ---------------------------------------------------------------------------------


async def test_dispatcher_answers_every_failure_and_lets_nothing_escape() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    registry = HandlerRegistry()

    async def crash(client: Any, message: Message) -> None:
        raise RuntimeError("boom")

    async def refuse(client: Any, message: Message) -> None:
        raise ClientError("not today", "a detail")

    registry.register("test", {"crash": crash, "refuse": refuse})
    dispatcher = Dispatcher(registry, parts.metrics, Decoder())
    for text in ("{", "[]", '{"type":"nope"}', '{"type":"crash"}', '{"type":"refuse"}'):
        await dispatcher.dispatch(conn, text)
    await turn()
    assert [(m["error"], m.get("detail")) for m in transport.messages()] == [
        (protocol.INVALID_JSON, "the frame is not valid JSON"),
        (protocol.INVALID_JSON, "a message must be a JSON object"),
        (protocol.UNKNOWN_TYPE, None),
        (protocol.INTERNAL_ERROR, None),
        ("not today", "a detail"),
    ]
    assert parts.metrics.error_count("handler_error") == 1


def _member_of_h1(gap_wait: float) -> tuple[Parts, Router, Any]:
    """A router over a memory broker (rooms h* keep history) and one member of h1, with its transport."""
    parts = Parts()
    router = Router(parts.hub, parts.broker, RoomPatterns(("h*",)), parts.metrics, gap_wait=gap_wait)
    member, transport = parts.connect()
    parts.hub.join(member, "h1")
    return parts, router, transport


def _kept(data: int, offset: int, epoch: str) -> bytes:
    """A message to h1 carrying `data`, stamped with `offset` and `epoch`."""
    return stamp(b'{"type":"message","room":"h1","data":%d' % data, offset, epoch)


async def test_router_sends_a_rooms_offsets_in_order_and_waits_a_bounded_time_for_a_missing_one() -> None:
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    kept = [_kept(n, n, "e1") for n in range(1, 7)]
    router.expect("h1", Position(0, "e1"))
    for n in (2, 1, 3):  # another node's 2 overtook this node's 1
        router.receive("h1", kept[n - 1])
    router.receive("h1", kept[5])  # 6 arrives, 4 and 5 never do (lost while Redis was away)
    router.receive("h1", kept[0])  # 1 again: already sent
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 3]
    await asyncio.sleep(0.1)  # the gap wait passes: 6 goes out without 4 and 5
    assert [m["data"] for m in transport.messages()] == [1, 2, 3, 6]
    assert parts.metrics.error_count("history_gap") == 1


async def test_router_reads_a_missing_offset_from_the_history() -> None:
    """A relayed message lost on the way (the node's subscription dropped): the sequence reads it from the history."""
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    kept = [parts.broker.history.append("h1", b'{"type":"message","room":"h1","data":%d' % n) for n in range(1, 7)]
    router.expect("h1", Position(0, stamp_of(kept[0])[1]))
    for n in (1, 2, 3, 6):  # 4 and 5 never came through pub/sub
        router.receive("h1", kept[n - 1])
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 3]
    await asyncio.sleep(0.15)  # the gap wait passes; the history is read
    assert [m["data"] for m in transport.messages()] == [1, 2, 3, 4, 5, 6]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_a_reader_of_a_new_epoch_does_not_skip_messages_for_members_already_here() -> None:
    """Found in review: members joined when the room had no history (epoch ""); a new subscriber then read
    (1, E) while message 1 was on its way; the members must still get message 1."""
    parts, router, transport = _member_of_h1(gap_wait=0.05)
    router.expect("h1", Position(0, ""))  # what the member read
    first = _kept(1, 1, "e2")
    router.expect("h1", Position(1, "e2"))  # a newcomer read offset 1 before it came through pub/sub
    router.receive("h1", first)
    await turn()
    assert [m["data"] for m in transport.messages()] == [1]


async def test_router_a_late_message_of_an_epoch_the_history_left_does_not_turn_the_sequence_back() -> None:
    """Redis lost the room's history (epoch e1) while e1's message 3 was still on its way; e2 began meanwhile.
    The late e1 message goes out once, and e2's offsets go on without a gap wait, a re-read or a duplicate."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(0, "e1"))
    for data, offset, epoch in ((1, 1, "e1"), (2, 2, "e1"), (10, 1, "e2"), (3, 3, "e1"), (20, 2, "e2"), (30, 3, "e2")):
        router.receive("h1", _kept(data, offset, epoch))
    router.expect("h1", Position(2, "e1"))  # a slow reader of the old epoch does not turn it back either
    router.receive("h1", _kept(40, 4, "e2"))
    await turn()
    assert [m["data"] for m in transport.messages()] == [1, 2, 10, 3, 20, 30, 40]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_a_sequence_begun_in_a_later_epoch_is_not_turned_back_by_an_earlier_one() -> None:
    """Found in review: the sequence began in e2 (a reader's position); e1's 7, late, goes out once, and e2's
    offsets stay in order, once each."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(2, "e2"))
    for data, offset, epoch in ((70, 7, "e1"), (4, 4, "e2"), (3, 3, "e2"), (3, 3, "e2"), (70, 7, "e1")):
        router.receive("h1", _kept(data, offset, epoch))
    router.expect("h1", Position(9, "e1"))  # a slow reader of the earlier epoch
    router.receive("h1", _kept(5, 5, "e2"))
    await turn()
    assert [m["data"] for m in transport.messages()] == [70, 3, 4, 5]
    assert parts.metrics.error_count("history_gap") == 0


async def test_router_sends_a_late_message_of_an_earlier_epoch_once() -> None:
    """A gap fill read e1's 5 from the history; e2 began; the relay's copy of e1's 5 arrives late, and e1's 7
    and 6 later still (the two paths are not ordered): each goes out once."""
    parts, router, transport = _member_of_h1(gap_wait=60)
    router.expect("h1", Position(4, "e1"))
    for data, offset, epoch in (
        (5, 5, "e1"),
        (5, 5, "e1"),
        (10, 1, "e2"),
        (5, 5, "e1"),
        (7, 7, "e1"),
        (6, 6, "e1"),
        (7, 7, "e1"),
        (20, 2, "e2"),
    ):
        router.receive("h1", _kept(data, offset, epoch))
    await turn()
    assert [m["data"] for m in transport.messages()] == [5, 10, 7, 6, 20]


def test_a_supervised_task_name_is_taken_once() -> None:
    from wsgate.supervision import Supervisor

    async def scenario() -> None:
        supervisor = Supervisor(Metrics())
        supervisor.spawn("x", asyncio.Event().wait)
        with pytest.raises(ValueError, match="running already"):
            supervisor.spawn("x", asyncio.Event().wait)
        await supervisor.stop()

    asyncio.run(scenario())
