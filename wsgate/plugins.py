"""The plugin manager: built-in plugins and entry-point plugins, through one path."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping

import pluggy

from . import hookspecs
from .config import Settings
from .registry import HandlerRegistry, PluginError

ENTRY_POINT_GROUP = "wsgate"
BUILTIN_PLUGINS: Mapping[str, str] = {
    "messages": "wsgate.builtin.messages",  # subscribe, unsubscribe, publish, broadcast, ping
}


def make_plugin_manager(settings: Settings) -> pluggy.PluginManager:
    """A fresh manager with the built-ins and every installed `wsgate` entry point, minus `plugins.disabled`.

    A plugin that cannot be loaded raises PluginError with one line naming it.
    """
    pm = pluggy.PluginManager("wsgate")
    pm.add_hookspecs(hookspecs)
    for name in settings.plugins.disabled:
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(entry_point.name) or pm.has_plugin(entry_point.name):
            continue
        try:
            pm.register(entry_point.load(), name=entry_point.name)
        except Exception as exc:
            raise PluginError(
                f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from None
    return pm


def build_registry(pm: pluggy.PluginManager) -> HandlerRegistry:
    """Collect every plugin's message handlers into one table (in registration order), naming conflicts."""
    registry = HandlerRegistry()
    for impl in pm.hook.wsgate_message_handlers.get_hookimpls():
        try:
            handlers = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: wsgate_message_handlers raised {type(exc).__name__}: {exc}"
            ) from None
        registry.register(impl.plugin_name, handlers)
    return registry
