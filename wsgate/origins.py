"""Origin checks: the guard against Cross-Site WebSocket Hijacking and cross-site forms.

Browsers send `Origin` with every WebSocket handshake and form post; CORS does not
cover WebSockets (RFC 6455 section 10.2), so the server checks it itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Cross-Site WebSocket Hijacking guard: browsers send Origin, and CORS does not cover WebSockets.

    Exact matches only (no substring or suffix matching). With no list, only pages served
    from this same host may connect; `"*"` allows any origin.
    """
    if allowed:
        return "*" in allowed or origin in allowed
    return urlsplit(origin).netloc.lower() == host.lower()


UNKNOWN_HOST = "unknown host"


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names one of `allowed` (case-insensitive; an entry without a port allows any port)."""
    if "@" in host or "/" in host:
        return False  # a Host header is host[:port], nothing else
    try:
        given = urlsplit(f"//{host}")
        name, port = given.hostname, given.port
    except ValueError:
        return False
    if port == 0:
        return False
    for entry in allowed:
        wanted = urlsplit(f"//{entry}")
        if wanted.hostname == name and wanted.port in (None, port):
            return True
    return False


def host_guard(allowed: tuple[str, ...]) -> Any:
    """Middleware: requests whose Host is not in `security.allowed_hosts` get 421 (DNS rebinding: a page on
    evil.example that resolves to this server sends Host: evil.example, and its Origin matches that Host)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if not host_allowed(request.host, allowed):
            return web.json_response({"error": UNKNOWN_HOST}, status=421)
        response: web.StreamResponse = await handler(request)
        return response

    return guard


def same_host(request: web.Request) -> bool:
    """The request comes from a page of this host, or from no page at all (no Origin: not a browser form)."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc.lower() == request.host.lower()
