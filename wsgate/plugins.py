"""Plugins: discovery (built-ins, entry points, settings), and calling their hooks from async code.

Built-in behaviour is registered exactly like third-party plugins. pluggy is
synchronous, so hooks are called here one implementation at a time and any
awaitable result is awaited; firstresult hooks are decided after awaiting.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigError, Settings
from .protocol import NOT_ALLOWED, ClientError
from .registry import HandlerRegistry, PluginError
from .types import Client, Gateway

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "wsgate"


BuiltinFactory = Callable[[Settings], object | None]
"""Builds a built-in plugin from the settings, or returns None when its settings leave it off."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What `python -m wsgate plugins` shows about one loaded plugin."""

    name: str
    source: str
    hooks: tuple[str, ...]
    message_types: tuple[str, ...]


def load_plugins(
    settings: Settings, builtins: Mapping[str, BuiltinFactory] = MappingProxyType({}), extra: Iterable[object] = ()
) -> Plugins:
    """Register `builtins` (`wsgate.builtin.BUILTIN_PLUGINS`), `plugins.modules`, entry points and `extra`
    objects (tests, embedding applications), minus `plugins.disabled`: all through the same path.

    A plugin that cannot be loaded raises PluginError with one line naming it, or is
    skipped with a warning when `plugins.strict` is false.
    """
    config = settings.plugins
    pm = pluggy.PluginManager("wsgate")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, str] = {}
    for name in config.disabled:
        pm.set_blocked(name)

    def register(name: str, source: str, load: Any) -> None:
        if pm.is_blocked(name) or pm.has_plugin(name):
            return
        try:
            plugin = load()
            if plugin is None:
                return
            if pm.is_registered(plugin):  # e.g. a test passing a module its entry point loaded already
                return
            pm.register(plugin, name=name)
        except ConfigError:
            raise  # a built-in's bad setting: the one-line message names the key
        except Exception as exc:
            message = f"plugin {name!r} ({source}) failed to load: {type(exc).__name__}: {exc}"
            if config.strict:
                raise PluginError(message) from None
            log.warning("%s; skipped (plugins.strict = false)", message)
            return
        sources[name] = source

    for name, factory in builtins.items():
        register(name, "builtin", lambda factory=factory: factory(settings))
    for module in config.modules:
        register(module, "settings: plugins.modules", lambda module=module: importlib.import_module(module))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        register(ep.name, f"entry point {ep.value} from {dist}", ep.load)
    for obj in extra:
        base = getattr(obj, "__name__", None) or type(obj).__name__
        name, n = base, 1
        while pm.has_plugin(name) and not pm.is_registered(obj):
            n += 1
            name = f"{base}#{n}"
        register(name, "registered by the application", lambda obj=obj: obj)
    while True:  # a typo in a hook name is caught here, and obeys plugins.strict like a failed import
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            message = f"plugin {name!r}: {' '.join(str(exc).split())}"
            if config.strict:
                raise PluginError(message) from None
            log.warning("%s; skipped (plugins.strict = false)", message)
            pm.unregister(exc.plugin)
            sources.pop(name, None)
    return Plugins(pm, sources, settings)


class Plugins:
    """The loaded plugins, and the gateway's only way of calling their hooks."""

    def __init__(self, pm: pluggy.PluginManager, sources: Mapping[str, str], settings: Settings) -> None:
        self.pm = pm
        self.sources = dict(sources)
        self._timeout = settings.plugins.startup_timeout
        self._options = settings.plugins.options
        self._started: list[tuple[str, Any]] = []  # (what, thing) to stop, in start order
        self._call_order: dict[str, list[tuple[Callable[..., Any], tuple[str, ...]]]] = {}
        # Per-message and per-connection hooks are skipped entirely when nobody implements them.
        self.authenticates = self._implemented("wsgate_authenticate")
        self.authorizes = self._implemented("wsgate_authorize")
        self.watches_clients = self._implemented("wsgate_client_connected") or self._implemented(
            "wsgate_client_disconnected"
        )

    def get(self, name: str) -> Any:
        """The registered plugin object called `name` (None when not loaded)."""
        return self.pm.get_plugin(name)

    def options(self, name: str) -> Mapping[str, Any]:
        """The `[plugins.<name>]` settings table (empty when absent), read-only."""
        return self._options.get(name.lower(), MappingProxyType({}))

    # --- start-up ---------------------------------------------------------------------

    def build_registry(self) -> HandlerRegistry:
        """Every plugin's message handlers in one table (in registration order), naming conflicts."""
        registry = HandlerRegistry()
        for impl in self._impls("wsgate_message_handlers"):
            registry.register(impl.plugin_name, self._call_at_load(impl, "wsgate_message_handlers", {}))
        return registry

    def collect_services(self, gateway: Gateway) -> Mapping[str, object]:
        """Every plugin's services by name; a name provided twice raises PluginError naming both."""
        services: dict[str, object] = {}
        owners: dict[str, str] = {}
        for impl in self._impls("wsgate_services"):
            provided = self._call_at_load(impl, "wsgate_services", {"gateway": gateway})
            if not isinstance(provided, Mapping):
                raise PluginError(f"plugin {impl.plugin_name!r}: wsgate_services must return a mapping")
            for name, service in provided.items():
                if name in owners:
                    raise PluginError(
                        f"service {name!r} is provided by both plugin {owners[name]!r} "
                        f"and plugin {impl.plugin_name!r}"
                    )
                owners[name] = impl.plugin_name
                services[name] = service
        return MappingProxyType(services)

    async def start(self, gateway: Gateway) -> None:
        """Start services, then call `wsgate_startup` on each plugin, each within `startup_timeout`."""
        for name, service in gateway.services.items():
            if callable(start := getattr(service, "start", None)):
                await self._bounded(f"service {name!r}: start", start)
            self._started.append(("service", (name, service)))
        startup = {impl.plugin_name: impl for impl in self._impls("wsgate_startup")}
        for name in self.sources:  # registration order
            if name in startup:
                await self._bounded(f"plugin {name!r}: wsgate_startup", self._bind(startup[name], gateway=gateway))
            self._started.append(("plugin", name))

    async def stop(self, gateway: Gateway) -> None:
        """Undo `start` in reverse order, for what did start; failures are logged so everyone gets a turn."""
        shutdown = {impl.plugin_name: impl for impl in self._impls("wsgate_shutdown")}
        while self._started:
            kind, thing = self._started.pop()
            try:
                if kind == "plugin" and thing in shutdown:
                    await self._bounded(f"plugin {thing!r}: wsgate_shutdown", self._bind(shutdown[thing], gateway=gateway))
                elif kind == "service" and callable(close := getattr(thing[1], "close", None)):
                    await self._bounded(f"service {thing[0]!r}: close", close)
            except PluginError as exc:
                log.error("shutdown: %s", exc, exc_info=exc.__cause__)

    # --- per connection and per message ----------------------------------------------

    async def authenticate(self, request: Any) -> object | None:
        """The first identity a plugin returns for this request, or None (anonymous)."""
        identity: object | None = await self._first("wsgate_authenticate", {"request": request})
        return identity

    async def authorize(self, client: Client, action: str, room: str | None, *, required: bool = False) -> None:
        """Raise ClientError when a plugin denies `action`; return when allowed or nobody objects.

        `required`: a room rule leaves this to plugins, so no opinion at all denies too.
        """
        verdict = None
        if self.authorizes:
            verdict = await self._first("wsgate_authorize", {"client": client, "action": action, "room": room})
        if verdict is None and required:
            raise ClientError(NOT_ALLOWED, "no plugin approved this")
        if verdict is None or verdict is True:
            return
        # anything else denies (fail closed): a non-empty string is the error text
        raise ClientError(verdict if isinstance(verdict, str) and verdict else NOT_ALLOWED)

    async def notify(self, hook: str, client: Client) -> None:
        """Call a client life-cycle hook on every plugin, each within `startup_timeout`; failures are logged."""
        for impl in reversed(self._impls(hook)):
            try:
                await self._bounded(f"plugin {impl.plugin_name!r}: {hook}", self._bind(impl, client=client))
            except PluginError as exc:
                log.error("%s (client %s)", exc, client.id, exc_info=exc.__cause__)

    # --- listing ----------------------------------------------------------------------

    def describe(self, registry: HandlerRegistry) -> list[PluginInfo]:
        """One PluginInfo per loaded plugin, in registration order."""
        owners = registry.owners()
        infos = []
        for name, source in self.sources.items():
            plugin = self.pm.get_plugin(name)
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            types = tuple(kind for kind, owner in owners.items() if owner == name)
            infos.append(PluginInfo(name, source, hooks, types))
        return infos

    # --- helpers ----------------------------------------------------------------------

    def _implemented(self, hook: str) -> bool:
        return bool(self._impls(hook))

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        impls: list[pluggy.HookImpl] = getattr(self.pm.hook, hook).get_hookimpls()
        return impls

    def _call_at_load(self, impl: pluggy.HookImpl, hook: str, kwargs: Mapping[str, Any]) -> Any:
        """Call a hook that builds a table at load time: errors name the plugin; async is refused, not leaked."""
        try:
            result = self._bind(impl, **kwargs)()
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r}: {hook} raised {type(exc).__name__}: {exc}") from None
        if inspect.iscoroutine(result):
            result.close()
            raise PluginError(f"plugin {impl.plugin_name!r}: {hook} must be a plain function, not async")
        return result

    @staticmethod
    def _bind(impl: pluggy.HookImpl, **kwargs: Any) -> Callable[[], Any]:
        """A call of `impl` with the hook arguments it asks for (implementations may take a subset)."""
        return lambda: impl.function(*[kwargs[arg] for arg in impl.argnames])

    async def _bounded(self, what: str, call: Callable[[], Any]) -> None:
        """Run `call` (sync or async) within `plugins.startup_timeout`; any failure is a PluginError naming `what`."""
        try:
            async with asyncio.timeout(self._timeout):
                result = call()
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            raise PluginError(f"{what} did not finish within plugins.startup_timeout ({self._timeout:g}s)") from None
        except Exception as exc:
            raise PluginError(f"{what} raised {type(exc).__name__}: {exc}") from exc

    async def _first(self, hook: str, kwargs: Mapping[str, Any]) -> Any:
        calls = self._call_order.get(hook)
        if calls is None:  # the plugin set is fixed once loaded: work the order out once per hook
            calls = self._call_order[hook] = [
                (impl.function, impl.argnames) for impl in reversed(self._impls(hook))  # pluggy's order
            ]
        for function, argnames in calls:
            result = function(*[kwargs[arg] for arg in argnames])
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None
