"""Kept so `from wsgate.publisher import ...` goes on working: the SDK lives in `wsgate.sdk.publisher`."""

from .sdk.publisher import HttpPublisher, PublishError, RedisPublisher

__all__ = ["HttpPublisher", "PublishError", "RedisPublisher"]
