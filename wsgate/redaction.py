"""One masking rule for everything wsgate writes: errors, logs, the exit line, `wsgate config`.

- A password in a URL, in any form (`redis://:pw@host`, `rediss://user:pw@host`,
  `unix://:pw@/path`, `?password=pw`), becomes `***`.
- The values of secret settings (`api.key`, `dashboard.password`, `auth.jwt.secret`,
  the password of `broker.url`) and of plugin options with a secret-looking name
  become `***` wherever they appear.
- Tokens never reach a log: JWT-shaped strings are masked, and aiohttp's handshake
  warning about subprotocols (where browsers carry their token) does not list them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
SECRET_NAME = re.compile(r"(^|[_.-])(secret|token|password|passwd|pass|key|apikey|credentials?)s?($|[_.-])", re.I)
"""Setting and option names whose values are secrets."""

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")
_URL_QUERY_SECRET = re.compile(r"(?P<name>[?&](?:password|pass|passwd|secret|token|key)=)(?P<value>[^&#\s]*)", re.I)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


def redact_url(text: str) -> str:
    """`text` with every password in a URL (user info or a secret query parameter) masked."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def url_secrets(url: str) -> list[str]:
    """The secrets a URL holds (its password, secret query parameters), to mask them elsewhere too."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [value for name, value in parse_qsl(parts.query) if SECRET_NAME.fullmatch(name) and value]
    return found


class Redactor(logging.Filter):
    """A handler filter that masks URL passwords, the given secret values and tokens in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = _JWT.sub(MASK, redact_url(text))
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.websocket" and "Client protocols" in str(record.msg):
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg = "%s: a client offered WebSocket subprotocols that do not overlap %r (not logged: they may hold a token)"
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
