"""Origin checks: the guard against Cross-Site WebSocket Hijacking and cross-site forms.

Browsers send `Origin` with every WebSocket handshake and form post; CORS does not
cover WebSockets (RFC 6455 section 10.2), so the server checks it itself.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

ORIGIN_EXPECTED = (
    "expected an origin as browsers send it, scheme://host[:port] with no path or trailing slash "
    '(e.g. "http://127.0.0.1:8000"), or "*"'
)
PUNYCODE = "expected the host in ASCII, as browsers send it: an international name in punycode (xn--...)"
_HOST_NAME = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")  # as browsers serialize it: lower case, IDNs in punycode


def origin_problem(text: str) -> str | None:
    """Why `text` can never equal an Origin header, or None when it can (`security.allowed_origins`,
    `cors.allowed_origins`; RFC 6454 section 6.2: scheme "://" host [":" port], lower case, no default
    port, nothing after). The reason reads as "expected ..."."""
    if text == "null":
        return (
            'expected the origin of a page served over http(s): "null" is sent by every page without an '
            "origin of its own (file://, sandboxed frames, data: URLs), wherever it comes from"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return ORIGIN_EXPECTED
    if parts.scheme in ("ws", "wss"):
        return (
            "expected the origin of the page that opens the WebSocket (http:// or https://), "
            "not the WebSocket's own URL"
        )
    hostname = parts.hostname or ""
    if not hostname.isascii():
        return PUNYCODE
    if "*" in hostname:
        return 'expected one exact origin per entry: wildcards are not matched (list each origin, or "*" for any)'
    if not parts.scheme or not _HOST_NAME.fullmatch(hostname) or port == 0:
        return ORIGIN_EXPECTED
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = f"[{hostname}]" if ":" in hostname else hostname
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")
    return None if text == shown else ORIGIN_EXPECTED  # exactly as browsers serialize it


def host_problem(entry: str) -> str | None:
    """Why a `security.allowed_hosts` entry can never equal a Host header's host[:port], or None when it can."""
    if entry == "*":
        return "expected a host name: to allow any host, leave security.allowed_hosts empty"
    if not entry.isascii():
        return PUNYCODE
    try:
        parts = urlsplit(f"//{entry}")
        valid = (
            bool(parts.hostname)
            and parts.netloc == entry
            and (parts.port is None or parts.port > 0)
            and re.fullmatch(r"[^\s/?#@*]+", entry) is not None
        )
    except ValueError:
        valid = False
    return (
        None
        if valid
        else ('expected a host name, optionally with a port, as in a Host header (e.g. "gw.example.com" or "gw:8081")')
    )


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Cross-Site WebSocket Hijacking guard: browsers send Origin, and CORS does not cover WebSockets.

    Exact matches only (no substring or suffix matching). With no list, only pages served
    from this same host may connect; `"*"` allows any origin.
    """
    if allowed:
        return "*" in allowed or origin in allowed
    return _netloc(origin) == host.lower()


def _netloc(origin: str) -> str | None:
    """The host[:port] of an Origin, lowercased; None for one that is no URL (`http://[x`)."""
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None


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
    return origin is None or _netloc(origin) == request.host.lower()
