"""One masking rule for everything wsgate writes: errors, logs (its own, aiohttp's and gunicorn's, the access
log included), the exit line, `wsgate config`.

Values are masked for their shape, whatever the key that holds them is called:

- a URL's user information, which runs to the LAST `@` before the host (RFC 3986 3.2.1; the split
  `urllib.parse` and redis-py make): `redis://user:p@ss@host` -> `redis://user:***@host`, and a user
  name alone (`https://ghp_x@host`, a token) -> `https://***@host`;
- a query parameter with a secret-looking name (`?token=`, `&access_token=`, `?api_key=`, `?password=`);
- a JWT (`eyJ...`.`...`.`...`), anywhere;
- an HTTP credential (RFC 7235): `Bearer <token>` (8 characters or more) and `Basic <base64 of user:password>`.

The values of secret settings (`api.key`, `dashboard.password`, `auth.jwt.secret`), of plugin options
with a secret-looking name or a credential-looking value, and the passwords of every URL in the settings
become `***` wherever they appear (`Redactor`). aiohttp's handshake warning about subprotocols (where
browsers carry their token) does not list them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
SECRET_NAME = re.compile(
    r"(^|[_.-])(secret|token|password|passwd|pass|pwd|key|apikey|credentials?|auth|authorization|jwt|signature|"
    r"cookie)s?($|[_.-])",
    re.I,
)
"""Setting, option and query parameter names whose values are secrets (`access_token`, `x-api-key`, `auth`)."""

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<netloc>[^/?#\s]*)")
"""A URL's scheme and authority: the authority ends at the first `/`, `?`, `#` (as in `urllib.parse.urlsplit`)
or, in free text, white space."""
_URL_SPAN = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY_PARAMETER = re.compile(r"(?P<start>[?&](?P<name>[^=&#?\s]+)=)(?P<value>[^&#\s]*)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_HTTP_CREDENTIAL = re.compile(r"\b(?P<scheme>Bearer|Basic)(?P<space>\s+)(?P<value>[A-Za-z0-9._~+/-]+=*)", re.I)
"""RFC 7235's `credentials = auth-scheme 1*SP token68`, for the two schemes that carry a secret as such."""
_CREDENTIAL_VALUE = re.compile(r"\s*(Bearer|Basic)\s+\S+\s*", re.I)
MIN_BEARER_LENGTH = 8  # "Bearer token" in prose is not a credential
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


def redact_url(text: str) -> str:
    """`text` with every URL's user information and every secret-named query parameter masked."""
    text = _URL.sub(_mask_userinfo, text)
    return _QUERY_PARAMETER.sub(
        lambda m: f"{m['start']}{MASK}" if m["value"] and SECRET_NAME.search(unquote(m["name"])) else m[0], text
    )


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo, at, host = match["netloc"].rpartition("@")  # the last `@`: a password may hold one
    if not at:
        return match[0]
    user, colon, _password = userinfo.partition(":")  # the first `:`: a user name holds none (RFC 3986)
    return f"{match['scheme']}{user}:{MASK}@{host}" if colon else f"{match['scheme']}{MASK}@{host}"


def redact(text: str) -> str:
    """`text` with every value masked that looks like a credential (the rules above), whatever names it."""
    text = _JWT.sub(MASK, redact_url(text))
    return _HTTP_CREDENTIAL.sub(_mask_http_credential, text)


def _mask_http_credential(match: re.Match[str]) -> str:
    value = match["value"]
    if match["scheme"].lower() == "basic":
        try:  # Basic credentials are base64("user:password"); "Basic settings" is prose
            secret = b":" in base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            secret = False
    else:
        secret = len(value) >= MIN_BEARER_LENGTH or value == MASK
    return f"{match['scheme']}{match['space']}{MASK}" if secret else match[0]


def looks_like_credential(value: str) -> bool:
    """Whether a whole value is a credential by its shape: `Bearer ...`, `Basic ...`, or a JWT."""
    return bool(_CREDENTIAL_VALUE.fullmatch(value) or _JWT.fullmatch(value.strip()))


def mask_value(value: Any) -> Any:
    """A setting's value as it may be shown: strings masked by shape (a credential whole, a URL's user
    information), tables' secret-named entries masked whole; lists and tables walked; other values as they are."""
    if isinstance(value, str):
        return MASK if looks_like_credential(value) else redact(value)
    if isinstance(value, Mapping):
        return {
            k: MASK if SECRET_NAME.search(str(k)) and v not in ("", None) else mask_value(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return tuple(mask_value(v) for v in value)
    return value


def url_secrets(url: str) -> list[str]:
    """The secrets a URL holds (its password, secret query parameters), as written and
    percent-decoded, to mask them elsewhere too. `urllib.parse` splits the user information at the last `@`."""
    try:
        parts = urlsplit(url.strip())
        found = [parts.password] if parts.password else []  # (a user name alone is masked in URLs only)
        found += [value for name, value in parse_qsl(parts.query) if SECRET_NAME.search(name) and value]
    except ValueError:
        return []
    return [form for value in found for form in dict.fromkeys((value, unquote(value)))]


def credentials_in(value: str) -> list[str]:
    """The secrets one string holds by its shape: a credential's value, a JWT, every URL's password."""
    found = []
    if looks_like_credential(value):
        found += [value.strip(), value.split()[-1]]
    for match in _URL_SPAN.finditer(value):
        found += url_secrets(match[0])
    return found


class Redactor(logging.Filter):
    """A handler filter that masks URL passwords, the given secret values and tokens in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with the known secret values masked first (a password holding `@` or `:` is masked whole),
        then every credential-shaped value (`redact`)."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.websocket" and "Client protocols" in str(record.msg):
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg = (
                "%s: a client offered WebSocket subprotocols that do not overlap %r (not logged: they may hold a token)"
            )
            record.args = (args[0] if len(args) == 3 else "?", args[-1] if args else ())
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
