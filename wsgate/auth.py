"""Who a client is (`Identity`) and what the settings let it do (`AccessPolicy`).

The policy is the floor set by the operator in `[auth]`: room rules, the
token's `rooms` claim and who may broadcast. Plugins (`wsgate_authorize`) are
asked after it and can only narrow it, or grant what a rule leaves to them
(`plugin`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiohttp import web

from . import errors
from .config import AuthSettings
from .errors import ClientError
from .rooms import RoomRule, glob_match


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client: `user_id` (the token's `sub`), every claim of its token, and when its rights
    end: `expires_at`, Unix time in seconds (the token's `exp` plus the allowed leeway; None: never). A
    connection is closed then (4001, "token expired") unless the client refreshes its token first.

    `subs`: rooms the server subscribes the client to once it is connected, in order, each answered
    `subscribed` with `"server": true` (docs/protocol.md, "Server-side subscriptions"); the room rules and
    limits apply as for the client's own subscribe. Any sequence of strings (kept as a tuple); a single string
    or anything else raises TypeError, when the identity is built."""

    user_id: str
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    expires_at: float | None = None
    subs: Sequence[str] = ()

    def __post_init__(self) -> None:
        subs = self.subs
        if (
            isinstance(subs, (str, bytes))
            or not isinstance(subs, Sequence)
            or not all(isinstance(room, str) for room in subs)
        ):
            raise TypeError(f"Identity.subs must be a sequence of room names (strings), got {subs!r:.80}")
        object.__setattr__(self, "subs", tuple(subs))  # (frozen: fixed once, as it was checked)


def expires_at_of(identity: object) -> float | None:
    """When an identity's rights end (Unix seconds), or None: only an Identity can expire."""
    return identity.expires_at if isinstance(identity, Identity) else None


def subs_of(identity: object) -> tuple[str, ...]:
    """The rooms an identity asks the server to subscribe its client to (`Identity.subs`); none for any other
    identity (a plugin's mapping with a `subs` key is not read: it may mean something else there)."""
    return tuple(identity.subs) if isinstance(identity, Identity) else ()


def claims_of(identity: object) -> Mapping[str, Any]:
    """The claims of any identity: an Identity's claims, a plugin's mapping itself, else none."""
    if isinstance(identity, Identity):
        return identity.claims
    if isinstance(identity, Mapping):
        return identity
    return MappingProxyType({})


def user_id_of(identity: object) -> str | None:
    """The user id reported in `connected` (None for anonymous clients and identities without one)."""
    user_id = identity.user_id if isinstance(identity, Identity) else None
    return user_id if isinstance(user_id, str) else None


SUBPROTOCOL = "bearer"
"""Browsers send a token as the WebSocket subprotocols `bearer, <token>`; the server answers `bearer`."""


def unauthorized(text: str, detail: str) -> web.HTTPUnauthorized:
    """401 before the upgrade, with the same `error`/`detail` shape as WebSocket errors."""
    return web.HTTPUnauthorized(
        text=json.dumps({"error": text, "detail": detail}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="wsgate"'},
    )


class AccessPolicy:
    """The `[auth]` rules, checked before plugins on every subscribe, publish and broadcast."""

    RULE_CACHE = 10_000  # rooms whose first matching rule is remembered; emptied when full (names are unbounded)

    def __init__(self, settings: AuthSettings) -> None:
        self._rules: tuple[RoomRule, ...] = settings.rooms  # parsed once, when the settings were loaded
        self._broadcast = settings.broadcast
        self._rooms_claim = settings.jwt.rooms_claim
        self._rule_of: dict[str, RoomRule | None] = {}  # room -> the first rule it falls under (a function of the name)

    def _rule(self, room: str) -> RoomRule | None:
        """The first rule `room` falls under, or None: worked out once per room name, not per message."""
        try:
            return self._rule_of[room]
        except KeyError:
            pass
        rule = next((rule for rule in self._rules if rule.matches(room)), None)
        if len(self._rule_of) >= self.RULE_CACHE:
            self._rule_of.clear()
        self._rule_of[room] = rule
        return rule

    def check(self, identity: object, action: str, room: str | None) -> bool:
        """Raise ClientError (`not allowed`) when the settings deny `action` to a client of this
        `identity` (None: anonymous); True when a plugin must decide."""
        if room is None:
            return self._meets(self._broadcast, identity, "broadcast")
        if identity is not None:
            allowed = claims_of(identity).get(self._rooms_claim)
            if allowed is not None:
                patterns = (allowed,) if isinstance(allowed, str) else allowed
                if not isinstance(patterns, (list, tuple)) or not any(
                    isinstance(p, str) and glob_match(room, p) for p in patterns
                ):
                    raise ClientError(
                        errors.NOT_ALLOWED, f"the token's {self._rooms_claim!r} claim does not include {room!r}"
                    )
        if not self._rules:
            return False
        rule = self._rule(room)
        if rule is None:
            return False
        if rule.placeholder is not None:
            value = claims_of(identity).get(rule.placeholder) if identity is not None else None
            if not isinstance(value, str) or value != rule.owner(room):  # strings only: never "None", "1"
                raise ClientError(errors.NOT_ALLOWED, f"room {room!r} belongs to another {rule.placeholder}")
        return self._meets(rule.requirement, identity, f"room {room!r}")

    @staticmethod
    def _meets(requirement: str, identity: object, what: str) -> bool:
        if requirement == "anyone":
            return False
        if requirement == "plugin":
            return True
        if requirement == "nobody":
            raise ClientError(errors.NOT_ALLOWED, f"{what} is closed to clients")
        if identity is None:
            raise ClientError(errors.NOT_ALLOWED, f"{what} requires authentication")
        if requirement.startswith("claim:"):
            claim = requirement[len("claim:") :]
            if claims_of(identity).get(claim) is not True:  # exactly true: never "false", "0", [0]
                raise ClientError(errors.NOT_ALLOWED, f"{what} requires the {claim!r} claim")
        return False
