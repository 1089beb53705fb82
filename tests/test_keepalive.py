"""Keepalive: pings every ping_interval; a client silent for pong_wait is dropped (its verdicts: wsgate.keepalive)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.keepalive import TIMER_SLACK, Action, Keepalive
from wsgate.testing import TIMEOUT, Peer, StartServer, eventually, wait_until

from .test_lean_connections import _frame, _open_raw, _read_frame

pytestmark = pytest.mark.every_loop  # asyncio's loop and uvloop's (tests/conftest.py)

FAST = {"ping_interval": "100ms", "pong_wait": "300ms"}


async def next_ping(client: Peer) -> float:
    """Wait for the server's next WebSocket ping; returns when it arrived."""
    while True:
        msg = await client.ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.PING:
            return asyncio.get_running_loop().time()
        assert msg.type is aiohttp.WSMsgType.TEXT, msg


@pytest.mark.slow
async def test_pings_every_ping_interval_and_answering_keeps_the_client(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    client = await server.connect(autoping=False)
    pings: list[float] = []
    while len(pings) < 8:  # 8 intervals: well past pong_wait
        pings.append(await next_ping(client))
        await client.ws.pong()
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    # every interval (no gap of 2 s: 20 intervals; a loaded machine may stall this process for one), never a
    # burst: the mean gap (two pings may be read together after a stall of this process)
    assert all(gap < 2.0 for gap in gaps) and sum(gaps) / len(gaps) > 0.08, gaps
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert (await server.health())[1]["clients"] == 1


async def test_a_silent_client_is_dropped_after_pong_wait(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    silent = await server.connect(autoping=False)  # never answers pings, never sends
    await silent.subscribe("room")
    conn = server.hub.connections[silent.id]
    heard = conn.last_seen  # the server's clock: when it last heard from the client (the subscribe)
    closing = await silent.closed()
    assert closing.data == 1001
    assert closing.extra == "keepalive timeout"
    assert asyncio.get_running_loop().time() - heard >= 0.3 - TIMER_SLACK  # pong_wait after it
    await wait_until(conn.closed)
    assert (await server.counts())[1] == {"status": "healthy", "clients": 0, "rooms": 0}


@pytest.mark.slow
async def test_any_message_counts_as_a_sign_of_life(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket=FAST)
    client = await server.connect(autoping=False)  # never answers a ping with a pong...
    for _ in range(8):
        await next_ping(client)
        await client.send({"type": "ping"})  # ...but keeps talking
    assert (await server.health())[1]["clients"] == 1


# --- the keepalive core (wsgate.keepalive), without sockets: the verdicts issue 21 item 4 asks for -------------


def test_a_silent_client_is_pinged_then_suspected_then_closed() -> None:
    alive = Keepalive(0.0, 1.0, 1.5)
    ping = alive.check(1.0, 0.0)
    assert (ping.action, ping.at) == (Action.PING, 1.5)
    assert alive.check(1.5, 0.0).action is Action.CONFIRM  # the reader gets its turn first
    assert alive.check(1.5, 0.0).action is Action.CLOSE


def test_a_frame_read_during_the_reader_turn_clears_the_suspicion() -> None:
    alive = Keepalive(0.0, 1.0, 1.5)
    alive.check(1.0, 0.0)
    assert alive.check(1.5, 0.0).action is Action.CONFIRM
    verdict = alive.check(1.5, 1.5)  # the reader took a frame that had arrived
    assert verdict.action is Action.WAIT and verdict.at == 2.0


def test_a_ping_sent_late_moves_the_deadline_with_it() -> None:
    """The loop stalled from 0.8 s to 2.0 s over the ping due at 1.0 s: the client could not answer a ping
    it never got, so the first check after the stall pings, and the deadline is 0.5 s after that ping."""
    alive = Keepalive(0.0, 1.0, 1.5)
    late = alive.check(2.0, 0.0)
    assert (late.action, late.at) == (Action.PING, 2.5)
    assert alive.check(2.49, 0.0).action is Action.WAIT
    assert alive.check(2.5, 0.0).action is Action.CONFIRM


def test_a_client_whose_message_is_being_handled_is_not_judged() -> None:
    alive = Keepalive(0.0, 1.0, 1.5)
    alive.check(1.0, 0.0)
    verdict = alive.check(1.5, 0.0, busy=True)
    assert verdict.action is Action.WAIT and 1.5 < verdict.at <= 2.0
    assert alive.check(2.0, 0.0, busy=True).action is Action.PING
    assert alive.check(2.5, 0.0).action is Action.CONFIRM  # free again, and still silent


@given(st.lists(st.tuples(st.floats(0, 3), st.sampled_from(["none", "before", "turn"]), st.booleans()), max_size=40))
def test_a_close_needs_pong_wait_of_silence_an_unanswered_ping_and_a_reader_turn(
    steps: list[tuple[float, str, bool]],
) -> None:
    """Whatever the loop's lateness, when the client is heard and whether its reader is busy: a client is closed
    only when nothing was heard for pong_wait, a ping sent after it was last heard went unanswered for
    pong_wait - ping_interval, the reader was free, and the reader had its turn after the silence was suspected
    (nothing heard in it). Checks are never asked for in the past."""
    interval, wait = 1.0, 1.5
    alive = Keepalive(0.0, interval, wait)
    now = heard = 0.0
    at = alive.next_ping
    pings: list[float] = []
    confirming = False
    for late, hearing, busy in steps:
        previous = now
        now = now if confirming else max(now, at) + late  # a reader turn runs at once; a timer may run late
        if hearing == "before" and not confirming:
            heard = previous + (now - previous) / 2
        elif hearing == "turn" and confirming:
            heard = now  # the reader took a frame during its turn
        verdict = alive.check(now, heard, busy=busy)
        if verdict.action is Action.CLOSE:
            assert confirming and not busy
            assert now - heard >= wait - TIMER_SLACK
            assert any(p >= heard and now - p >= wait - interval - TIMER_SLACK for p in pings)
            return
        confirming = verdict.action is Action.CONFIRM
        if verdict.action is Action.PING:
            pings.append(now)
        if verdict.action in (Action.WAIT, Action.PING):
            assert verdict.at > now
            at = verdict.at


def test_a_client_never_heard_is_closed_on_time_when_the_loop_is_on_time() -> None:
    """Liveness: without stalls, a silent client is closed at last heard + pong_wait, after one reader turn."""
    alive = Keepalive(0.0, 1.0, 1.5)
    now, verdict = 0.0, alive.check(0.0, 0.0)
    for _ in range(10):
        if verdict.action is Action.CLOSE:
            break
        if verdict.action is not Action.CONFIRM:
            now = verdict.at
        verdict = alive.check(now, 0.0)
    assert verdict.action is Action.CLOSE and now == 1.5


async def test_the_bytes_of_a_message_still_arriving_are_a_sign_of_life(wsgate_server: StartServer) -> None:
    """The second adversary: one 400 KB message uploaded at 40 KB/s was cut for "keepalive timeout" while its
    bytes arrived (only whole messages counted). Any bytes read count now: `last_seen` moves with half a frame."""
    server = await wsgate_server()
    port = server.test_server.port
    assert port is not None
    reader, writer = await _open_raw(port)
    try:
        assert (await _read_frame(reader))[0] == 0x1  # connected
        (conn,) = server.hub.connections.values()
        conn.last_seen = 0.0  # (long ago: any read moves it)
        message = json.dumps({"type": "ping", "id": "long", "pad": "x" * 40}).encode()  # (under 126 bytes)
        frame = _frame(0x1, message)
        writer.write(frame[:40])  # half of it
        await eventually(lambda: conn.last_seen > 0.0)
        writer.write(frame[40:])
        while (answer := await _read_frame(reader))[0] != 0x1:
            pass
        assert json.loads(answer[1])["id"] == "long"
    finally:
        writer.close()
