"""Origin checks: the guard against Cross-Site WebSocket Hijacking and cross-site forms.

Browsers send `Origin` with every WebSocket handshake and form post; CORS does not
cover WebSockets (RFC 6455 section 10.2), so the server checks it itself.
"""

from __future__ import annotations

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


def same_host(request: web.Request) -> bool:
    """The request comes from a page of this host, or from no page at all (no Origin: not a browser form)."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc.lower() == request.host.lower()
