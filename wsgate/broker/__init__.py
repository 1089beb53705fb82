"""The backplane between gateway nodes: a narrow interface (relay, room interest, history) and its implementations."""

from __future__ import annotations

from ..config import Settings
from ..metrics import Metrics
from ..supervision import Supervisor
from .base import Broker, BrokerError, Receive
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "MemoryBroker", "Receive", "make_broker"]


def make_broker(settings: Settings, metrics: Metrics, node_id: bytes, supervisor: Supervisor) -> Broker:
    """The broker `broker.url` asks for: in-memory when empty, Redis otherwise."""
    if not settings.broker.url:
        return MemoryBroker(settings.history)
    from .redis import RedisBroker  # only Redis users need redis-py

    return RedisBroker(settings.broker, metrics, node_id=node_id, history=settings.history, supervisor=supervisor)
