"""wsgate: a real-time WebSocket gateway for Python services.

The public surface for plugin authors: `hookimpl` to mark hook implementations,
the types a handler receives, and `ClientError` to answer a client with an error.
"""

from __future__ import annotations

__version__ = "0.1.0"

import pluggy  # noqa: E402

from .connection import Connection  # noqa: E402
from .protocol import ClientError, Message  # noqa: E402

hookimpl = pluggy.HookimplMarker("wsgate")

__all__ = ["ClientError", "Connection", "Message", "__version__", "hookimpl"]
