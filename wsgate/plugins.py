"""Plugins: discovery (built-ins, entry points, settings), and calling their hooks from async code.

Built-in behaviour is registered exactly like third-party plugins. pluggy is
synchronous, so hooks are called here one implementation at a time, in pluggy's
call order (tryfirst first, then the most recently registered, trylast last), and
any awaitable result is awaited; firstresult hooks are decided after awaiting.
A hook wrapper (`wrapper=True` or `hookwrapper=True`) could not see awaited
results, so `load_plugins` refuses it, and any generator function, at start-up
(docs/plugins.md, hooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy
from aiohttp import web

from . import errors, hookspecs
from .config import ConfigError, Settings
from .errors import ClientError
from .redaction import redact
from .registry import HandlerRegistry, PluginError
from .supervision import Throttled
from .types import Client, Gateway, is_eager

log = logging.getLogger(__name__)

FAULT_LOG_INTERVAL = 10.0  # seconds between two lines about the same plugin hook's failures (with a count)


class HookTimedOut(ClientError):
    """A plugin's hook ran past `plugins.hook_timeout` and was cancelled: answered to the client as the
    documented `internal error`, with a detail saying it is temporary."""

    def __init__(self, timeout: float) -> None:
        super().__init__(errors.INTERNAL_ERROR, f"a plugin did not answer within {timeout:g}s; try again")


ENTRY_POINT_GROUP = "wsgate"

HOOKS: tuple[str, ...] = tuple(sorted(name for name in vars(hookspecs) if name.startswith("wsgate_")))
"""Every hook name of the specification (`wsgate/hookspecs.py`)."""
TABLE_HOOKS = frozenset({"wsgate_message_handlers", "wsgate_services"})
"""Hooks that build a table at load time: plain functions only (no event loop is there to await them)."""


BuiltinFactory = Callable[[Settings], object | None]
"""Builds a built-in plugin from the settings, or returns None when its settings leave it off."""


def within(timeout: float) -> contextlib.AbstractAsyncContextManager[object]:
    """`asyncio.timeout(timeout)` (seconds) inside a task. Outside any task, that is in a client message's handling
    that a reader drives by hand until it first suspends (`Dispatcher.dispatch`), no timer of its own, which
    asyncio cannot set there: that message's deadline (the dispatcher's, the same `hook_timeout`, started
    first) bounds it, and names what it awaited (`Plugins.waiting_on`)."""
    if asyncio.current_task() is None:
        return contextlib.nullcontext()
    return asyncio.timeout(timeout)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What `python -m wsgate plugins` shows about one loaded plugin."""

    name: str
    source: str
    hooks: tuple[str, ...]
    message_types: tuple[str, ...]


def import_plugin_module(name: str) -> object:
    """A `plugins.modules` entry (a dotted module path), looked up in the working directory first, then on
    sys.path: for every entry point. `python -m wsgate` and gunicorn put the working directory first on sys.path,
    the `wsgate` command its own script's directory, where `./my_plugin.py` is not found. Raises ImportError
    (ModuleNotFoundError) as `importlib.import_module` does. (importlib docs, "Importing a source file directly")
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    top = name.partition(".")[0]
    if top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module  # (what an import does: a package's submodules are then found under it)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(name)


def load_plugins(
    settings: Settings, builtins: Mapping[str, BuiltinFactory] = MappingProxyType({}), extra: Iterable[object] = ()
) -> Plugins:
    """Register `builtins` (`wsgate.builtin.BUILTIN_PLUGINS`), `plugins.modules`, entry points and `extra`
    objects (tests, embedding applications), minus `plugins.disabled`: all through the same path.

    A plugin that cannot be loaded, names an unknown hook or implements one in a form wsgate
    does not call (`unsupported_form`) raises PluginError with one line naming it, or is
    skipped with a warning when `plugins.strict` is false. Names in the settings that name no
    plugin, and plugins that implement no hook, are logged as warnings (one line each) and
    kept in `Plugins.problems`, which `wsgate check` turns into exit status 2.
    """
    config = settings.plugins
    pm = pluggy.PluginManager("wsgate")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, str] = {}
    offered: list[str] = []  # every plugin name there is, loaded, blocked or left off by its settings
    for name in config.disabled:
        pm.set_blocked(name)

    def refuse(plugin: object, message: str) -> None:
        if config.strict:
            raise PluginError(message) from None
        log.warning("%s; skipped (plugins.strict = false)", message)
        name = pm.get_name(plugin)
        pm.unregister(plugin)
        sources.pop(name or "", None)

    def register(name: str, source: str, load: Any) -> None:
        offered.append(name)
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
        register(module, "settings: plugins.modules", lambda module=module: import_plugin_module(module))
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
            message = f"plugin {name!r}: {' '.join(str(exc).split())}{_closest_hook(str(exc))}"
            refuse(exc.plugin, message)
    for name in list(sources):  # hooks in a form wsgate does not call: refused before anything calls them
        plugin = pm.get_plugin(name)
        for hook, impl in _impls_of(pm, plugin):
            if (problem := unsupported_form(hook, impl)) is not None:
                refuse(plugin, f"plugin {name!r}: {problem}")
                break
    problems = settings_problems(settings, pm, sources, offered)
    for problem in problems:
        log.warning("%s", problem)
    return Plugins(pm, sources, settings, problems)


REFUSAL_TEXT_LIMIT = 200  # characters of a refusal's body kept in its log line
REFUSAL_LOG_BURST = 20  # refusal lines per plugin per second; past it, counted and summed up in one line


class RefusalLog:
    """One INFO line for a client a plugin refused before the upgrade (docs/security.md: "whatever plugin refuses
    a client is named in the log line"): `plugin 'token_auth' refused a WebSocket from 127.0.0.1: 401
    Unauthorized: invalid token`. The reason is the response's status and its `error` / `detail` (a JSON body)
    or its text, at most REFUSAL_TEXT_LIMIT characters, with anything credential-shaped masked
    (`redaction.redact`); the request's headers, where the token travels, are never logged.

    Unauthenticated clients choose how often this happens: at most REFUSAL_LOG_BURST lines per plugin per
    second are written one by one; the rest are counted, and the next line after that second says how many.
    Writing the line never changes the answer: a body it cannot read is shown with replacement characters.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # plugin -> (second began, lines, refusals not logged)

    def __call__(self, plugin: str, refusal: web.HTTPException, request: object) -> None:
        now = self._clock()
        began, lines, unlogged = self._windows.get(plugin, (now, 0, 0))
        if now - began >= 1.0:
            if unlogged:
                log.info("plugin %r refused %d more WebSockets (not logged one by one)", plugin, unlogged)
            began, lines, unlogged = now, 0, 0
        if lines < REFUSAL_LOG_BURST:
            remote = getattr(request, "remote", None)
            log.info(
                "plugin %r refused a WebSocket from %s: %s",
                plugin,
                remote,
                refusal_reason(refusal),
                extra={"remote": remote, "plugin": plugin},
            )
            lines += 1
        else:
            unlogged += 1
        self._windows[plugin] = (began, lines, unlogged)


def refusal_reason(refusal: web.HTTPException) -> str:
    """`401 Unauthorized: invalid token (signature has expired)`: the status, its phrase, then the body's `error`
    and `detail` when it is a JSON object, else its text; bounded and redacted."""
    reason = f"{refusal.status} {refusal.reason}"
    body = refusal.body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
    if text and text != reason.partition(" ")[2] and text != f"{refusal.status}: {refusal.reason}":
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            detail = body.get("detail")
            text = body["error"] + (f" ({detail})" if isinstance(detail, str) and detail else "")
        reason += ": " + " ".join(text.split())[:REFUSAL_TEXT_LIMIT]
    return redact(reason)


def unsupported_form(hook: str, impl: pluggy.HookImpl) -> str | None:
    """Why wsgate cannot call `impl` the way pluggy defines it (one line naming the hook), or None.

    wsgate awaits each implementation's result in turn (pluggy is synchronous), so a
    wrapper (`wrapper=True`, `hookwrapper=True`) would see un-awaited results: refused on
    every hook. A generator function that is no wrapper would make its generator the result
    (an identity, a verdict): refused too. Table hooks are never awaited: `async def` refused.
    """
    if impl.wrapper or impl.hookwrapper:
        form = "wrapper=True" if impl.wrapper else "hookwrapper=True"
        return (
            f"{hook} is a hook wrapper ({form}), which wsgate does not support: it awaits each "
            "implementation in turn, so a wrapper would not see their results; use a plain "
            "implementation (tryfirst=True or trylast=True set its place)"
        )
    if inspect.isgeneratorfunction(impl.function) or inspect.isasyncgenfunction(impl.function):
        return (
            f"{hook} is a generator function: a hook implementation returns its result "
            "(wsgate supports no hook wrappers)"
        )
    if hook in TABLE_HOOKS and inspect.iscoroutinefunction(impl.function):
        return f"{hook} must be a plain function, not async"
    return None


def settings_problems(
    settings: Settings, pm: pluggy.PluginManager, sources: Mapping[str, str], offered: Iterable[str]
) -> list[str]:
    """One line per setting that names no plugin (with the closest name), and per loaded plugin that
    implements no hook: mistakes that would otherwise change nothing, silently.

    `offered`: every plugin name known to this process (built-ins, `plugins.modules`, entry points,
    application objects), including disabled ones and built-ins their settings leave off.
    """
    known = list(dict.fromkeys(offered))
    lowered = {name.lower(): name for name in known}  # `[plugins.<name>]` tables arrive lower-cased
    problems = [
        f"plugins.disabled names {name!r}, which is no plugin here{_closest(name, known)}"
        for name in settings.plugins.disabled
        if name not in known
    ]
    problems += [
        f"settings table plugins.{name} names no plugin here{_closest(name, list(lowered))}"
        for name in settings.plugins.options
        if name.lower() not in lowered
    ]
    for name, source in sources.items():
        plugin = pm.get_plugin(name)
        if not pm.get_hookcallers(plugin):
            unmarked = [attr for attr in HOOKS if callable(getattr(plugin, attr, None))]
            hint = f" (not marked with @wsgate.hookimpl: {', '.join(unmarked)})" if unmarked else ""
            problems.append(f"plugin {name!r} ({source}) implements no wsgate hook{hint}")
    return problems


def _closest(name: str, known: list[str]) -> str:
    """`; did you mean 'x'?` for the closest of `known`, or the list of them."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (plugins: {', '.join(sorted(known)) or 'none'})"


def _closest_hook(error: str) -> str:
    """pluggy's `unknown hook 'x'` error, completed with the closest hook name."""
    start = error.find("unknown hook '")
    if start < 0:
        return ""
    name = error[start + len("unknown hook '") :].split("'", 1)[0]
    close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _impls_of(pm: pluggy.PluginManager, plugin: object) -> list[tuple[str, pluggy.HookImpl]]:
    """Every hook implementation of `plugin`, with its hook's name."""
    return [
        (caller.name, impl)
        for caller in pm.get_hookcallers(plugin) or ()
        for impl in caller.get_hookimpls()
        if impl.plugin is plugin
    ]


class Plugins:
    """The loaded plugins, and the gateway's only way of calling their hooks."""

    def __init__(
        self, pm: pluggy.PluginManager, sources: Mapping[str, str], settings: Settings, problems: Iterable[str] = ()
    ) -> None:
        self.pm = pm
        self.sources = dict(sources)
        self.problems = tuple(problems)
        """Configuration mistakes found while loading (`settings_problems`), one line each."""
        self._timeout = settings.plugins.startup_timeout
        self.hook_timeout = settings.plugins.hook_timeout
        """`plugins.hook_timeout`: the limit of every per-connection and per-message hook (docs/plugins.md, hooks)."""
        self._awaiting: dict[object, str] = {}  # client -> the hook its handler awaits ("plugin 'x': wsgate_y")
        self._faults: dict[str, Throttled] = {}  # one throttled error line per plugin hook
        self._options = settings.plugins.options
        self._services: list[tuple[str, Any]] = []  # started services, to close in reverse order
        self._started: set[str] = set()  # plugins that got through start-up, to shut down
        self._call_order: dict[str, list[tuple[Callable[..., Any], tuple[str, ...], str]]] = {}
        self._refusals = RefusalLog()
        # Per-message and per-connection hooks are skipped entirely when nobody implements them.
        self.authenticates = self._implemented("wsgate_authenticate")
        self.authorizes = self._implemented("wsgate_authorize")
        # eager handlers start outside a task only while every authorization hook may too (`wsgate.eager`)
        self.authorizes_eagerly = all(is_eager(impl.function) for impl in self._impls("wsgate_authorize"))
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
        for impl in self._registered("wsgate_message_handlers"):
            registry.register(impl.plugin_name, self._call_at_load(impl, "wsgate_message_handlers", {}))
        return registry

    def collect_services(self, gateway: Gateway) -> Mapping[str, object]:
        """Every plugin's services by name; a name provided twice raises PluginError naming both."""
        services: dict[str, object] = {}
        owners: dict[str, str] = {}
        for impl in self._registered("wsgate_services"):
            provided = self._call_at_load(impl, "wsgate_services", {"gateway": gateway})
            if not isinstance(provided, Mapping):
                raise PluginError(f"plugin {impl.plugin_name!r}: wsgate_services must return a mapping")
            for name, service in provided.items():
                if name in owners:
                    raise PluginError(
                        f"service {name!r} is provided by both plugin {owners[name]!r} and plugin {impl.plugin_name!r}"
                    )
                owners[name] = impl.plugin_name
                services[name] = service
        return MappingProxyType(services)

    async def start(self, gateway: Gateway) -> None:
        """Start services (in registration order), then call `wsgate_startup` in pluggy's call order,
        each within `startup_timeout`; the first failure raises PluginError naming it."""
        for name, service in gateway.services.items():
            if callable(start := getattr(service, "start", None)):
                await self._bounded(f"service {name!r}: start", start)
            self._services.append((name, service))
        startup = self._ordered("wsgate_startup")
        waiting = {impl.plugin_name for impl in startup}
        self._started.update(name for name in self.sources if name not in waiting)  # nothing to start
        for impl in startup:
            await self._bounded(f"plugin {impl.plugin_name!r}: wsgate_startup", self._bind(impl, gateway=gateway))
            self._started.add(impl.plugin_name)

    async def stop(self, gateway: Gateway) -> None:
        """Call `wsgate_shutdown` (pluggy's call order) on the plugins that got through start-up, then close
        the started services in reverse order; failures are logged so everyone gets a turn."""
        for impl in self._ordered("wsgate_shutdown"):
            if impl.plugin_name in self._started:
                try:
                    await self._bounded(
                        f"plugin {impl.plugin_name!r}: wsgate_shutdown", self._bind(impl, gateway=gateway)
                    )
                except PluginError as exc:
                    log.error("shutdown: %s", exc, exc_info=exc.__cause__)
        self._started.clear()
        while self._services:
            name, service = self._services.pop()
            if callable(close := getattr(service, "close", None)):
                try:
                    await self._bounded(f"service {name!r}: close", close)
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
            raise ClientError(errors.NOT_ALLOWED, "no plugin approved this")
        if verdict is None or verdict is True:
            return
        # anything else denies (fail closed): a non-empty string is the error text
        raise ClientError(verdict if isinstance(verdict, str) and verdict else errors.NOT_ALLOWED)

    async def notify(self, hook: str, client: Client) -> None:
        """Call a client life-cycle hook on every plugin, each within `hook_timeout` (cancelled past it);
        failures are logged once per FAULT_LOG_INTERVAL per plugin hook, with a count (never per client)."""
        for impl in self._ordered(hook):
            what = f"plugin {impl.plugin_name!r}: {hook}"
            try:
                await self._bounded(what, self._bind(impl, client=client), self.hook_timeout, "plugins.hook_timeout")
            except PluginError as exc:
                self.fault(what, "%s (client %s)", exc, client.id, exc_info=exc.__cause__)

    def fault(self, what: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        """Log a failure of the plugin hook `what` (with `exc_info`'s traceback), at most once per
        FAULT_LOG_INTERVAL per `what`, with a count (`supervision.Throttled`): a storm of clients never
        floods the log."""
        throttled = self._faults.get(what)
        if throttled is None:
            throttled = self._faults[what] = Throttled(log, FAULT_LOG_INTERVAL, level=logging.ERROR)
        throttled(message, *args, exc_info=exc_info)

    def waiting_on(self, client: object) -> str | None:
        """The plugin hook `client`'s handler was awaiting when it was cancelled (`"plugin 'x': wsgate_y"`),
        or None; forgotten once asked (the dispatcher asks after every message)."""
        return self._awaiting.pop(client, None) if self._awaiting else None

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
        """`hook`'s implementations in registration order, tryfirst ones last (pluggy's list)."""
        impls: list[pluggy.HookImpl] = getattr(self.pm.hook, hook).get_hookimpls()
        return impls

    def _registered(self, hook: str) -> list[pluggy.HookImpl]:
        """`hook`'s implementations in registration order: for the table hooks, whose merged result no order
        changes (a type or service claimed twice is refused), so that errors name the earlier plugin first."""
        order = {name: n for n, name in enumerate(self.sources)}
        return sorted(self._impls(hook), key=lambda impl: order.get(impl.plugin_name, len(order)))

    def _ordered(self, hook: str) -> list[pluggy.HookImpl]:
        """`hook`'s implementations in pluggy's call order: tryfirst, then the last registered first,
        trylast last (`pluggy._callers._multicall` runs its list reversed). `load_plugins` refused wrappers."""
        return list(reversed(self._impls(hook)))

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

    async def _bounded(
        self, what: str, call: Callable[[], Any], timeout: float | None = None, setting: str = "plugins.startup_timeout"
    ) -> None:
        """Run `call` (sync or async) within `timeout` seconds (`setting`; by default `plugins.startup_timeout`);
        any failure is a PluginError naming `what`."""
        timeout = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                result = call()
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            raise PluginError(f"{what} did not finish within {setting} ({timeout:g}s)") from None
        except Exception as exc:
            raise PluginError(f"{what} raised {type(exc).__name__}: {exc}") from exc

    async def _first(self, hook: str, kwargs: Mapping[str, Any]) -> Any:
        calls = self._call_order.get(hook)
        if calls is None:  # the plugin set is fixed once loaded: work the order out once per hook
            calls = self._call_order[hook] = [
                (impl.function, impl.argnames, impl.plugin_name) for impl in self._ordered(hook)
            ]
        for function, argnames, name in calls:
            try:
                result = function(*[kwargs[arg] for arg in argnames])
                if inspect.isawaitable(result):
                    result = await self._awaited(f"plugin {name!r}: {hook}", result, kwargs.get("client"))
            except web.HTTPException as refusal:  # (only wsgate_authenticate refuses this way: before the upgrade)
                self._refusals(name, refusal, kwargs.get("request"))
                raise
            if result is not None:
                return result
        return None

    async def _awaited(self, what: str, result: Awaitable[Any], client: object) -> Any:
        """Await a hook's result within `hook_timeout`: past it, it is cancelled, logged (throttled) and
        HookTimedOut raised. While it waits, `waiting_on(client)` names it: a message's own deadline (the
        dispatcher's, started first) names the hook that held it up."""
        if client is not None:
            self._awaiting[client] = what
        cancelled = False
        try:
            async with within(self.hook_timeout):
                return await result
        except TimeoutError:
            self.fault(what, "%s did not finish within plugins.hook_timeout (%gs); cancelled", what, self.hook_timeout)
            raise HookTimedOut(self.hook_timeout) from None
        except asyncio.CancelledError:
            cancelled = True  # kept: the dispatcher that cancelled it asks `waiting_on`
            raise
        finally:
            if client is not None and not cancelled:
                self._awaiting.pop(client, None)
