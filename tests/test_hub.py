"""Unit tests of the Hub (wsgate/hub.py) on the memory broker, without a server."""

from __future__ import annotations

import pytest

from wsgate import protocol
from wsgate.config import LimitsSettings
from wsgate.hub import Hub
from wsgate.protocol import ClientError

from .fakes import Parts


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
