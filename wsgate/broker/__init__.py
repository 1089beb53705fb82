"""The backplane between gateway nodes: a narrow interface and its implementations."""

from __future__ import annotations

from ..config import Settings
from ..metrics import Metrics
from .base import Broker, BrokerError, Deliver
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Deliver", "MemoryBroker", "make_broker"]


def make_broker(settings: Settings, metrics: Metrics) -> Broker:
    """The broker `broker.url` asks for: in-memory when empty, Redis otherwise."""
    if not settings.broker.url:
        return MemoryBroker(settings.history)
    from .redis import RedisBroker  # only Redis users need redis-py

    return RedisBroker(settings.broker, metrics, history=settings.history, node_ttl=settings.presence.node_ttl)
