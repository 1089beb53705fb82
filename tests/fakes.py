"""The core wired without a server, for unit tests: a hub, router and memory broker as create_app wires them.

A Connection here writes to a recording transport instead of a socket; `turn()` lets the flusher run.
The functional tests (real sockets, real Redis) prove the whole; the unit tests on these parts pin each part's
own promise (tests/test_routing.py, test_hub.py, test_connection.py, test_dispatch.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wsgate.broker import MemoryBroker
from wsgate.clients import GatewayConnection
from wsgate.config import LimitsSettings, WebSocketSettings
from wsgate.connection import Flusher
from wsgate.hub import Hub
from wsgate.metrics import Metrics
from wsgate.rooms import RoomPatterns
from wsgate.routing import Router
from wsgate.schedule import Schedule
from wsgate.wire import frame_payloads


class RecordingTransport:
    """Stands in for the socket: records every write."""

    def __init__(self) -> None:
        self.written = b""
        self.writes = 0
        self.held = 0  # bytes the socket holds unsent: set it over 65,536 for a peer that does not read

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 0, 65536

    def get_write_buffer_size(self) -> int:
        return self.held

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for _, payload in frame_payloads(self.written)]


class Parts:
    """A hub, router and memory broker wired as create_app wires them."""

    def __init__(
        self,
        send_queue_size: int = 100,
        limits: LimitsSettings | None = None,
        *,
        send_queue_bytes: int = 4_194_304,
        replay_bytes: int = 0,
    ) -> None:
        self.metrics = Metrics()
        self.broker = MemoryBroker()
        self.settings = WebSocketSettings(send_queue_size=send_queue_size, send_queue_bytes=send_queue_bytes)
        self.hub = Hub(
            limits or LimitsSettings(),
            self.metrics,
            send_queue_size=send_queue_size,
            send_queue_bytes=send_queue_bytes,
            replay_bytes=replay_bytes,
            room_added=self.broker.room_added,
            room_removed=self.broker.room_removed,
        )
        self.router = Router(self.hub, self.broker, RoomPatterns(("h*",)), self.metrics)
        self.flusher = Flusher()
        self.schedule = Schedule()

    def connect(self) -> tuple[GatewayConnection, RecordingTransport]:
        transport = RecordingTransport()
        conn = GatewayConnection(
            transport,
            remote="127.0.0.1",
            settings=self.settings,
            flusher=self.flusher,
            schedule=self.schedule,
            metrics=self.metrics,
            on_drop=self.hub.remove,
            gateway=None,
        )  # type: ignore[arg-type]
        assert self.hub.admit(conn)
        return conn, transport


async def turn() -> None:
    """Let the flusher (scheduled with call_soon) run."""
    await asyncio.sleep(0)
