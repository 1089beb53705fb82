"""The wire protocol: message names, exact error texts, close codes, decode and encode.

The spec's shapes and texts are a contract with existing clients; extensions add
fields or message types and never change these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import orjson

from . import errors
from .errors import ClientError as ClientError
from .errors import ClientGone as ClientGone
from .regex import LinearPattern

# Client -> server message types (the spec's own).
SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
PUBLISH: Final = "publish"
BROADCAST: Final = "broadcast"
PING: Final = "ping"
HISTORY: Final = "history"  # wsgate: the last messages of a room that keeps history (also the answer's type)
PRESENCE: Final = "presence"  # wsgate: the members of a room with presence (also the answer's type)
PRESENCE_DIFF: Final = "presence_diff"  # wsgate: joins and leaves of a room with presence events
REFRESH: Final = "refresh"  # wsgate: a new token for this connection (the JWT authenticator)
REFRESHED: Final = "refreshed"  # wsgate: the answer to refresh, with the new expiry

# Server -> client message types.
CONNECTED: Final = "connected"
SUBSCRIBED: Final = "subscribed"
UNSUBSCRIBED: Final = "unsubscribed"
MESSAGE: Final = "message"
ERROR: Final = "error"
PONG: Final = "pong"

CONNECTED_TEXT: Final = "Connected to WebSocket server"

# Error texts, exactly: each is the `text` of a `wsgate.errors.ErrorKind` (its label, code and cause there).
# From the spec:
INVALID_JSON: Final = errors.INVALID_JSON.text
UNKNOWN_TYPE: Final = errors.UNKNOWN_TYPE.text
ROOM_REQUIRED: Final = errors.ROOM_REQUIRED.text
NOT_SUBSCRIBED: Final = errors.NOT_SUBSCRIBED.text
ROOM_FULL: Final = errors.ROOM_FULL.text
SERVER_FULL: Final = errors.SERVER_FULL_ERROR.text
# Error texts wsgate adds (documented in docs/protocol.md).
ROOM_TOO_LONG: Final = errors.ROOM_TOO_LONG.text
BINARY_NOT_SUPPORTED: Final = errors.BINARY_NOT_SUPPORTED.text
INTERNAL_ERROR: Final = errors.INTERNAL_ERROR.text
INVALID_ROOM: Final = errors.INVALID_ROOM.text
TOO_DEEP: Final = errors.TOO_DEEP.text
TOO_MANY_ROOMS: Final = errors.TOO_MANY_ROOMS.text
RATE_LIMITED: Final = errors.RATE_LIMITED.text
NOT_ALLOWED: Final = errors.NOT_ALLOWED.text
NO_HISTORY: Final = errors.NO_HISTORY.text
HISTORY_UNAVAILABLE: Final = errors.HISTORY_UNAVAILABLE.text
PUBLISH_OUTCOME_UNKNOWN: Final = errors.PUBLISH_OUTCOME_UNKNOWN.text
NO_PRESENCE: Final = errors.NO_PRESENCE.text
PRESENCE_UNAVAILABLE: Final = errors.PRESENCE_UNAVAILABLE.text
INVALID_TOKEN: Final = errors.INVALID_TOKEN.text
UNSUPPORTED_PROTOCOL: Final = errors.UNSUPPORTED_PROTOCOL.text  # (HTTP 400 before the upgrade)
UPGRADE_REQUIRED: Final = errors.UPGRADE_REQUIRED.text  # (HTTP 426 or 400 before the upgrade)
MESSAGE_TOO_LARGE: Final = errors.MESSAGE_TOO_LARGE.text  # (HTTP 413 from the API)

# Close codes (RFC 6455 section 7.4.1); the reasons sent with them are `wsgate.errors.CloseReason`s.
CLOSE_GOING_AWAY: Final = errors.GOING_AWAY  # server shutdown, keepalive timeout
CLOSE_POLICY_VIOLATION: Final = errors.POLICY_VIOLATION  # slow consumer, write timeout
CLOSE_MESSAGE_TOO_BIG: Final = errors.TOO_BIG
CLOSE_SERVICE_RESTART: Final = errors.SERVICE_RESTART_CODE  # shutdown.mode = "restart": reconnect and resume
CLOSE_TRY_AGAIN_LATER: Final = errors.TRY_AGAIN_LATER  # server at maximum capacity
CLOSE_TOKEN_EXPIRED: Final = errors.TOKEN_EXPIRED_CODE  # (private use, section 7.4.2) the token expired
TOKEN_EXPIRED: Final = errors.TOKEN_EXPIRED.text  # its close reason


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded client message: the spec's fields, plus the whole object for extensions."""

    type: str
    room: str | None
    data: Any
    fields: dict[str, Any]
    id: str | int | None = None
    """The request id the client gave (docs/protocol.md, "Request ids"); replies to this client carry it."""

    def require_room(self) -> str:
        """The message's room; ClientError `room name is required` when it has none."""
        if not self.room:
            raise ClientError(errors.ROOM_REQUIRED)
        return self.room


def _message_maker() -> Callable[[str, str | None, Any, dict[str, Any], str | int | None], Message]:
    """`Message(...)` for the decoder, at about half the cost: a frozen dataclass's `__init__` sets each field
    through `object.__setattr__`; this sets its slots directly (the same object, equal to the constructor's)."""
    new = object.__new__
    kind, room, data, fields, request_id = (
        getattr(Message, name).__set__ for name in ("type", "room", "data", "fields", "id")
    )

    def make(type_: str, room_: str | None, data_: Any, fields_: dict[str, Any], id_: str | int | None) -> Message:
        message: Message = new(Message)
        kind(message, type_)
        room(message, room_)
        data(message, data_)
        fields(message, fields_)
        request_id(message, id_)
        return message

    return make


_new_message = _message_maker()


MAX_NUMBER_DIGITS = 100
"""Default of `websocket.limits.max_number_digits`: the stdlib's conversions of long numbers are quadratic."""


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp")  # Unicode controls (C0, DEL, C1 such as U+0085), format characters
# (U+202E, U+200B) and the line and paragraph separators U+2028 and U+2029 (which end a line in logs and editors)


def _has_control(room: str) -> bool:
    """Whether `room` holds a control or format character or a line separator: invisible, reordering what is
    shown, or breaking a line."""
    if room.isascii():
        return _CONTROL_CHARACTERS.search(room) is not None
    return any(unicodedata.category(ch) in _INVISIBLE for ch in room)


class Decoder:
    """Turns client frames into Messages, enforcing the input limits (`[websocket.limits]`)."""

    __slots__ = ("_max_room_length", "_max_depth", "_room_pattern", "_max_digits", "_accepted")

    ACCEPTED_ROOMS = 10_000
    """Room names remembered as accepted (`check_room` runs once per name, not per message); the memory is
    emptied when full (room names are unbounded): at most this many names of `max_room_name_length`."""

    def __init__(
        self,
        max_room_length: int = 256,
        max_depth: int = 32,
        room_pattern: LinearPattern | None = None,
        max_digits: int = MAX_NUMBER_DIGITS,
    ) -> None:
        self._max_room_length = max_room_length
        self._max_depth = max_depth
        self._room_pattern = room_pattern  # compiled once, with the settings (RE2: linear in the name)
        self._max_digits = max_digits
        self._accepted: set[str] = set()  # room names check_room accepted (a pure function of the name)

    def loads(self, text: str | bytes) -> Any:
        """`loads` with this decoder's digit limit (the HTTP API's bodies too)."""
        return loads(text, self._max_digits)

    def decode(self, text: str | bytes) -> Message:
        """Parse one client message; raise ClientError with a documented text when it is not a valid message."""
        obj = self.parse(text)
        request_id = obj.get("id")
        if request_id is not None:
            encode_id(request_id)
        return self.message(obj, text)

    def parse(self, text: str | bytes) -> dict[str, Any]:
        """The JSON object a frame holds; ClientError `invalid JSON format` when it holds anything else."""
        obj = loads(text, self._max_digits)
        if not isinstance(obj, dict):
            raise ClientError(errors.INVALID_JSON, "a message must be a JSON object")
        return obj

    def message(self, obj: dict[str, Any], text: str | bytes) -> Message:
        """The Message in `obj` (parsed from `text`, whose brackets are counted first); ClientError when its
        depth, `type` or `room` is not acceptable. Its `id` is taken as it is: check it first (`encode_id`)."""
        # Only a message with more brackets than the limit can be too deep: count them (fast, in C) first.
        if (text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")) > (
            self._max_depth
        ) and _depth_exceeds(obj, self._max_depth):
            raise ClientError(errors.TOO_DEEP, f"arrays and objects may nest at most {self._max_depth} levels")
        kind = obj.get("type")
        if kind is None or kind == "":
            raise ClientError(errors.UNKNOWN_TYPE, "the message has no type")
        if not isinstance(kind, str):
            raise ClientError(errors.INVALID_JSON, "field 'type' must be a string")
        room = obj.get("room")
        if room is not None and (type(room) is not str or room not in self._accepted):
            self._accept(room)
        return _new_message(kind, room, obj.get("data"), obj, obj.get("id"))

    def _accept(self, room: object) -> None:
        """Check a message's `room` field (ClientError when it is not acceptable) and remember it if it is."""
        if not isinstance(room, str):
            raise ClientError(errors.INVALID_JSON, "field 'room' must be a string")
        self.check_room(room)
        if len(self._accepted) >= self.ACCEPTED_ROOMS:
            self._accepted.clear()
        self._accepted.add(room)

    def required_room(self, obj: Mapping[str, Any]) -> str:
        """The `room` field of a JSON object that must name one (an HTTP API body, a server-side command): a
        non-empty string `check_room` accepts. ClientError: `invalid JSON format` (not a string), `room name is
        required` (absent, null or empty), or the room name's own error."""
        room = obj.get("room")
        if room is not None and not isinstance(room, str):
            raise ClientError(errors.INVALID_JSON, "field 'room' must be a string")
        if not room:
            raise ClientError(errors.ROOM_REQUIRED)
        return self.check_room(room)

    def check_room(self, room: str) -> str:
        """`room` if it is an acceptable room name; ClientError otherwise (the HTTP API checks with this too)."""
        if len(room) > self._max_room_length:
            raise ClientError(errors.ROOM_TOO_LONG, f"room names are at most {self._max_room_length} characters")
        if _has_control(room):  # never, whatever room_name_pattern allows
            raise ClientError(errors.INVALID_ROOM, "room names may not contain control characters")
        if self._room_pattern is not None and not self._room_pattern.fullmatch(room):
            raise ClientError(errors.INVALID_ROOM, f"room names must match {self._room_pattern.pattern}")
        return room


MAX_ID_LENGTH: Final = 64
"""The longest string request id, in characters (docs/protocol.md, "Request ids")."""
MAX_ID: Final = 2**53
"""The largest integer request id: exact in every client's numbers (JavaScript's doubles)."""
_BAD_ID: Final = f"field 'id' must be a string of at most {MAX_ID_LENGTH} characters or an integer from 0 to 2^53"


def encode_id(value: Any) -> bytes:
    """A client's request id, encoded as JSON for replies (`with_id`): a string of at most MAX_ID_LENGTH
    characters, or an integer from 0 to MAX_ID (booleans are not integers here). Anything else raises
    ClientError `invalid JSON format` with a detail, and is never echoed."""
    if isinstance(value, str):
        if len(value) <= MAX_ID_LENGTH:
            return dumps(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return b"%d" % value
    raise ClientError(errors.INVALID_JSON, _BAD_ID)


def with_id(payload: bytes, encoded_id: bytes) -> bytes:
    """`payload` (one encoded JSON object) with `"id": encoded_id` added as its last key; anything that is
    not a compact object (`{...}`, as `encode` and `dumps` build them) is returned unchanged."""
    if payload[-1:] != b"}" or payload[:1] != b"{":
        return payload
    if len(payload) == 2:
        return b'{"id":%s}' % encoded_id
    return b'%s,"id":%s}' % (payload[:-1], encoded_id)


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether arrays and objects in `obj` nest deeper than `limit` (the message itself is level 1)."""
    level: list[Any] = [obj]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


# orjson reads integers beyond 64 bits as floats, and numbers beyond the double range as 0.0 (or refuses
# them). So a text orjson decodes without a single float is taken as it is: its integers are exact, of at most
# EXACT_DIGITS digits (max_number_digits is at least 40). Otherwise a run of 20 digits, or an exponent of three
# digits, sends the message to the stdlib parser, which keeps integers exact and checks each number (digits
# inside strings only cost speed).
EXACT_DIGITS: Final = 20  # the digits of 2**64 - 1, the largest integer orjson decodes as an int
_NEEDS_STDLIB = re.compile(r"\d{20}|[eE][+-]?0*[1-9]\d{2}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NONZERO_MANTISSA = re.compile(r"^[^eE]*[1-9]")
LONE_SURROGATE = "the text holds a lone surrogate (\\ud800-\\udfff), which UTF-8 cannot encode"


def loads(text: str | bytes, max_digits: int = MAX_NUMBER_DIGITS) -> Any:
    """Decode one JSON text strictly (RFC 8259); ClientError `invalid JSON format`, with a detail, otherwise.

    Refused, so that nothing undecodable or unrepresentable reaches the hub, a broker or history:
    text that is not JSON, the constants NaN and Infinity, strings with a lone surrogate escape
    (they cannot be encoded as UTF-8), numbers whose value a double cannot carry (they overflow to
    infinity, or a non-zero value underflows to zero), and numbers of more than `max_digits` digits
    (their conversion costs time quadratic in their length). Integers up to that length are kept exactly.
    """
    if isinstance(text, bytes):  # (json.loads would decode bytes with surrogatepass: strict UTF-8 first)
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise ClientError(errors.INVALID_JSON, "the text is not valid UTF-8") from None
    raw = text
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # the stdlib parser says precisely why, or accepts what orjson cannot (a lone surrogate)
    else:  # without a float, every number was an integer orjson kept exactly: at most EXACT_DIGITS digits
        if max_digits >= EXACT_DIGITS and not _holds_float(parsed):
            return parsed
        if _NEEDS_STDLIB.search(raw) is None:
            return parsed

    def parse_int(literal: str) -> int:
        _check_digits(literal, max_digits)
        return int(literal)

    def parse_float(literal: str) -> float:
        _check_digits(literal, max_digits)
        return _carried_float(literal)

    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=parse_float, parse_int=parse_int)
    except (ValueError, RecursionError):
        raise ClientError(errors.INVALID_JSON, "the frame is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            json.dumps(obj, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ClientError(errors.INVALID_JSON, LONE_SURROGATE) from None
    return obj


def _holds_float(obj: Any) -> bool:
    """Whether a float is anywhere in `obj` (as orjson decodes JSON: dicts, lists, strings, ints, floats, bools and
    None). A walk of the decoded values, containers only on its stack: cheaper than a regular expression over
    every character of the text."""
    kind = type(obj)
    if kind is not dict and kind is not list:
        return kind is float
    stack = [obj]
    while stack:
        item = stack.pop()
        for value in item.values() if type(item) is dict else item:
            kind = type(value)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(value)
    return False


def _check_digits(literal: str, max_digits: int) -> None:
    if sum(ch.isdigit() for ch in literal) > max_digits:
        raise ClientError(errors.INVALID_JSON, f"numbers may have at most {max_digits} digits")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _carried_float(literal: str) -> float:
    """A JSON number as a double, or ClientError when the double cannot carry its value."""
    value = float(literal)
    if math.isinf(value):
        raise ClientError(errors.INVALID_JSON, f"the number {_shorten(literal)} is too large: it overflows to infinity")
    if value == 0.0 and _NONZERO_MANTISSA.match(literal):
        raise ClientError(errors.INVALID_JSON, f"the number {_shorten(literal)} is too small: it underflows to zero")
    return value


def _shorten(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:10]}...{literal[-10:]}"


def dumps(obj: Any) -> bytes:
    """Encode strict JSON (RFC 8259) as UTF-8 bytes with orjson; the stdlib encodes integers beyond 64 bits.

    Raises ClientError (`invalid JSON format`) for what strict JSON cannot carry: data nested too
    deeply, infinite or NaN numbers, and strings with a lone surrogate.
    """
    try:
        encoded = orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        pass
    else:  # orjson writes a non-finite float as `null`, losing the value without a word: look for one
        if b"null" not in encoded or not _has_non_finite(obj):
            return encoded
        raise ClientError(errors.INVALID_JSON, NON_FINITE)
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except RecursionError:  # orjson decodes 1024 levels but encodes only 255; the stdlib fewer than 1000
        raise ClientError(errors.INVALID_JSON, "the message is nested too deeply") from None
    except UnicodeEncodeError:
        raise ClientError(errors.INVALID_JSON, LONE_SURROGATE) from None
    except ValueError as exc:  # allow_nan=False: Infinity and NaN are not JSON
        if "ircular" in str(exc):  # "Circular reference detected"
            raise ClientError(errors.INVALID_JSON, "the message contains itself (a circular reference)") from None
        raise ClientError(errors.INVALID_JSON, NON_FINITE) from None


NON_FINITE: Final = "numbers must be finite: JSON has no Infinity or NaN"


def _has_non_finite(obj: Any) -> bool:
    """Whether an infinite or NaN float is anywhere in `obj`, wherever orjson looks: dicts, lists, tuples,
    dataclasses and enums."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, Enum):
            stack.append(item.value)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return False


def now_ms() -> int:
    """Unix time in milliseconds: the `timestamp` of every server message."""
    return time.time_ns() // 1_000_000


_ABSENT: Any = object()


def encode(
    type: str,
    *,
    room: str | None = None,
    data: Any = _ABSENT,
    client_id: str | None = None,
    error: str | None = None,
    **extra: Any,
) -> bytes:
    """Build one server message in the spec's key order, stamped with `timestamp`.

    Keys that are None (or `data` when not given) are left out, as the spec's
    `omitempty` fields are; `extra` adds extension fields before `timestamp`.
    """
    obj: dict[str, Any] = {"type": type}
    if room is not None:
        obj["room"] = room
    if data is not _ABSENT:
        obj["data"] = data
    if client_id is not None:
        obj["client_id"] = client_id
    if error is not None:
        obj["error"] = error
    obj.update(extra)
    obj["timestamp"] = now_ms()
    return dumps(obj)


def encode_error(err: ClientError, coded: bool = False) -> bytes:
    """The `error` message for a ClientError (with `detail` when it has one); `coded` (protocol 2) adds the
    error's stable `code` and `temporary` (docs/protocol.md, "Error codes")."""
    extra: dict[str, Any] = {} if err.detail is None else {"detail": err.detail}
    if coded:
        extra["code"] = err.kind.code
        extra["temporary"] = err.kind.temporary
    return encode(ERROR, error=err.text, **extra)


# Protocol versions (docs/protocol.md, "Protocol versions"): a client asks for one with `/ws?protocol=N`.
GUIDE_PROTOCOL: Final = 1
"""The module guide's protocol: its messages, fields and bytes exactly (and the extensions a client opts into
per message: `id`, `skip_self`, `idempotency_key`). A client that asks for no version speaks this one."""
PROTOCOL: Final = 2
"""The newest version: every `error` has `code` and `temporary`, every close reason wsgate sends ends with its
reconnect advice, `connected` says the version, the extensions and the message types, and `unknown message
type` says which types the server knows."""
PROTOCOLS: Final = (GUIDE_PROTOCOL, PROTOCOL)
EXTENSIONS: Final = (
    "request_ids",
    "error_codes",
    "reconnect_advice",
    "server_subscriptions",
    "skip_self",
    "idempotency_key",
)
"""What protocol 2 speaks beyond the guide, as `connected.data.extensions` lists it (each on docs/protocol.md)."""

KEY_ONLY_ON_PUBLISH: Final = "field 'idempotency_key' is only taken on publish"
"""The `detail` of the `invalid JSON format` answer to a broadcast carrying an `idempotency_key`."""


def refuse_idempotency_key(fields: dict[str, Any]) -> None:
    """Raises ClientError (`invalid JSON format`, KEY_ONLY_ON_PUBLISH) when `fields` (a broadcast's: the client
    message's or the HTTP API's body) carry an `idempotency_key`: a broadcast takes none, and ignoring one would
    let its sender believe a retry is safe. JSON `null` is the field's absence (as for `id`)."""
    if fields.get("idempotency_key") is not None:
        raise ClientError(errors.INVALID_JSON, KEY_ONLY_ON_PUBLISH)


def negotiate(asked: str | None, *more: str | None) -> int:
    """The protocol version a connection speaks: `asked` is the `protocol` query parameter of `/ws` (None:
    the guide's), `more` any repetition of it. ClientError `unsupported protocol version`, with a detail, for a
    repeated parameter or any other text than one of PROTOCOLS in decimal."""
    if more:
        raise ClientError(errors.UNSUPPORTED_PROTOCOL, "give the protocol parameter once")
    if asked is None:
        return GUIDE_PROTOCOL
    for version in PROTOCOLS:
        if asked == str(version):
            return version
    raise ClientError(
        errors.UNSUPPORTED_PROTOCOL, f"ask for protocol {' or '.join(map(str, PROTOCOLS))} (?protocol={PROTOCOL})"
    )
