"""The built-in JWT authenticator (`[auth.jwt]`): a token checked before the upgrade becomes an Identity.

The token is read from, in order: `Authorization: Bearer <token>`; the
`Sec-WebSocket-Protocol` header as the pair `bearer, <token>` (browsers cannot
set headers on a WebSocket; the server answers with the `bearer` protocol); and,
only with `query_param = true`, `?token=<token>`. No token: anonymous (unless
`auth.required`). A token that is present but not valid: 401, no WebSocket.

A `subs` claim (a list of room names) becomes the identity's `subs`: the rooms the server subscribes the
client to once connected (`wsgate.Identity`), as any authentication plugin's identity may list them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from aiohttp import web

from wsgate import Client, ClientError, Handler, Identity, Message, errors, hookimpl, protocol
from wsgate.auth import SUBPROTOCOL, unauthorized
from wsgate.config import ConfigError, JwtSettings

INVALID_TOKEN = protocol.INVALID_TOKEN
SUBS_CLAIM = "subs"  # the rooms the server subscribes the client to (docs/security.md)
MIN_SECRET_BYTES = 32  # an HS256 key shorter than the hash can be brute-forced offline from one token


class _BadSubject(jwt.InvalidTokenError):
    """`sub` is the user id: it must be a non-empty string."""


class _BadSubs(jwt.InvalidTokenError):
    """`subs` lists the rooms the server subscribes the client to: room names, nothing else."""


class _BadClaims(jwt.InvalidTokenError):
    """Claims end up in messages (`user_id`, presence): they must be strict JSON."""


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (_BadSubject, "the token's sub claim must be a non-empty string"),
    (_BadSubs, "the token's subs claim must be a list of room names (strings)"),
    (_BadClaims, "the token's claims are not strict JSON (a lone surrogate, or a number JSON cannot carry)"),
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.DecodeError, "the token is malformed"),
)


class JwtAuthenticator:
    """A `wsgate_authenticate` plugin; one instance per gateway, holding its verification key."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._key = settings.secret or _public_key(settings.public_key)
        self._algorithms = list(settings.algorithms) or (["HS256"] if settings.secret else ["RS256", "ES256"])
        family = ("HS",) if settings.secret else ("RS", "ES", "PS", "EdDSA")
        for name in self._algorithms:
            if name not in jwt.algorithms.get_default_algorithms() or not name.startswith(family):
                raise ConfigError(
                    f"invalid setting auth.jwt.algorithms = {self._algorithms}: {name!r} cannot verify with "
                    f"{'auth.jwt.secret' if settings.secret else 'auth.jwt.public_key'} "
                    f"(expected {' or '.join(f + '...' for f in family)} algorithms)"
                )
        if settings.secret and len(settings.secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"invalid setting auth.jwt.secret: expected at least {MIN_SECRET_BYTES} bytes (RFC 7518, 3.2), "
                "e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        self._options = {"require": ["exp", "sub"]}

    @hookimpl
    def wsgate_authenticate(self, request: web.Request) -> Identity | None:
        token = self.token(request)
        if token is None:
            return None
        try:
            claims = self._decode(token)
        except jwt.InvalidTokenError as exc:
            # (logged by the plugin machinery, naming this plugin: wsgate.plugins.log_refusal)
            raise unauthorized(INVALID_TOKEN, _reason(exc)) from None
        return self._identity(claims)

    @hookimpl
    def wsgate_message_handlers(self) -> Mapping[str, Handler]:
        return {protocol.REFRESH: self.refresh}

    async def refresh(self, client: Client, message: Message) -> None:
        """`{"type":"refresh","token":T}`: a new token for this connection, before the old one expires.

        It must be valid and carry the same `sub`. The connection's expiry moves to the new token's,
        rooms the new claims no longer allow are left (each with `unsubscribed`), rooms of its `subs` claim the
        connection is not in are joined (each with `subscribed`, `"server": true`; a room left out of `subs`
        is not left for that), and the answer is `{"type":"refreshed","data":{"expires_at":ms}}`.
        """
        token = message.fields.get("token")
        if not isinstance(token, str) or not token:
            raise ClientError(errors.INVALID_JSON, "field 'token' must be a non-empty string")
        current = client.identity
        if not isinstance(current, Identity) or current.expires_at is None:
            raise ClientError(errors.NOT_ALLOWED, "this connection was not opened with a token")
        try:
            claims = self._decode(token)
        except jwt.InvalidTokenError as exc:
            raise ClientError(errors.INVALID_TOKEN, _reason(exc)) from None
        if claims["sub"] != current.user_id:
            raise ClientError(errors.NOT_ALLOWED, "the new token is for another user (its sub differs)")
        identity = self._identity(claims)
        await client.gateway.reauthenticate(client, identity)
        assert identity.expires_at is not None
        client.enqueue(protocol.encode(protocol.REFRESHED, data={"expires_at": round(identity.expires_at * 1000)}))

    def _identity(self, claims: dict[str, Any]) -> Identity:
        """Its rights end at the token's `exp`, plus the leeway every check of `exp` allows."""
        return Identity(
            claims["sub"],
            MappingProxyType(claims),
            expires_at=float(claims["exp"]) + self._settings.leeway,
            subs=claims.get(SUBS_CLAIM) or (),  # (null: absent)
        )

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid token, else None (the dashboard's admin login)."""
        try:
            return self._decode(token)
        except jwt.InvalidTokenError:
            return None

    def _decode(self, token: str) -> dict[str, Any]:
        settings = self._settings
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key,
            algorithms=self._algorithms,
            audience=settings.audience or None,
            issuer=settings.issuer or None,
            leeway=settings.leeway,
            options=self._options,  # type: ignore[arg-type]
        )
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise _BadSubject()
        subs = claims.get(SUBS_CLAIM)
        if subs is not None and (not isinstance(subs, list) or not all(isinstance(room, str) for room in subs)):
            raise _BadSubs()
        try:  # PyJWT's JSON parser lets lone surrogates and Infinity through: claims reach messages and presence
            protocol.dumps(claims)
        except ClientError:
            raise _BadClaims() from None
        return claims

    def token(self, request: web.Request) -> str | None:
        """The token a request carries, from the first place that has one."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL in offered[:-1]:
            return offered[offered.index(SUBPROTOCOL) + 1] or None
        if self._settings.query_param:
            return request.query.get("token") or None
        return None


def _reason(exc: jwt.InvalidTokenError) -> str:
    """Why a token was refused, in one line."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the {exc.claim!r} claim"
    return next((text for kind, text in _REASONS if isinstance(exc, kind)), INVALID_TOKEN)


def _public_key(value: str) -> Any:
    """The key from PEM text or a PEM file; ConfigError naming the setting when it is neither."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = value
    if not value.lstrip().startswith("-----BEGIN"):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ConfigError(f"invalid setting auth.jwt.public_key: cannot read {value!r} ({exc.strerror})") from None
    try:
        return load_pem_public_key(text.encode())
    except ValueError:
        raise ConfigError("invalid setting auth.jwt.public_key: expected a PEM public key") from None
