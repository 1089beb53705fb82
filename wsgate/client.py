"""Kept so `from wsgate.client import GatewayClient` goes on working: the SDK lives in `wsgate.sdk.client`."""

from .sdk.client import GatewayClient, GatewayError

__all__ = ["GatewayClient", "GatewayError"]
