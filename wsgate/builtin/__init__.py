"""Built-in plugins, all listed here, registered through the same path as third-party plugins.

Each uses only the public plugin API (`wsgate`, `wsgate.protocol`, `wsgate.config`, `wsgate.auth`,
`wsgate.origins`), so anything they do a third-party plugin can do too.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Settings
from ..plugins import BuiltinFactory


def _messages(settings: Settings) -> object:
    from . import messages  # subscribe, unsubscribe, publish, broadcast, ping, history, presence

    return messages


def _jwt(settings: Settings) -> object | None:
    if not settings.auth.jwt.enabled:
        return None  # not registered at all: nothing runs per connection
    from .jwt_auth import JwtAuthenticator

    return JwtAuthenticator(settings.auth.jwt)


def _dashboard(settings: Settings) -> object | None:
    if not settings.dashboard.enabled:
        return None  # not registered at all: nothing of it runs
    from ..dashboard.plugin import Dashboard

    return Dashboard(settings)


BUILTIN_PLUGINS: Mapping[str, BuiltinFactory] = {"messages": _messages, "jwt": _jwt, "dashboard": _dashboard}
"""Built-in plugins by name, in registration order: each factory returns the plugin, or None when its
settings leave it off. `plugins.disabled` can block any of them by name."""
