"""The server's errors and close reasons as values, and the base of its exceptions.

Modelled on centrifugal/centrifuge (`disconnect.go`: a Disconnect is a code, a reason and reconnect advice;
`errors.go`: an Error is a code, a message and whether it is temporary). Each value carries what goes on
the wire (exactly as before: the texts are a contract with clients) and the metric label it is counted
under, so nothing maps a text back to a label.

- `CloseReason`: why the server closes a WebSocket. Its `code` and `text` are the close frame's status code
  (RFC 6455 section 7.4) and reason; its `label` is the `reason` of `websocket_connections_closed_total`.
  `Connection.drop(SLOW_CONSUMER)` and `close_gracefully(SHUTTING_DOWN, timeout)` take one.
- `ErrorKind`: an error answered as `{"type":"error","error":text}` while the connection stays open; its
  `label` is the `reason` of `websocket_errors_total`. `ClientError` carries one.

- `CloseCode`: a close code wsgate sends (`CLOSE_CODES`, the registry) and the reconnect advice a client follows
  when the close frame's reason gives none.

Protocol 2 (`/ws?protocol=2`, docs/protocol.md "Protocol versions") puts an ErrorKind's `code` and `temporary`
on every `error`, and a CloseReason's `reconnect` at the end of the close frame's reason (`close_text`).
Protocol 1, the module guide's, sends exactly the guide's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final


class WsgateError(Exception):
    """The base of the exceptions wsgate raises itself (broker, presence, plugins, metrics, client errors)."""


class Reconnect(Enum):
    """What a client should do after a close (centrifuge's `Disconnect.Reconnect`, with its two speeds)."""

    NO = "no"  # do not come back: the same request would be refused again
    BACKOFF = "backoff"  # come back after a growing, jittered delay (to this node or another)
    NOW = "now"  # come back at once (to another node, or with a new token), and resume


ADVICE_PREFIX: Final = " [reconnect="
"""How protocol 2 ends a close frame's reason: `slow consumer [reconnect=backoff]` (`close_text`)."""
_LONGEST_ADVICE: Final = max(len(f"{ADVICE_PREFIX}{advice.value}]".encode()) for advice in Reconnect)
MAX_REASON_BYTES: Final = 123
"""The longest close reason, in bytes of UTF-8 (RFC 6455 section 5.5: a control frame's payload is at most 125
bytes, two of them the code)."""


@dataclass(frozen=True, slots=True)
class CloseReason:
    """Why the server closed a WebSocket: `code` and `text` go in the close frame, `label` is the metric's.

    `code` is one an endpoint may send (RFC 6455 sections 7.4.1 and 7.4.2, checked by `wire.close_fields`
    when the frame is built); `text` is at most 123 bytes of UTF-8 (longer is cut on a character boundary).
    """

    code: int
    text: str
    label: str
    reconnect: Reconnect

    def __str__(self) -> str:
        return self.text


def close_text(reason: CloseReason, advise: bool) -> str:
    """The reason a close frame carries: `reason.text`, and with `advise` (protocol 2) its reconnect advice at
    the end, `disconnected by an operator [reconnect=no]`. The text is cut on a character boundary so that
    the advice always fits in MAX_REASON_BYTES; a lone surrogate becomes "?" (as `wire.close_fields` does).
    Never raises."""
    if not advise:
        return reason.text
    room = MAX_REASON_BYTES - _LONGEST_ADVICE
    text = reason.text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")  # (a lone surrogate: "?")
    return f"{text}{ADVICE_PREFIX}{reason.reconnect.value}]"


@dataclass(frozen=True, slots=True)
class CloseCode:
    """A close code wsgate sends (RFC 6455 section 7.4) and what a client should do after it when the close
    frame's reason carries no advice (protocol 1, or a close aiohttp or a proxy sent): `reconnect`."""

    code: int
    name: str
    reconnect: Reconnect
    when: str


# Close codes (RFC 6455 section 7.4.1; 4000-4999 are private use, section 7.4.2).
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
TOO_BIG: Final = 1009
INTERNAL_ERROR_CODE: Final = 1011
SERVICE_RESTART_CODE: Final = 1012
TRY_AGAIN_LATER: Final = 1013
TOKEN_EXPIRED_CODE: Final = 4001

SLOW_CONSUMER: Final = CloseReason(POLICY_VIOLATION, "slow consumer", "slow_consumer", Reconnect.BACKOFF)
"""What waits for the client passed `websocket.send_queue_size` messages or `send_queue_bytes` bytes (the
spec's slow-consumer rule; RFC 6455 section 7.4.1: 1008, a message that violates the server's policy)."""

WRITE_TIMEOUT: Final = CloseReason(POLICY_VIOLATION, "write timeout", "write_timeout", Reconnect.BACKOFF)
"""A write to the client did not complete within `websocket.write_wait` (the spec's write deadline; 1008)."""

WRITE_FAILED: Final = CloseReason(GOING_AWAY, "write failed", "other", Reconnect.BACKOFF)
"""The transport refused a write (never expected: logged with its traceback); 1001, counted as `other`."""

KEEPALIVE_TIMEOUT: Final = CloseReason(GOING_AWAY, "keepalive timeout", "keepalive_timeout", Reconnect.BACKOFF)
"""The client sent nothing for `websocket.pong_wait` and did not answer a ping (the spec's keepalive,
docs/protocol.md; 1001: the server goes away from a peer it no longer hears), or the keepalive itself failed."""

SHUTTING_DOWN: Final = CloseReason(GOING_AWAY, "server shutting down", "shutdown", Reconnect.BACKOFF)
"""The node drains (`shutdown.mode = "drain"`) or was draining when the client arrived (RFC 6455 section
7.4.1: 1001, a server going down); reconnect, to another node."""

INTERNAL_CLOSE: Final = CloseReason(INTERNAL_ERROR_CODE, "internal error", "other", Reconnect.BACKOFF)
"""wsgate failed while taking one of the client's frames (never expected: a bug, logged with its traceback)."""
SERVICE_RESTART: Final = CloseReason(SERVICE_RESTART_CODE, "service restart", "restart", Reconnect.NOW)
"""`shutdown.mode = "restart"`: the node restarts; reconnect at once (to another node) and resume (1012, the
IANA "Service Restart" code, RFC 6455 section 11.7)."""

MESSAGE_TOO_BIG: Final = CloseReason(TOO_BIG, "message too big", "message_too_big", Reconnect.BACKOFF)
"""The client sent a message over `websocket.max_message_size` (1009, RFC 6455 section 7.4.1). aiohttp sends
this close frame itself; the value names it for the metric and the log. A new connection works (sending that
message again would fail again)."""

RATE_LIMIT_EXCEEDED: Final = CloseReason(POLICY_VIOLATION, "rate limit exceeded", "rate_limited", Reconnect.BACKOFF)
"""The client stayed over its rate limit for `websocket.limits.rate_limit_grace` (docs/protocol.md; 1008)."""

OPERATOR_DISCONNECT: Final = CloseReason(POLICY_VIOLATION, "disconnected by an operator", "operator", Reconnect.NO)
"""An operator closed the client from the dashboard (`dashboard_disconnect`, docs/operations.md, "Dashboard"; 1008)."""

SERVER_DISCONNECT: Final = CloseReason(POLICY_VIOLATION, "disconnected by the server", "server", Reconnect.NO)
"""A service closed the client through the HTTP API (`POST /api/disconnect`, docs/protocol.md, "Server-side
subscriptions"; 1008), by its client id or its user id, on whichever node holds it."""

TOKEN_EXPIRED: Final = CloseReason(TOKEN_EXPIRED_CODE, "token expired", "token_expired", Reconnect.NOW)
"""The client's token expired and was not refreshed (docs/security.md, "Authentication"; 4001, private use, RFC 6455
section 7.4.2); reconnect at once with a new token."""

SERVER_FULL: Final = CloseReason(TRY_AGAIN_LATER, "server is at maximum capacity", "server_full", Reconnect.BACKOFF)
"""`websocket.limits.max_connections` reached: sent after the spec's `server is at maximum capacity` error
(1013, "Try Again Later", RFC 6455 section 11.7). The socket is refused before it is a client: never counted
as a closed connection."""

SESSION_ENDED = "dashboard session ended"
"""The beginning of every dashboard session close reason; the rest says why."""
DASHBOARD_LOGGED_OUT: Final = CloseReason(POLICY_VIOLATION, f"{SESSION_ENDED}: logged out", "other", Reconnect.NO)
"""The dashboard login a socket was opened with was logged out (docs/operations.md; 1008, counted as `other`)."""

DASHBOARD_EXPIRED: Final = CloseReason(POLICY_VIOLATION, f"{SESSION_ENDED}: expired", "other", Reconnect.NO)
"""The dashboard login a socket was opened with passed `dashboard.session_ttl` (1008, counted as `other`)."""

DASHBOARD_REPLACED: Final = CloseReason(
    POLICY_VIOLATION, f"{SESSION_ENDED}: replaced by a new login", "other", Reconnect.NO
)
"""The dashboard login a socket was opened with was replaced by a newer one (1008, counted as `other`)."""

CLOSE_CODES: Final = (
    CloseCode(1000, "normal closure", Reconnect.BACKOFF, "The answer to the client's own close, or a plugin's close."),
    CloseCode(1001, "going away", Reconnect.BACKOFF, "The node shuts down, or stopped hearing the client."),
    CloseCode(1002, "protocol error", Reconnect.BACKOFF, "The client broke RFC 6455 (aiohttp's answer)."),
    CloseCode(1007, "invalid payload data", Reconnect.BACKOFF, "A text frame that is not UTF-8 (aiohttp's answer)."),
    CloseCode(
        1008,
        "policy violation",
        Reconnect.BACKOFF,
        "A limit or an operator closed the client; the reason says which, and whether to come back.",
    ),
    CloseCode(1009, "message too big", Reconnect.BACKOFF, "A message over `websocket.max_message_size`."),
    CloseCode(1011, "internal error", Reconnect.BACKOFF, "The server failed (a proxy's or a plugin's close)."),
    CloseCode(1012, "service restart", Reconnect.NOW, "The node restarts: come back at once and resume."),
    CloseCode(1013, "try again later", Reconnect.BACKOFF, "The node is full (`websocket.limits.max_connections`)."),
    CloseCode(4001, "token expired", Reconnect.NOW, "The token expired: come back at once with a new one."),
)
"""The registry of close codes wsgate sends, and the advice for each when the reason gives none (the clients
carry the same table; the advice in a protocol 2 reason comes first). A code not listed: `backoff`. No code says
`no` by itself: a closed connection's cause (an oversized message, a bad frame) is not sent again by a new one;
only a reason does (an operator's or the server's disconnect, a dashboard session that ended)."""

RECONNECT_BY_CODE: Final = {close.code: close.reconnect for close in CLOSE_CODES}

CLOSE_REASONS: Final = (
    SLOW_CONSUMER,
    WRITE_TIMEOUT,
    WRITE_FAILED,
    KEEPALIVE_TIMEOUT,
    SHUTTING_DOWN,
    SERVICE_RESTART,
    MESSAGE_TOO_BIG,
    RATE_LIMIT_EXCEEDED,
    OPERATOR_DISCONNECT,
    SERVER_DISCONNECT,
    TOKEN_EXPIRED,
    SERVER_FULL,
    DASHBOARD_LOGGED_OUT,
    DASHBOARD_EXPIRED,
    DASHBOARD_REPLACED,
)
"""Every close the server sends itself."""

CLIENT_CLOSED_LABEL: Final = "client"
"""The metric label of a connection the client closed (or that was lost): no CloseReason of the server's."""

_CLOSE_BY_TEXT: Final = {reason.text: reason for reason in CLOSE_REASONS}


def plugin_close(code: int, text: str) -> CloseReason:
    """The CloseReason of a plugin's `client.drop(code, text)`: counted as `other`, unless `text` is word for
    word one of the server's own reasons (then under its label), or empty (`client`, as a close without a
    reason always was). `code` is sent as given (checked when the frame is built)."""
    known = _CLOSE_BY_TEXT.get(text)
    if known is not None and known.code == code:
        return known
    label = known.label if known else CLIENT_CLOSED_LABEL if not text else "other"
    return CloseReason(code, text, label, RECONNECT_BY_CODE.get(code, Reconnect.BACKOFF))


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One error a client is answered with: `text` is the `error` field (exactly: clients match it), `label`
    the `reason` of `websocket_errors_total`, `temporary` whether the same request may succeed later.

    `code` is a stable number: wsgate's own are 100-999 (`CLIENT_ERRORS`), a plugin's are in PLUGIN_CODES.
    Protocol 2 sends `code` and `temporary` beside the text (docs/protocol.md, "Error codes").
    """

    code: int
    text: str
    label: str
    temporary: bool = False

    def __str__(self) -> str:
        return self.text


# The spec's error texts ("Error Messages"), exactly.
INVALID_JSON: Final = ErrorKind(100, "invalid JSON format", "invalid_json")
"""The message could not be parsed (the spec), or is not a JSON object of the documented shape."""
UNKNOWN_TYPE: Final = ErrorKind(101, "unknown message type", "unknown_type")
"""No plugin handles the message's type (the spec)."""
ROOM_REQUIRED: Final = ErrorKind(102, "room name is required", "room_required")
"""The message needs a room and names none (the spec)."""
NOT_SUBSCRIBED: Final = ErrorKind(103, "not subscribed to this room", "not_subscribed")
"""Publishing to, or leaving, a room the client is not in (the spec)."""
ROOM_FULL: Final = ErrorKind(104, "room is at maximum capacity", "room_full", temporary=True)
"""`websocket.limits.max_connections_per_room` reached (the spec)."""
SERVER_FULL_ERROR: Final = ErrorKind(105, "server is at maximum capacity", "server_full", temporary=True)
"""`websocket.limits.max_connections` reached (the spec); followed by the close `SERVER_FULL`."""

# The texts wsgate adds (docs/protocol.md, "Error texts and close codes").
ROOM_TOO_LONG: Final = ErrorKind(110, "room name is too long", "room_too_long")
"""A room name over `websocket.limits.max_room_name_length` characters."""
INVALID_ROOM: Final = ErrorKind(111, "invalid room name", "invalid_room")
"""A room name with a control character, or not matching `websocket.limits.room_name_pattern`."""
TOO_DEEP: Final = ErrorKind(112, "message is nested too deeply", "too_deep")
"""Arrays and objects nested past `websocket.limits.max_json_depth`."""
BINARY_NOT_SUPPORTED: Final = ErrorKind(113, "binary frames are not supported", "binary_frame")
"""A binary frame: messages are JSON text frames."""
UNSUPPORTED_PROTOCOL: Final = ErrorKind(114, "unsupported protocol version", "unsupported_protocol")
"""`/ws?protocol=N` with a version this server does not speak: refused before the upgrade, with HTTP 400."""
UPGRADE_REQUIRED: Final = ErrorKind(115, "WebSocket upgrade required", "not_websocket")
"""A request to `/ws` that is not a WebSocket opening handshake (RFC 6455 section 4.2.1), such as a plain
GET: refused with HTTP 426 (400 for a malformed handshake), with a detail saying what is missing."""
MESSAGE_TOO_LARGE: Final = ErrorKind(116, "message is too large", "message_too_large")
"""A message that, encoded as its members get it or in a `history` answer, would not fit in what may wait for one
client (`websocket.send_queue_bytes`, less about 2 KiB: `overhead.largest_message`): refused to its publisher (a
client, plugin code, the HTTP API: 413), delivered nowhere, rather than closing every member as a slow consumer.
A client's publish grows as it is encoded (`1e15` becomes `1000000000000000.0`, and the envelope is added), so
one under `max_message_size` can meet it."""
TOO_MANY_ROOMS: Final = ErrorKind(120, "too many rooms", "too_many_rooms")
"""`websocket.limits.max_rooms_per_client` reached."""
RATE_LIMITED: Final = ErrorKind(121, "rate limit exceeded", "rate_limited", temporary=True)
"""Over `websocket.limits.messages_per_second` or `bytes_per_second`: the message was dropped."""
NOT_ALLOWED: Final = ErrorKind(122, "not allowed", "not_allowed")
"""Refused by `[auth]` rules, a token's claims or a plugin's `wsgate_authorize`."""
INVALID_TOKEN: Final = ErrorKind(123, "invalid token", "invalid_token")
"""A `refresh` whose token the JWT authenticator refuses."""
NO_HISTORY: Final = ErrorKind(130, "room has no history", "no_history")
"""`history` for a room `history.rooms` does not include."""
HISTORY_UNAVAILABLE: Final = ErrorKind(131, "history is unavailable", "history_unavailable", temporary=True)
"""The history store (Redis) cannot be reached: try again."""
PUBLISH_OUTCOME_UNKNOWN: Final = ErrorKind(132, "publish outcome unknown", "publish_outcome_unknown", temporary=True)
"""Redis took the message and did not answer in time: it may have been delivered (DESIGN "The fault model")."""
NO_PRESENCE: Final = ErrorKind(133, "room has no presence", "no_presence")
"""`presence` for a room `presence.rooms` does not include."""
PRESENCE_UNAVAILABLE: Final = ErrorKind(134, "presence is unavailable", "presence_unavailable", temporary=True)
"""The presence store (Redis) cannot be reached: try again."""
INTERNAL_ERROR: Final = ErrorKind(500, "internal error", "handler_error", temporary=True)
"""A handler or hook raised (logged with its traceback), or ran past `plugins.hook_timeout` (`HookTimedOut`,
with a detail; that timeout is counted once more, as `hook_timeout`, where it is caught)."""

CLIENT_ERRORS: Final = (
    INVALID_JSON,
    UNKNOWN_TYPE,
    ROOM_REQUIRED,
    NOT_SUBSCRIBED,
    ROOM_FULL,
    SERVER_FULL_ERROR,
    ROOM_TOO_LONG,
    INVALID_ROOM,
    TOO_DEEP,
    BINARY_NOT_SUPPORTED,
    UNSUPPORTED_PROTOCOL,
    UPGRADE_REQUIRED,
    MESSAGE_TOO_LARGE,
    TOO_MANY_ROOMS,
    RATE_LIMITED,
    NOT_ALLOWED,
    INVALID_TOKEN,
    NO_HISTORY,
    HISTORY_UNAVAILABLE,
    PUBLISH_OUTCOME_UNKNOWN,
    NO_PRESENCE,
    PRESENCE_UNAVAILABLE,
    INTERNAL_ERROR,
)
"""Every documented error."""

_ERROR_BY_TEXT: Final = {kind.text: kind for kind in CLIENT_ERRORS}


PLUGIN_CODES: Final = range(1000, 2000)
"""The codes a plugin's own errors may carry (`ClientError("quota exceeded", code=1001)`); 1000 is the code
of a plugin's error that names none. wsgate's own codes stay below 1000."""
PLUGIN_ERROR_CODE: Final = PLUGIN_CODES.start


def plugin_error(text: str, code: int | None = None, temporary: bool = False) -> ErrorKind:
    """The ErrorKind of `ClientError(text, code=..., temporary=...)` raised with a plain text (a plugin's, or a
    documented one): the documented kind with that text, or a plugin's own error, counted as `rejected` (labels
    stay bounded) with `code` (PLUGIN_ERROR_CODE when None). ValueError for a code outside PLUGIN_CODES, or a
    code or `temporary` given with a documented text (it has its own)."""
    known = _ERROR_BY_TEXT.get(text)
    if known is not None:
        if code is not None or temporary:
            raise ValueError(f"{text!r} is wsgate's own error, with its own code: raise it without code and temporary")
        return known
    if code is None:
        code = PLUGIN_ERROR_CODE
    elif isinstance(code, bool) or not isinstance(code, int) or code not in PLUGIN_CODES:
        raise ValueError(f"a plugin's error code must be an integer from {PLUGIN_CODES.start} to {PLUGIN_CODES[-1]}")
    return ErrorKind(code, text, "rejected", temporary)


class ClientError(WsgateError):
    """Answered to the client as `{"type":"error","error":text}`; the connection stays open.

    `ClientError(text, detail=None, *, code=None, temporary=False)`: `text` is an ErrorKind
    (`wsgate.errors.NOT_ALLOWED`) or its text (`wsgate.protocol.NOT_ALLOWED`), or a plugin's own text, counted
    as `rejected`, with its own `code` from PLUGIN_CODES and whether retrying can help (`temporary`); protocol 2
    clients get both. `detail`, when given, is sent as an extra `detail` field that says precisely what was
    wrong. ValueError for a code outside PLUGIN_CODES, or a code given with a documented error.
    """

    def __init__(
        self, text: ErrorKind | str, detail: str | None = None, *, code: int | None = None, temporary: bool = False
    ) -> None:
        if isinstance(text, ErrorKind):
            if code is not None or temporary:
                raise ValueError(f"{text.text!r} has its own code: raise it without code and temporary")
            self.kind = text
        else:
            self.kind = plugin_error(text, code, temporary)
        super().__init__(self.kind.text)
        self.text = self.kind.text
        self.detail = detail


class ClientGone(WsgateError):
    """The client left (or is being closed) while a handler or hook awaited: it is never joined,
    counted or written to presence after that. Handlers need not catch it: the dispatcher ends the
    message quietly (a hook that lets it escape is logged)."""
