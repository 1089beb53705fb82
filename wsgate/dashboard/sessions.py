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

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from types import MappingProxyType

from ..auth import Identity
from ..config import DashboardSettings

COOKIE = "wsgate_dashboard"
DEVICE_COOKIE = "wsgate_dashboard_device"
"""Set at a successful login: the browser's later logins are throttled on their own (`LoginThrottle`)."""
DEVICE_TTL = 30 * 86400.0  # seconds a device cookie is kept by the browser (valid while the gateway runs)
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
    """Slows password guessing with growing delays, never a lockout; per address, or per device.

    An attempt counts once its form has arrived: `admit` and `finish` are called with no await between
    them and the password check, so a form held open (unfinished) reserves nothing and holds no door
    shut, and a burst of forms released together is checked one by one. `free` failures are allowed;
    after that each failure makes the next attempt wait (from `base` doubling up to `most` seconds), and
    attempts meanwhile are refused unchecked. A success forgets the key.

    The key is the address, or the device: a browser that logged in before carries a device cookie
    (`device`; RFC 6265 HttpOnly, signed with a key of this object) and is counted on its own, so a
    guesser at the operator's address (behind the same proxy) cannot slow it at all. (The OWASP
    "device cookies" defence against lockout; a browser without one shares its address's waits.)
    """

    FREE, BASE, MOST = 3, 1.0, 30.0
    FORGET_AFTER = 600.0  # seconds without an attempt after which a key starts over
    KEYS_KEPT = 10_000  # records kept at most (the oldest go first)

    def __init__(
        self, free: int = FREE, base: float = BASE, most: float = MOST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`clock`: seconds, monotonic (a test's own clock makes the waits exact)."""
        self._free, self._base, self._most, self._clock = free, base, most, clock
        self._records: dict[str, tuple[int, float, float]] = {}  # key -> (failures, not before, last seen)
        self._signing_key = secrets.token_bytes(32)

    def key(self, address: str, device: str | None) -> str:
        """What an attempt is counted against: its valid device cookie's device, else its address."""
        known = self.known_device(device)
        return f"device:{known}" if known is not None else f"address:{address}"

    def admit(self, key: str) -> float:
        """0.0: check this attempt now (call `finish` before any await); otherwise the seconds to wait."""
        now = self._clock()
        record = self._records.get(key)
        if record is None or now - record[2] > self.FORGET_AFTER:
            return 0.0
        failures, not_before, _ = record
        return not_before - now if failures >= self._free and now < not_before else 0.0

    def finish(self, key: str, succeeded: bool) -> None:
        """Count a checked attempt: a success forgets the key, a failure makes the next one wait longer."""
        if succeeded:
            self._records.pop(key, None)
            return
        now = self._clock()
        failures, _, last = self._records.pop(key, (0, 0.0, now))  # (re-inserted: the newest go last)
        failures = 1 if now - last > self.FORGET_AFTER else failures + 1
        extra = failures - self._free
        not_before = now + min(self._most, self._base * 2**extra) if extra >= 0 else 0.0
        if len(self._records) >= self.KEYS_KEPT:
            del self._records[next(iter(self._records))]
        self._records[key] = (failures, not_before, now)

    def new_device(self) -> str:
        """A device cookie's value for a browser that has just logged in: `<random>.<HMAC-SHA256>`."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign(nonce)}"

    def known_device(self, cookie: str | None) -> str | None:
        """The device a cookie names if this object signed it, else None."""
        nonce, _, mac = (cookie or "").partition(".")
        return nonce if nonce and hmac.compare_digest(mac, self._sign(nonce)) else None

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._signing_key, nonce.encode(), hashlib.sha256).hexdigest()


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
