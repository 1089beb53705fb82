"""The operator dashboard over HTTP: the page, login, logout and its static files (`dashboard.enabled`).

The page holds no secret: logging in (the password, or a JWT whose `admin_claim`
is true) sets an HttpOnly, SameSite=Strict session cookie. The browser sends it
with the dashboard's own WebSocket to `/ws`, where the built-in `dashboard`
plugin turns it into an operator identity. Everything live then arrives over
that WebSocket: the page never polls HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from math import ceil
from pathlib import Path
from typing import Any

from aiohttp import web

from ..keys import DASHBOARD, METRICS, PLUGINS, SETTINGS
from ..origins import same_host
from .plugin import LOGGED_OUT, REPLACED
from .sessions import COOKIE, DEVICE_COOKIE, DEVICE_TTL

STATIC = Path(__file__).parent / "static"
FILES = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "chart.js": "text/javascript",
    "login.js": "text/javascript",
}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard_view)
    app.router.add_post("/dashboard/login", login_view)
    app.router.add_post("/dashboard/logout", logout_view)
    app.router.add_get("/dashboard/{name}", static_view)
    app.router.add_get("/favicon.ico", favicon_view)


async def dashboard_view(request: web.Request) -> web.FileResponse:
    """The dashboard for a logged-in operator, the login form for anyone else."""
    sessions = request.app[DASHBOARD].sessions
    page = "index.html" if sessions.valid(request.cookies.get(COOKIE)) else "login.html"
    return web.FileResponse(STATIC / page, headers=_page_headers())


async def login_view(request: web.Request) -> web.StreamResponse:
    """Log in with the password or an admin JWT: 302 to the page with a session cookie (and a device cookie),
    302 to `?failed=1`, 429 with `Retry-After` while the attempt's address or device must wait
    (`LoginThrottle`), 408 when the form takes longer than `security.request_timeout`."""
    _same_origin_only(request)
    dashboard, settings, metrics = request.app[DASHBOARD], request.app[SETTINGS].dashboard, request.app[METRICS]
    sessions, throttle = dashboard.sessions, dashboard.throttle
    try:  # nothing is reserved while the form arrives: a form held open holds no door shut
        async with asyncio.timeout(request.app[SETTINGS].security.request_timeout):
            form = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form did not arrive in time") from None
    secret = str(form.get("secret", ""))
    # From here to the answer, no await: the throttle counts each attempt as it is checked, one at a time.
    lifetime = _admin_token_lifetime(request.app[PLUGINS].get("jwt"), secret, settings.admin_claim)
    device = request.cookies.get(DEVICE_COOKIE)
    if lifetime is None:  # (a signed admin JWT cannot be guessed: it is never throttled)
        key = throttle.key(request.remote or "", device)
        wait = throttle.admit(key)
        if wait:
            metrics.error("dashboard_login_failed")
            raise web.HTTPTooManyRequests(
                text=f"too many failed logins from this address; try again in {ceil(wait)}s",
                headers={"Retry-After": str(ceil(wait))},
            )
        succeeded = _password_matches(secret, settings.password)
        throttle.finish(key, succeeded)
        if not succeeded:
            metrics.error("dashboard_login_failed")
            raise web.HTTPFound("/dashboard?failed=1")
    previous = request.cookies.get(COOKIE)
    if sessions.valid(previous):  # this browser's earlier login ends: its sockets do not outlive the cookie
        assert previous is not None
        dashboard.end_session(previous, REPLACED)
    response = web.HTTPFound("/dashboard")
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"  # TLS ends at a proxy
    response.set_cookie(
        COOKIE,
        sessions.create(lifetime),
        max_age=int(settings.session_ttl),
        httponly=True,
        samesite="Strict",
        path="/",
        secure=secure,
    )
    if throttle.known_device(device) is None:  # this browser's later logins are counted on their own
        response.set_cookie(
            DEVICE_COOKIE,
            throttle.new_device(),
            max_age=int(DEVICE_TTL),
            httponly=True,
            samesite="Strict",
            path="/dashboard",
            secure=secure,
        )
    raise response


async def logout_view(request: web.Request) -> web.StreamResponse:
    _same_origin_only(request)
    session = request.cookies.get(COOKIE)
    if session:  # the login ends, and every socket opened with it is closed at once
        request.app[DASHBOARD].end_session(session, LOGGED_OUT)
    response = web.HTTPFound("/dashboard")
    response.del_cookie(COOKIE, path="/")
    raise response


async def favicon_view(request: web.Request) -> web.FileResponse:
    """The dashboard's icon (an SVG; browsers ask for /favicon.ico on every page of the host)."""
    return web.FileResponse(
        STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"}
    )


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


def _same_origin_only(request: web.Request) -> None:
    """Login and logout forms posted from another site (CSRF) are refused."""
    if not same_host(request) or request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise web.HTTPForbidden(text="cross-site request refused")


def _password_matches(given: str, password: str) -> bool:
    return bool(password) and hmac.compare_digest(given.encode(), password.encode())


def _admin_token_lifetime(authenticator: Any, token: str, claim: str) -> float | None:
    """Seconds left of a JWT the JWT authenticator (the built-in `jwt` plugin, if on) accepts and whose
    `claim` is true; None otherwise."""
    claims = authenticator.verify(token) if authenticator is not None and token else None
    if not claims or claims.get(claim) is not True:
        return None
    return max(0.0, float(claims["exp"]) - time.time())
