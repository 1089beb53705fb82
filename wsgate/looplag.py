"""The event loop's lag: how late the loop runs what is due, measured by one small task per process.

Every `interval` seconds the monitor asks to wake up; how much later than asked it woke is the lag: the time
the loop spent in something that did not yield (a handler or hook that blocks, a long computation, a stop
of the whole process). Each measure goes to `wsgate_event_loop_lag_seconds` (a histogram); a lag of
`warn_after` seconds or more is logged, at most once per `FAULT_LOG_INTERVAL` with a count, since it delays
every client of the process (docs/operations.md). Keepalive verdicts do not need it: they count only what
the server actually did (`wsgate.keepalive`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from .metrics import Metrics
from .supervision import Throttled

log = logging.getLogger(__name__)

LAG_INTERVAL: Final = 0.25  # seconds between two measures
LAG_WARNING: Final = 0.5  # seconds of lag that are logged
FAULT_LOG_INTERVAL: Final = 10.0


async def watch_loop_lag(metrics: Metrics, *, interval: float = LAG_INTERVAL, warn_after: float = LAG_WARNING) -> None:
    """Measure the running loop's lag forever (run it under the Supervisor, once per process)."""
    loop = asyncio.get_running_loop()
    warn = Throttled(log, FAULT_LOG_INTERVAL)
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - asked)
        metrics.event_loop_lag(lag)
        if lag >= warn_after:
            warn(
                "the event loop was stalled for %.3gs: something ran without yielding (a handler or hook "
                "that blocks?); every client of this process waited",
                lag,
            )
