"""The message-type table: which handler, from which plugin, serves each type."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from .errors import WsgateError
from .types import Handler, is_eager


class PluginError(WsgateError):
    """A plugin cannot be used; the message is one line naming the plugin(s)."""


class HandlerRegistry:
    """Message type -> handler, filled once at start-up; read on every message."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._owners: dict[str, str] = {}

    def register(self, plugin: str, handlers: object) -> None:
        """Add one plugin's handlers; a type claimed twice raises PluginError naming both plugins."""
        if not isinstance(handlers, Mapping):
            raise PluginError(
                f"plugin {plugin!r}: wsgate_message_handlers must return a mapping, not {type(handlers).__name__}"
            )
        for kind, handler in handlers.items():
            if not isinstance(kind, str) or not kind:
                raise PluginError(f"plugin {plugin!r} registers an invalid message type {kind!r}")
            if not callable(handler):
                raise PluginError(f"plugin {plugin!r} registers a non-callable handler for {kind!r}")
            owner = self._owners.get(kind)
            if owner is not None:
                raise PluginError(f"message type {kind!r} is claimed by both plugin {owner!r} and plugin {plugin!r}")
            self._handlers[kind] = handler
            self._owners[kind] = plugin

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def types(self) -> list[str]:
        """Every message type handled, sorted."""
        return sorted(self._handlers)

    def eager_types(self) -> frozenset[str]:
        """The types whose handler is marked `wsgate.eager`."""
        return frozenset(kind for kind, handler in self._handlers.items() if is_eager(handler))

    def closest(self, kind: str) -> str | None:
        """The handled type `kind` is most likely a typo of (`Subscribe`, `subscibe`, `pubish`), compared
        without case (difflib's ratio of at least 0.75); None when none is close."""
        lowered = {name.lower(): name for name in self._handlers}
        if kind.lower() in lowered:
            return lowered[kind.lower()]
        match = difflib.get_close_matches(kind.lower(), lowered, n=1, cutoff=0.75)
        return lowered[match[0]] if match else None

    def unknown(self, kind: str) -> str:
        """The detail of `unknown message type` for `kind` (protocol 2): the types this server handles, and the
        closest one when `kind` looks like a typo of it. At most 64 characters of `kind` are quoted."""
        known = f"this server handles {', '.join(self.types())}"
        closest = self.closest(kind) if len(kind) <= 64 else None
        return known if closest is None else f"did you mean {closest!r}? {known}"

    def owners(self) -> Mapping[str, str]:
        """Message type -> name of the plugin that handles it."""
        return dict(self._owners)
