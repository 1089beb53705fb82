"""Dashboard logins and the operator identity they give a WebSocket.

A login (the password, or a JWT whose `admin_claim` is true) is a random token
with an expiry, kept in this object (never in a global), carried by an
HttpOnly, SameSite=Strict cookie. A WebSocket opened with it is an operator
whose rights are checked on every message, so a logout or an expired login ends
the rights of sockets already open.
"""

from __future__ import annotations

import secrets
import time
from types import MappingProxyType

from ..auth import Identity
from ..config import DashboardSettings

COOKIE = "wsgate_dashboard"
SESSION_CLAIM = "dashboard_session"
"""The claim of an operator identity that holds its session."""


def operator(session: str) -> Identity:
    """The identity of a WebSocket opened by a logged-in dashboard."""
    return Identity("operator", MappingProxyType({SESSION_CLAIM: session}))


class DashboardSessions:
    """Dashboard logins: random tokens with an expiry, kept by the gateway (not in any global)."""

    FAILURES_ALLOWED = 10  # failed logins per address within FAILURE_WINDOW before logins are refused
    FAILURE_WINDOW = 600.0
    ADDRESSES_KEPT = 10_000  # failure records kept at most (the oldest go first)

    def __init__(self, settings: DashboardSettings) -> None:
        self._settings = settings
        self._expiry: dict[str, float] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (failures, since)

    def may_try(self, address: str) -> bool:
        """False while `address` has failed too often: guessing the password is slowed to a crawl."""
        count, since = self._failures.get(address, (0, 0.0))
        if time.monotonic() - since > self.FAILURE_WINDOW:
            self._failures.pop(address, None)
            return True
        return count < self.FAILURES_ALLOWED

    def failed(self, address: str) -> None:
        count, since = self._failures.pop(address, (0, time.monotonic()))
        if len(self._failures) >= self.ADDRESSES_KEPT:
            del self._failures[next(iter(self._failures))]
        self._failures[address] = (count + 1, since)

    def create(self, lifetime: float | None = None) -> str:
        """A new login lasting `session_ttl`, or `lifetime` seconds if shorter (an admin JWT's remaining life)."""
        now = time.monotonic()
        self._expiry = {token: until for token, until in self._expiry.items() if until > now}  # forget old ones
        token = secrets.token_urlsafe(32)
        ttl = self._settings.session_ttl
        self._expiry[token] = now + (ttl if lifetime is None else min(ttl, lifetime))
        return token

    def valid(self, token: str | None) -> bool:
        until = self._expiry.get(token or "")
        return until is not None and until > time.monotonic()

    def end(self, token: str | None) -> None:
        self._expiry.pop(token or "", None)
