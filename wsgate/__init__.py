"""wsgate: a real-time WebSocket gateway for Python services.

The public surface for plugin authors: `hookimpl` to mark hook implementations,
the types a handler receives, and `ClientError` to answer a client with an error.
"""

from __future__ import annotations

import pluggy

from .connection import Connection
from .protocol import ClientError, Message

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("wsgate")

__all__ = ["ClientError", "Connection", "Message", "__version__", "hookimpl"]
