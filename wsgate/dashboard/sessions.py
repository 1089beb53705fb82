"""Dashboard logins and the operator identity they give a WebSocket.

A login (the password, or a JWT whose `admin_claim` is true) is a random token
with an expiry, kept in this object (never in a global), carried by an
HttpOnly, SameSite=Strict cookie. A WebSocket opened with it is an operator
whose rights are checked on every message; and when the login ends (logout,
expiry, a new login from the same browser), the `dashboard` plugin closes every
socket opened with it (`Dashboard.end_session`), so nothing it was granted
(tails, rooms, its identity) outlives it.
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


def session_of(identity: object) -> str | None:
    """The dashboard login an `operator` identity holds; None for any other identity (a JWT carrying a
    `dashboard_session` claim too: its claims always hold `sub` and `exp` as well)."""
    if not isinstance(identity, Identity) or identity.expires_at is not None or set(identity.claims) != {SESSION_CLAIM}:
        return None
    session = identity.claims[SESSION_CLAIM]
    return session if isinstance(session, str) else None


class LoginThrottle:
    """Slows password guessing per address with growing delays, never a lockout.

    An address may have `free` attempts under way or failed; after that, attempts go one at a
    time, each failure doubling the wait before the next (from `base` up to `most` seconds). The
    attempt is reserved before the request body is even read, so a burst of slow requests cannot
    all be checked. The right password always gets in within `most` seconds: the operator behind
    the same proxy as a guesser is slowed, never locked out. A success forgets the address.
    """

    FREE, BASE, MOST = 3, 1.0, 30.0
    FORGET_AFTER = 600.0  # seconds without an attempt after which an address starts over
    ADDRESSES_KEPT = 10_000  # records kept at most (the oldest go first)

    def __init__(self, free: int = FREE, base: float = BASE, most: float = MOST) -> None:
        self._free, self._base, self._most = free, base, most
        self._records: dict[str, list[float]] = {}  # address -> [failures, under way, not before, last seen]

    def reserve(self, address: str) -> float:
        """0.0: go ahead (the attempt now counts as under way); otherwise the seconds to wait first."""
        now = time.monotonic()
        record = self._records.get(address)
        if record is not None and now - record[3] > self.FORGET_AFTER and not record[1]:
            record = None
        if record is None:
            if len(self._records) >= self.ADDRESSES_KEPT:
                del self._records[next(iter(self._records))]
            record = self._records[address] = [0, 0, 0.0, now]
        failures, under_way, not_before, _ = record
        if failures + under_way >= self._free and (under_way or now < not_before):
            return max(not_before - now, 1.0 if under_way else 0.0, 0.001)
        record[1] += 1
        record[3] = now
        return 0.0

    def finish(self, address: str, succeeded: bool) -> None:
        """End a reserved attempt; a failure makes the next one wait longer."""
        record = self._records.get(address)
        if record is None:
            return
        if succeeded:
            del self._records[address]
            return
        record[0] += 1
        record[1] = max(0, record[1] - 1)
        extra = record[0] - self._free
        if extra >= 0:
            record[2] = time.monotonic() + min(self._most, self._base * 2**extra)


class DashboardSessions:
    """Dashboard logins: random tokens with an expiry, kept by the gateway (not in any global)."""

    def __init__(self, settings: DashboardSettings) -> None:
        self._settings = settings
        self._expiry: dict[str, float] = {}

    def create(self, lifetime: float | None = None) -> str:
        """A new login lasting `session_ttl`, or `lifetime` seconds if shorter (an admin JWT's remaining life)."""
        now = time.monotonic()
        self._expiry = {token: until for token, until in self._expiry.items() if until > now}  # forget old ones
        token = secrets.token_urlsafe(32)
        ttl = self._settings.session_ttl
        self._expiry[token] = now + (ttl if lifetime is None else min(ttl, lifetime))
        return token

    def valid(self, token: str | None) -> bool:
        return self.remaining(token) is not None

    def remaining(self, token: str | None) -> float | None:
        """Seconds until a live login ends; None for an unknown, ended or expired one."""
        until = self._expiry.get(token or "")
        left = None if until is None else until - time.monotonic()
        return left if left is not None and left > 0 else None

    def end(self, token: str | None) -> None:
        self._expiry.pop(token or "", None)
