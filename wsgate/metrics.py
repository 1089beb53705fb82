"""Prometheus metrics, in a registry owned by one application (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class Metrics:
    """The gateway's counters; per-recipient code never calls in here."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.errors = Counter(
            "websocket_errors",
            "Errors by reason (invalid_json, unknown_type, slow_consumer, ...).",
            ["reason"],
            registry=self.registry,
        )

    def error(self, reason: str) -> None:
        """Count one error; `reason` is from a fixed, documented set (never a room or client id)."""
        self.errors.labels(reason).inc()

    def error_count(self, reason: str) -> float:
        """The current count for `reason` (for /health-style reports and tests)."""
        value = self.registry.get_sample_value("websocket_errors_total", {"reason": reason})
        return value or 0.0
