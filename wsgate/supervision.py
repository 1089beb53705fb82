"""Long-running tasks that never die unseen.

Every background loop of the gateway (the Redis broker's receive, subscription,
send and probe loops, the presence writer and events, the dashboard's figures,
the gauges) runs under a Supervisor: an unexpected exception is logged with its
traceback, counted in `wsgate_task_restarts_total{task}`, and the loop is started
again after a backoff (0.1 s doubling to 5 s; back to 0.1 s once it has run for
a minute). While a task waits to restart it is "down": `/health` lists it and
`/ready` answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
HEALTHY_RUN = 60.0  # seconds a task must run before its backoff starts over


class Throttled:
    """A warning for a fault that can recur per socket or per message, logged at most once per `interval`
    seconds with how many times it happened since the last line: a storm never floods the log."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        level: int = logging.WARNING,
    ) -> None:
        self._log = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._count = 0
        self._logged_at = -interval

    def __call__(self, message: str, *args: object, exc_info: BaseException | bool | None = False) -> None:
        self._count += 1
        now = self._clock()
        if now - self._logged_at >= self._interval:
            self._log.log(
                self._level, message + " (%d times since the last report)", *args, self._count, exc_info=exc_info
            )
            self._logged_at, self._count = now, 0


class Supervisor:
    """Runs named loops, restarting each after an unexpected exception."""

    def __init__(self, metrics: Metrics, *, backoff: tuple[float, float] = (BACKOFF_START, BACKOFF_MAX)) -> None:
        self._metrics = metrics
        self._backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: set[str] = set()

    @property
    def down(self) -> list[str]:
        """The tasks waiting to be restarted, by name."""
        return sorted(self._down)

    @property
    def running(self) -> int:
        return sum(not task.done() for task in self._tasks.values())

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until it returns; restart it whenever it raises. Cancel the returned task to stop it.
        Raises ValueError when a task of that name is running (names label the metric and /health)."""
        if name in self._tasks:
            raise ValueError(f"a supervised task named {name!r} is running already")
        task = asyncio.create_task(self._supervise(name, run), name=f"wsgate-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._forget(name, done))
        return task

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        self._down.discard(name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff[0]
        while True:
            started = loop.time()
            try:
                await run()
                return  # finished by itself (its owner is closing)
            except Exception:
                if loop.time() - started >= HEALTHY_RUN:
                    backoff = self._backoff[0]
                log.exception("task %s failed; restarting it in %.1fs", name, backoff, extra={"task": name})
                self._metrics.task_restarted(name)
            self._down.add(name)
            try:
                await asyncio.sleep(backoff)
            finally:
                self._down.discard(name)
            backoff = min(backoff * 2, self._backoff[1])

    async def stop(self) -> None:
        """Cancel every task still running and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
