"""The operator dashboard over HTTP: login, sessions, and its static files (`dashboard.enabled`).

The page holds no secret: logging in (the password, or a JWT whose `admin_claim`
is true) sets an HttpOnly, SameSite=Strict session cookie. The browser sends it
with the dashboard's own WebSocket to `/ws`, where the built-in `dashboard`
plugin turns it into an operator identity. Everything live then arrives over
that WebSocket: the page never polls HTTP.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from aiohttp import web

from .auth import Identity
from .keys import GATEWAY

STATIC = Path(__file__).parent / "static" / "dashboard"
COOKIE = "wsgate_dashboard"
FILES = {
    "dashboard.css": "text/css", "dashboard.js": "text/javascript", "chart.js": "text/javascript",
    "login.js": "text/javascript",
}
OPERATOR = Identity("operator", {"operator": True})
"""The identity of a dashboard logged in with the password."""


def add_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard_view)
    app.router.add_post("/dashboard/login", login_view)
    app.router.add_post("/dashboard/logout", logout_view)
    app.router.add_get("/dashboard/{name}", static_view)


async def dashboard_view(request: web.Request) -> web.FileResponse:
    """The dashboard for a logged-in operator, the login form for anyone else."""
    sessions = request.app[GATEWAY].dashboard
    assert sessions is not None
    page = "index.html" if sessions.valid(request.cookies.get(COOKIE)) else "login.html"
    return web.FileResponse(STATIC / page, headers=_page_headers())


async def login_view(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    sessions, settings = gateway.dashboard, gateway.settings.dashboard
    assert sessions is not None
    form = await request.post()
    secret = str(form.get("secret", ""))
    if not (_password_matches(secret, settings.password) or _is_admin_token(gateway, secret, settings.admin_claim)):
        gateway.metrics.error("dashboard_login_failed")
        raise web.HTTPFound("/dashboard?failed=1")
    response = web.HTTPFound("/dashboard")
    response.set_cookie(COOKIE, sessions.create(), max_age=int(settings.session_ttl), httponly=True,
                        samesite="Strict", path="/", secure=request.secure)
    raise response


async def logout_view(request: web.Request) -> web.StreamResponse:
    sessions = request.app[GATEWAY].dashboard
    assert sessions is not None
    sessions.end(request.cookies.get(COOKIE))
    response = web.HTTPFound("/dashboard")
    response.del_cookie(COOKIE, path="/")
    raise response


async def static_view(request: web.Request) -> web.FileResponse:
    """The dashboard's CSS and scripts (public: they hold no data and no secret)."""
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"Content-Type": f"{FILES[name]}; charset=utf-8"})


def _page_headers() -> dict[str, str]:
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }


def _password_matches(given: str, password: str) -> bool:
    return bool(password) and hmac.compare_digest(given.encode(), password.encode())


def _is_admin_token(gateway: Any, token: str, claim: str) -> bool:
    """A JWT the JWT authenticator accepts, whose `claim` is true."""
    authenticator = gateway.plugins.pm.get_plugin("jwt")
    if authenticator is None or not token:
        return False
    claims = authenticator.verify(token)
    return bool(claims and claims.get(claim))
