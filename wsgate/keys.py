"""Every piece of application state, one typed aiohttp AppKey per component (no module-level singletons).

`create_app` (wsgate.app) fills them; the web layer reads them. Plugins never
need these: they get `wsgate.Gateway`.
"""

from __future__ import annotations

from aiohttp import web

from .broker import Broker
from .commands import Commands
from .config import Settings
from .connection import Flusher
from .dashboard.plugin import Dashboard
from .dispatch import Dispatcher
from .gateway import Gateway
from .hub import Hub
from .metrics import Metrics
from .plugins import Plugins
from .presence import Presence, PresenceStore
from .protocol import Decoder
from .routing import Router
from .schedule import Schedule
from .supervision import Supervisor

SETTINGS = web.AppKey("wsgate.settings", Settings)
PLUGINS = web.AppKey("wsgate.plugins", Plugins)
METRICS = web.AppKey("wsgate.metrics", Metrics)
HUB = web.AppKey("wsgate.hub", Hub)
BROKER = web.AppKey("wsgate.broker", Broker)
PRESENCE_STORE = web.AppKey("wsgate.presence_store", PresenceStore)
PRESENCE = web.AppKey("wsgate.presence", Presence)
ROUTER = web.AppKey("wsgate.router", Router)
FLUSHER = web.AppKey("wsgate.flusher", Flusher)
SCHEDULE = web.AppKey("wsgate.schedule", Schedule)
SUPERVISOR = web.AppKey("wsgate.supervisor", Supervisor)
DECODER = web.AppKey("wsgate.decoder", Decoder)
DISPATCHER = web.AppKey("wsgate.dispatcher", Dispatcher)
COMMANDS = web.AppKey("wsgate.commands", Commands)
"""Server-side subscribe, unsubscribe and disconnect, on every node (the HTTP API's)."""
GATEWAY = web.AppKey("wsgate.gateway", Gateway)
"""The façade application code uses: `app[GATEWAY].publish(...)`."""
DASHBOARD = web.AppKey("wsgate.dashboard", Dashboard)
"""The built-in dashboard plugin (its logins), present only with `dashboard.enabled`."""
STARTED_AT = web.AppKey("wsgate.started_at", float)
"""`time.monotonic()` when the app was built: `/health` reports the uptime."""
