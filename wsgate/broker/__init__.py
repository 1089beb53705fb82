"""The backplane between gateway nodes: a narrow interface and its implementations."""

from .base import Broker, Deliver
from .memory import MemoryBroker

__all__ = ["Broker", "Deliver", "MemoryBroker"]
