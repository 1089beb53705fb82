"""Every piece of application state, as typed aiohttp AppKeys (no module-level singletons)."""

from __future__ import annotations

from aiohttp import web

from .config import Settings
from .gateway import Gateway

SETTINGS = web.AppKey("wsgate.settings", Settings)
GATEWAY = web.AppKey("wsgate.gateway", Gateway)
