"""What plugins receive as a `wsgate.Client`: a Connection together with the gateway it belongs to.

`Connection` knows nothing of the gateway (it gets its collaborators in its
constructor); this subclass adds the one attribute plugins reach everything
through, `client.gateway`, typed as the narrow `wsgate.Gateway` protocol.
"""

from __future__ import annotations

from typing import Any

from .connection import Connection
from .types import Gateway


class GatewayConnection(Connection):
    """A Connection bound to its gateway: what plugins receive as `wsgate.Client` (it satisfies that protocol)."""

    __slots__ = ("gateway", "subscribing", "leaving")

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.subscribing: dict[str, int] = {}
        """Rooms a subscribe (its own or the server's) is joining and answering, with how many (`wsgate.gateway`)."""
        self.leaving: set[str] | None = None
        """Rooms of `subscribing` the server unsubscribed it from meanwhile: left once they are answered (None
        until there is one: an idle connection holds no empty set)."""
