"""Hook specifications: the contract between wsgate and its plugins.

Every hook is prefixed `wsgate_`, is called with keyword arguments, and is
documented here: when it is called, with what, and what its result means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import Message

hookspec = pluggy.HookspecMarker("wsgate")

Handler = Callable[["Connection", "Message"], Awaitable[Any]]
"""`async def handler(client, message)`: handles one message type for one client."""


@hookspec
def wsgate_message_handlers() -> Mapping[str, Handler]:
    """Return the message types this plugin handles, mapped to their async handlers.

    Called once at start-up, before the server accepts connections. Every plugin's
    mapping is merged into one table; two plugins claiming the same type stop
    start-up with an error naming the type and both plugins. A handler answers
    through `client.send(...)`, raises `wsgate.ClientError(text)` to answer an
    `error` message, and reaches the running gateway as `client.gateway`.
    """
    raise AssertionError("hookspec bodies are never run")
