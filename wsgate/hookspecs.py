"""Hook specifications: the contract between wsgate and its plugins.

Every hook is prefixed `wsgate_` and called with keyword arguments; an
implementation may accept any subset of them. Every hook except the two that
build tables at load time (`wsgate_message_handlers`, `wsgate_services`) may be
`async def`: wsgate awaits the result (and, for firstresult hooks, decides
after awaiting). Hooks on the per-message path (`wsgate_authorize`) cost
nothing when no plugin implements them.

Forms (pluggy's `hookimpl` options): plain, `tryfirst=True` and `trylast=True`
work on every hook, in pluggy's call order (tryfirst ones first, then the most
recently registered plugin first, trylast ones last); the two table hooks merge
in registration order, which no order can change but the naming in a clash
error. Hook wrappers (`wrapper=True`, `hookwrapper=True`) are refused on every
hook at start-up with one line naming the plugin and the hook (exit 2, or the
plugin skipped when `plugins.strict` is false): wsgate awaits each
implementation in turn, since pluggy is synchronous, so a wrapper would only
see un-awaited results. A generator function that is no wrapper is refused
the same way (its generator would become the result, e.g. an identity).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

import pluggy
from aiohttp import web

from .types import Client, Gateway, Handler

hookspec = pluggy.HookspecMarker("wsgate")
hookimpl = pluggy.HookimplMarker("wsgate")
"""Marks a plugin's hook implementations (re-exported as `wsgate.hookimpl`)."""


@hookspec
def wsgate_message_handlers() -> Mapping[str, Handler]:
    """Return the message types this plugin handles, mapped to their async handlers.

    Called once at start-up, before the server accepts connections (must not be
    async). Every plugin's mapping is merged into one table; two plugins claiming
    the same type stop start-up with an error naming the type and both plugins.

    A handler (`wsgate.Handler`) gets a `wsgate.Client` and the decoded
    `wsgate.Message`. It answers through `client.send({...})`, raises
    `wsgate.ClientError(text)` to answer `{"type":"error","error":text}`, and
    reaches the running gateway (`wsgate.Gateway`) as `client.gateway`. Any other
    exception answers `internal error` and is logged.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec
def wsgate_services(gateway: Gateway) -> Mapping[str, object]:
    """Return named services (the spec's service layer) this plugin provides.

    Called once at start-up (must not be async), before `wsgate_startup`. Each
    service is reachable as `gateway.services[name]` by handlers and other plugins.
    The gateway owns their life cycle: a service with an `async start()` method is
    started at start-up (within `plugins.startup_timeout`) and one with an
    `async close()` method is closed at shutdown, in reverse order. Two plugins
    providing the same name stop start-up naming both.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec
def wsgate_startup(gateway: Gateway) -> Awaitable[None] | None:
    """The gateway is starting: open resources (connections, files, background tasks).

    Called once per plugin after services are started and before the first client
    is accepted, in pluggy's call order (tryfirst, then the last registered first,
    trylast). Each plugin must finish within `plugins.startup_timeout`; an
    exception or a timeout stops start-up with a line naming the plugin.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec
def wsgate_shutdown(gateway: Gateway) -> Awaitable[None] | None:
    """The gateway is stopping: close what `wsgate_startup` opened.

    Called once per plugin that got through start-up, in pluggy's call order
    (tryfirst, then reverse registration order, trylast), after every client
    has been closed. Errors and timeouts (`plugins.startup_timeout`) are logged;
    shutdown goes on for the other plugins.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec(firstresult=True)
def wsgate_authenticate(request: web.Request) -> object | Awaitable[object] | None:
    """Decide who is connecting, before the WebSocket upgrade.

    Called for every request to `/ws`, with the aiohttp request (headers, query,
    cookies). Return an identity (any object; it becomes `client.identity`) to
    accept, or None for no opinion (the next plugin is asked; when every plugin
    has no opinion the client connects anonymously, `client.identity is None`).
    Raise `aiohttp.web.HTTPUnauthorized` / `HTTPForbidden` (or any HTTPException)
    to refuse: that response is sent and no WebSocket is opened. firstresult.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec(firstresult=True)
def wsgate_authorize(client: Client, action: str, room: str | None) -> bool | str | None | Awaitable[bool | str | None]:
    """May `client` perform `action` ("subscribe", "publish", "broadcast", "history", "presence") on `room`?

    Called before each built-in subscribe, publish, broadcast, history and presence (`room`
    is None for broadcast), after the `[auth]` rules allowed it; never called when
    no plugin implements it and no rule leaves the decision to plugins. Return None for no
    opinion, True to allow, False to deny with the error `not allowed`, or a
    string to deny with that error text. firstresult: the first answer that is not
    None decides.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec
def wsgate_client_connected(client: Client) -> Awaitable[None] | None:
    """A client was admitted; called after its `connected` message was queued.

    Exceptions are logged and do not affect the client.
    """
    raise AssertionError("hookspec bodies are never run")


@hookspec
def wsgate_client_disconnected(client: Client) -> Awaitable[None] | None:
    """A client is gone: called once per client, after it has left every room and its socket is closed.

    `client.rooms` is empty by then; `client.id` and `client.identity` are still set.
    Exceptions are logged and do not affect other clients.
    """
    raise AssertionError("hookspec bodies are never run")
