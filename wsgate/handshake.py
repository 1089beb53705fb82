"""The WebSocket opening handshake in its plain form, read and answered without aiohttp (RFC 6455 section 4).

`read_opening` recognises the handshake a WebSocket client sends when nothing about it needs judging: one
`GET` of the gateway's path over HTTP/1.1, complete in the first bytes read, with a well-formed key, version 13,
and at most a `protocol` query parameter. Anything else, malformed, unusual or merely rare (an obsolete line
folding, any repeated header, many headers, a body, an `Expect`, a subprotocol offer, another version), gives
None, and aiohttp's request handling answers it as it always has, its errors included (`wsgate.frontdoor`). So
this module only has to be right about what it accepts, never about what a refusal says.

`switching_protocols` is the 101 for an accepted key, byte for byte the one aiohttp writes (section 4.2.2;
`tests/test_frontdoor.py` compares the two).

Pure: no socket, no loop, no settings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import NamedTuple

MAX_HEAD = 4096
"""Bytes: a longer request head is not plain (aiohttp's own limits, 8,190 bytes a line, then apply to it)."""

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455 section 1.3: appended to the client's key before hashing it into `Sec-WebSocket-Accept`."""

_KEY = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")  # base64 of 16 bytes, canonical (section 4.1, item 7)
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 section 5.1): no space, no fold
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, spaces and tabs: no control character
_PROTOCOL = re.compile(r"protocol=([0-9]{1,3})")
_NOT_PLAIN = frozenset({"content-length", "transfer-encoding", "expect", "sec-websocket-protocol"})
MAX_FIELDS = 64
"""Header lines: more is not plain (aiohttp refuses more than 128)."""


class Opening(NamedTuple):
    """A plain opening handshake: what the gateway decides on. Shape: `length` in bytes (the head and its blank
    line; what follows in the same read are the client's first frames), `protocol` the `?protocol=` value as
    sent (None: absent), `host` and `origin` the header values, `key` the `Sec-WebSocket-Key`; `target` and
    `headers` (names lowercased, values stripped) for the access log."""

    length: int
    protocol: str | None
    host: str
    origin: str | None
    key: str
    target: str
    headers: dict[str, str]


def read_opening(data: bytes, path: str) -> Opening | None:
    """The plain opening handshake for `path` at the start of `data`, or None when `data` holds anything else.

    None is no verdict: the request may be valid (a subprotocol offer, a head split over two reads, another
    path) or not; aiohttp's request handling, which gets the same bytes, answers it.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    try:
        lines = data[:end].decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return None
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if method != "GET" or version != "HTTP/1.1":
        return None
    asked = None
    if target != path:
        if not target.startswith(path + "?") or (query := _PROTOCOL.fullmatch(target, len(path) + 1)) is None:
            return None
        asked = query[1]
    if len(lines) > MAX_FIELDS + 1:
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        name = name.lower()
        if (
            name in fields
            or name in _NOT_PLAIN
            or (name.startswith("sec-websocket-key") and name != "sec-websocket-key")
        ):
            return None  # (a repeated header: aiohttp refuses some, and a browser sends none)
        fields[name] = value.strip(" \t")
    connection = fields.get("connection", "").lower()
    if (
        fields.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in (token.strip(" \t") for token in connection.split(","))
        or fields.get("sec-websocket-version") != "13"
        or not _KEY.fullmatch(key := fields.get("sec-websocket-key", ""))
        or not (host := fields.get("host"))
    ):
        return None
    return Opening(end + 4, asked, host, fields.get("origin"), key, target, fields)


def accept_key(key: str) -> bytes:
    """`Sec-WebSocket-Accept` for the client's `key` (RFC 6455 section 4.2.2, item 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())


def switching_protocols(key: str, date: str, server: str) -> bytes:
    """The 101 answering `key`, with the `Date` (RFC 9110 section 6.6.1 form) and `Server` headers given."""
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n" + (
        b"Sec-WebSocket-Accept: %s\r\nDate: %s\r\nServer: %s\r\n\r\n"
        % (accept_key(key), date.encode(), server.encode())
    )
