"""The plugin manager: built-in plugins and entry-point plugins, through one path."""

from __future__ import annotations

import importlib
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
    """A fresh manager with the built-ins and every installed `wsgate` entry point, minus `plugins.disabled`."""
    pm = pluggy.PluginManager("wsgate")
    pm.add_hookspecs(hookspecs)
    for name in settings.plugins.disabled:
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None
    return pm


def build_registry(pm: pluggy.PluginManager) -> HandlerRegistry:
    """Collect every plugin's message handlers into one table, naming conflicts."""
    registry = HandlerRegistry()
    for impl in reversed(pm.hook.wsgate_message_handlers.get_hookimpls()):  # registration order
        registry.register(impl.plugin_name, impl.function())
    return registry
