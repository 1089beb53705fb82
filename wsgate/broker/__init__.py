"""The backplane between gateway nodes: a narrow interface (relay, room interest, history, commands) and its
implementations."""

from __future__ import annotations

from ..config import Settings
from ..metrics import Metrics
from ..redaction import redact_url
from ..supervision import Supervisor
from .base import Broker, BrokerError, Commanded, Receive
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Commanded", "MemoryBroker", "Receive", "describe_broker", "make_broker"]


def make_broker(
    settings: Settings, metrics: Metrics, node_id: bytes, supervisor: Supervisor, largest_message: int = 0
) -> Broker:
    """The broker `broker.url` asks for: in-memory when empty, Redis otherwise (`largest_message`: what the Redis
    broker announces to `RedisPublisher`, `overhead.largest_message`; 0: no bound)."""
    if not settings.broker.url:
        return MemoryBroker(settings.history, idempotency_window=settings.publish.idempotency_window)
    from .redis import RedisBroker  # only Redis users need redis-py

    return RedisBroker(
        settings.broker,
        metrics,
        node_id=node_id,
        history=settings.history,
        supervisor=supervisor,
        idempotency_window=settings.publish.idempotency_window,
        largest_message=largest_message,
    )


def describe_broker(settings: Settings) -> str:
    """Which broker `broker.url` names, fit for a log line or `/health`: `memory`, or the URL with its password
    (and any secret-named query parameter) masked, `redis://:***@host:6379/0` (`redaction.redact_url`)."""
    return redact_url(settings.broker.url) if settings.broker.url else "memory"
