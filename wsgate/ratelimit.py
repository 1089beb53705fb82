"""Per-client rate limits: token buckets for messages and for bytes, with a grace period before closing.

A bucket holds up to `capacity` tokens and refills at `rate` per second; each
message takes one token (and its length from the byte bucket). A message that
finds a bucket empty is refused. A client is "over the limit" from its first
refusal until a whole second passes without one; over it for `grace` seconds,
it is closed (so a client sending steadily at twice the rate is closed too). The arithmetic runs only
for clients that have limits.
"""

from __future__ import annotations

import enum
import math

from .config import LimitsSettings

QUIET_PERIOD = 1.0  # seconds without a refusal that end a spell over the limit


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer `rate limit exceeded`, drop the message
    CLOSE = "close"  # over the limit for longer than the grace period: close with 1008


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, amount: float, now: float, *, debt: bool = False) -> bool:
        """Take `amount` tokens if there are that many (after refilling for the time passed); `debt`: take them
        anyway, leaving the bucket below zero."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount and not debt:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


class RateLimiter:
    """The message and byte buckets of one client, and how long it has been over them."""

    __slots__ = ("_messages", "_bytes", "_grace", "_over_since", "_last_refused")

    def __init__(self, limits: LimitsSettings, now: float) -> None:
        rate = limits.messages_per_second
        self._messages = TokenBucket(rate, limits.burst or max(1, math.ceil(rate)), now) if rate else None
        size = limits.bytes_per_second
        self._bytes = TokenBucket(size, size, now) if size else None
        self._grace = limits.rate_limit_grace
        self._over_since: float | None = None
        self._last_refused = 0.0

    @staticmethod
    def needed(limits: LimitsSettings) -> bool:
        return bool(limits.messages_per_second or limits.bytes_per_second)

    def charge(self, size: int, now: float) -> None:
        """Take `size` bytes (when positive) from the byte bucket for what the server sent back: the bucket may
        go below zero, and the client's next messages are refused until it has refilled."""
        if self._bytes is not None and size > 0:
            self._bytes.take(size, now, debt=True)

    def check(self, size: int, now: float) -> Verdict:
        """Account for one message of `size` characters arriving at `now`."""
        # A message larger than the whole byte bucket can never pass: it is refused, never waited for.
        allowed = (self._messages is None or self._messages.take(1, now)) and (
            self._bytes is None or self._bytes.take(size, now)
        )
        if allowed:
            if self._over_since is not None and now - self._last_refused >= QUIET_PERIOD:
                self._over_since = None
            return Verdict.ALLOW
        self._last_refused = now
        if self._over_since is None:
            self._over_since = now
        return Verdict.CLOSE if now - self._over_since >= self._grace else Verdict.REFUSE
