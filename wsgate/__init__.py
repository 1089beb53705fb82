"""wsgate: a real-time WebSocket gateway for Python services.

The public surface for plugin authors: `hookimpl` to mark hook implementations,
the interfaces a plugin sees (`Client`, `Gateway`, `Handler`, `Message`,
`Position`, `Identity`), and `ClientError` to answer a client with an error.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .auth import Identity  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .protocol import ClientError, ClientGone, Message  # noqa: E402
from .types import Client, Gateway, Handler, Position, eager  # noqa: E402

__all__ = [
    "Client",
    "ClientError",
    "ClientGone",
    "Gateway",
    "Handler",
    "Identity",
    "Message",
    "Position",
    "__version__",
    "eager",
    "hookimpl",
]
