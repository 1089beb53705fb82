"""Prometheus metrics, in a registry owned by one application (tests build many apps).

Nothing here is called per recipient: a fan-out is counted once, adding N. Message counts move as plain
integers and reach their Prometheus counters in batches (`Metrics.publish_counts`, every second and on scrape).
Under gunicorn with `PROMETHEUS_MULTIPROC_DIR` set, prometheus-client keeps
values in per-process files and a scrape sums them over the workers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from .errors import CLIENT_CLOSED_LABEL, CloseReason, WsgateError

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsError", "Throughput"]

THROUGHPUT_WINDOW = 10.0  # seconds over which websocket_messages_per_second is averaged


class Throughput:
    """Events per second over the last `window` seconds, from samples of a running total."""

    def __init__(self, window: float = THROUGHPUT_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> float:
        """Record `total` at time `now`; return the rate over the window (0 until two samples)."""
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        (first_time, first_total) = samples[0]
        elapsed = now - first_time
        return (total - first_total) / elapsed if elapsed > 0 else 0.0


class MetricsError(WsgateError):
    """Metrics cannot be kept (in multiprocess mode: the directory is missing or not writable)."""


class Metrics:
    """The gateway's metrics (docs/operations.md lists them, generated from here)."""

    def __init__(self, message_types: Iterable[str] = ()) -> None:
        try:
            self._create(message_types)
        except OSError as exc:  # multiprocess mode writes a file per metric and process
            raise MetricsError(
                f"cannot keep metrics ({exc.strerror or exc}: {exc.filename}); "
                "PROMETHEUS_MULTIPROC_DIR must name an existing, writable directory"
            ) from None

    def _create(self, message_types: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.clients = Gauge("websocket_clients_total", "Connected clients.", registry=reg, multiprocess_mode="livesum")
        self.rooms = Gauge(
            "websocket_rooms_total",
            "Rooms with at least one member (per process).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.throughput = Gauge(
            "websocket_messages_per_second",
            f"Messages delivered to clients per second, averaged over {THROUGHPUT_WINDOW:g}s.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.errors = Counter(
            "websocket_errors",
            "Errors by reason (invalid_json, unknown_type, slow_consumer, ...).",
            ["reason"],
            registry=reg,
        )
        self.received = Counter(
            "websocket_messages_received",
            "Messages received from clients, by message type.",
            ["type"],
            registry=reg,
        )
        self.delivered = Counter(
            "websocket_messages_delivered", "Messages queued for delivery to clients.", registry=reg
        )
        self.opened = Counter("websocket_connections_opened", "Connections accepted.", registry=reg)
        self.closed = Counter("websocket_connections_closed", "Connections ended, by reason.", ["reason"], registry=reg)
        self.duration = Histogram(
            "websocket_connection_duration_seconds",
            "How long connections lasted.",
            registry=reg,
            buckets=(1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600, float("inf")),
        )
        self.broker_errors = Counter(
            "websocket_broker_errors", "Failed broker operations (Redis unreachable, publish failed).", registry=reg
        )
        self.broker_reconnects = Counter(
            "websocket_broker_reconnects", "Times the broker reconnected after losing Redis.", registry=reg
        )
        self.connection_reconnects = Counter(
            "wsgate_broker_reconnects",
            "Redis connections of this node that were lost and connected again, whoever reconnected them "
            "(wsgate, or redis-py's own retry), by kind: pubsub, commands, presence.",
            ["connection"],
            registry=reg,
        )
        self.broker_dropped_messages = Counter(
            "websocket_broker_dropped_messages",
            "Messages delivered locally but not relayed to other nodes (Redis away or too slow).",
            registry=reg,
        )
        self.task_restarts = Counter(
            "wsgate_task_restarts",
            "Background tasks restarted after an unexpected exception, by task.",
            ["task"],
            registry=reg,
        )
        self.loop_lag = Histogram(
            "wsgate_event_loop_lag_seconds",
            "How late the event loop ran a timer (measured every 0.25s): time it spent in code that did not yield.",
            registry=reg,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")),
        )
        # Children of labelled counters are looked up once, not per message.
        self._received_by_type = {kind: self.received.labels(kind) for kind in message_types}
        self._received_other = self.received.labels("unknown")
        # Per message, only plain integers move: the Prometheus counters (a lock each, and a file write in
        # multiprocess mode) take them in batches, at every `sample` and `exposition` (`publish_counts`).
        self._received_pending = dict.fromkeys(self._received_by_type, 0)
        self._received_other_pending = 0
        self._delivered_total = 0
        self._delivered_published = 0
        self._received_total = 0
        self._rate = Throughput()

    # --- counting (cheap: one call per message or per fan-out) ------------------------

    def message_received(self, kind: str) -> None:
        """Count one client message; types no plugin handles share the label `unknown`. Reaches
        `websocket_messages_received_total` at the next `publish_counts` (within a second: `sample`)."""
        self._received_total += 1
        pending = self._received_pending
        if kind in pending:
            pending[kind] += 1
        else:
            self._received_other_pending += 1

    def messages_delivered(self, count: int) -> None:
        """Count `count` messages queued to clients (a whole fan-out at once). Reaches
        `websocket_messages_delivered_total` at the next `publish_counts` (within a second: `sample`)."""
        self._delivered_total += count

    def publish_counts(self) -> None:
        """Hand the messages counted since the last call to their Prometheus counters (one `inc` per counter
        that moved, not one per message)."""
        pending = self._received_pending
        for kind, count in pending.items():
            if count:
                self._received_by_type[kind].inc(count)
                pending[kind] = 0
        if self._received_other_pending:
            self._received_other.inc(self._received_other_pending)
            self._received_other_pending = 0
        delivered = self._delivered_total
        if delivered != self._delivered_published:
            self.delivered.inc(delivered - self._delivered_published)
            self._delivered_published = delivered

    def error(self, reason: str) -> None:
        """Count one error; `reason` is from a fixed, documented set (never a room or client id)."""
        self.errors.labels(reason).inc()

    def broker_error(self) -> None:
        self.broker_errors.inc()

    def task_restarted(self, task: str) -> None:
        """Count one restart of a supervised task (`task` is one of a fixed set of names)."""
        self.task_restarts.labels(task).inc()

    def broker_reconnected(self) -> None:
        self.broker_reconnects.inc()

    def connection_reconnected(self, kind: str) -> None:
        """Count one reconnect of a Redis connection; `kind` is `pubsub`, `commands` or `presence`."""
        self.connection_reconnects.labels(kind).inc()

    def broker_dropped(self, count: int) -> None:
        self.broker_dropped_messages.inc(count)

    def event_loop_lag(self, seconds: float) -> None:
        """Record one measure of the event loop's lag (`wsgate.looplag`)."""
        self.loop_lag.observe(seconds)

    def connection_opened(self) -> None:
        self.opened.inc()

    def connection_closed(self, reason: CloseReason | None, seconds: float) -> None:
        """Count one ended connection under its reason's label (`client` when `reason` is None: the client
        closed it, or it was lost), and observe how long it lasted (`seconds`)."""
        self.closed.labels(CLIENT_CLOSED_LABEL if reason is None else reason.label).inc()
        self.duration.observe(seconds)

    # --- gauges and exposition -----------------------------------------------------

    def sample(self, clients: int, rooms: int, now: float | None = None) -> None:
        """Refresh the gauges and publish the message counts: called every second by the gateway, and on each
        scrape."""
        self.publish_counts()
        self.clients.set(clients)
        self.rooms.set(rooms)
        self.throughput.set(self._rate.sample(time.monotonic() if now is None else now, self._delivered_total))

    def exposition(self) -> bytes:
        """The Prometheus text format: this app's registry, or every worker's files in multiprocess mode."""
        self.publish_counts()
        if values.ValueClass is values.MutexValue:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def totals(self) -> dict[str, Any]:
        """Messages received and delivered so far, and errors by reason (the dashboard's figures)."""
        errors = {
            sample.labels["reason"]: sample.value
            for metric in self.errors.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        return {"received": self._received_total, "delivered": self._delivered_total, "errors": errors}

    def error_count(self, reason: str) -> float:
        """The current count for `reason` (used by tests and reports)."""
        value = self.registry.get_sample_value("websocket_errors_total", {"reason": reason})
        return value or 0.0
