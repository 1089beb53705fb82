"""One event-loop timer for many callbacks due at about the same times: every client's keepalive.

A timer per connection costs an asyncio TimerHandle and its Context (about 200 bytes) and a heap operation
among all of them (O(log n) comparisons of Python objects) each time it is set: with 100,000 idle clients that
is 1,850 timers a second, each moved through a heap of 100,000 (docs/performance.md, "Idle CPU"). Here a time
is rounded up to `resolution` seconds and the connection put in that tick's set; one loop timer, armed for the
earliest tick, calls each due connection's `due()`. Nothing runs early; it runs up to `resolution` late, which
the keepalive rules allow for (`wsgate.keepalive`: the server's own lateness never counts as a client's silence).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

log = logging.getLogger(__name__)

RESOLUTION = 0.05  # seconds: how late a keepalive may run (pings are due every ping_interval, 54 s by default)


class Due(Protocol):
    def due(self) -> None:
        """Called once its time has come; it catches its own exceptions."""


class Schedule:
    """Ticks of `resolution` seconds (loop time), each with the set of what is due then."""

    __slots__ = ("_loop", "_resolution", "_ticks", "_order", "_timer", "_armed")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._loop = asyncio.get_running_loop()
        self._resolution = resolution
        self._ticks: dict[int, set[Due]] = {}
        self._order: list[int] = []  # a heap of the ticks (a tick emptied by `cancel` stays until it comes up)
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # the tick the timer is armed for

    def at(self, when: float, entry: Due) -> int:
        """Call `entry.due()` at loop time `when` or up to `resolution` later; returns its tick (for `cancel`)."""
        tick = math.ceil(when / self._resolution)
        entries = self._ticks.get(tick)
        if entries is None:
            entries = self._ticks[tick] = set()
            heapq.heappush(self._order, tick)
            if tick < self._armed:
                self._arm(tick)
        entries.add(entry)
        return tick

    def cancel(self, tick: int, entry: Due) -> None:
        entries = self._ticks.get(tick)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self._ticks[tick]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._ticks.values())

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = self._loop.call_at(tick * self._resolution, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed = None, math.inf
        now = self._loop.time()
        order = self._order
        while order and order[0] * self._resolution <= now:
            entries = self._ticks.pop(heapq.heappop(order), None)
            for entry in entries or ():
                try:
                    entry.due()
                except Exception:  # never expected: each entry catches its own
                    log.exception("a scheduled callback failed")
        while order and order[0] not in self._ticks:  # ticks emptied by cancel
            heapq.heappop(order)
        if order:
            self._arm(order[0])
