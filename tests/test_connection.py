"""Unit tests of a Connection (wsgate/connection.py) writing to a recording transport, without a server."""

from __future__ import annotations

from wsgate.connection import State

from .fakes import Parts, turn


async def test_connection_writes_every_queued_frame_with_one_system_call_per_turn() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    for n in range(5):
        conn.enqueue(b'{"n":%d}' % n)
    assert transport.writes == 0  # nothing written inside the turn
    await turn()
    assert (transport.writes, [m["n"] for m in transport.messages()]) == (1, [0, 1, 2, 3, 4])


async def test_a_burst_over_the_outbox_to_a_socket_that_takes_it_is_written_not_dropped() -> None:
    """send_queue_size frames within one loop turn, and more: the socket takes writes, so what is queued is
    written at once and the client stays (a burst is not a slow reader)."""
    parts = Parts(send_queue_size=2)
    conn, transport = parts.connect()
    assert [conn.put(b"x") for _ in range(5)] == [True] * 5
    assert (conn.state, transport.writes) == (State.OPEN, 2)  # the outbox written twice as it filled
    await turn()
    assert transport.written == b"x" * 5  # in order, the rest at the turn's end


async def test_a_full_outbox_drops_the_slow_client_and_leaves_its_rooms() -> None:
    parts = Parts(send_queue_size=2)
    conn, transport = parts.connect()
    transport.held = 1 << 30  # a peer that does not read: its socket holds more than send_queue_bytes
    parts.hub.join(conn, "r")
    assert [conn.put(b"x") for _ in range(3)] == [True, True, False]
    assert (conn.state, conn.close_code, conn.close_reason) == (State.CLOSING, 1008, "slow consumer")
    await turn()  # the hub forgets it on the next turn (it may be inside a fan-out now)
    assert parts.hub.rooms == {} and conn.id not in parts.hub.connections
    assert parts.metrics.error_count("slow_consumer") == 1
    await conn.stop()
