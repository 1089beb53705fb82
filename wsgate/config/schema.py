"""The settings' schema: every setting's type, default, bounds and meaning, declared once.

Each `[table]` of the settings file is a frozen pydantic model below; each setting a field whose type says how
a value is checked and what it becomes (durations in seconds, room rules parsed, the room name pattern
compiled), whose `Field` gives the default, the bounds (`ge`/`le`) and the doc text (`description`, from which
docs/configuration.md's table is generated), and whose variable follows from its key (`env_name`). pydantic
validates and converts; the custom types are pydantic validators (`Annotated[..., BeforeValidator]`), each
raising a `PydanticCustomError` whose context reads "expected ..." (`wsgate.config.errors` turns them into
one-line messages).

Values arrive in two shapes: TOML values from the settings file (or Python values from `overrides`), checked
strictly (`port = "80"` is refused: the file says what it means), and `EnvText` from variables, whose text the
field's type reads, unquoted when it is a quoted TOML string (`"8081"`, as `docker run --env-file` keeps it):
integers as optional minus and digits, numbers as Python's `float`, booleans as true/false, 1/0 or yes/no in any
case, lists as TOML lists, text as written (the grammar docs/configuration.md states).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..origins import host_problem, origin_problem
from ..regex import LinearPattern
from ..rooms import REQUIREMENT, RoomRule

SPEC_ENV_PREFIX = "WEBSOCKET_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
RESERVED_PATHS = ("/ws", "/health", "/ready", "/client.js", "/dashboard", "/api/publish", "/api/broadcast")
LIST_EXPECTED = 'a list of strings, e.g. ["a", "b"]'


@dataclass(frozen=True, slots=True)
class EnvText:
    """A value from an environment variable: `text` as the variable holds it, `value` as TOML reads it
    (dynaconf's `parse_with_toml`: `12345` an int, `["a"]` a list, `"300ms"` the string, anything else the text),
    `variable` its name. The field's type chooses: text where text is wanted (`12345` stays a string)."""

    text: str
    value: Any
    variable: str


# --- errors the types raise: wsgate.config.errors reads their context ------------------------------------------


def expected(what: str) -> PydanticCustomError:
    """The value is refused: "invalid setting <key> = <value>: expected <what>"."""
    return PydanticCustomError("wsgate_expected", "expected {expected}", {"expected": what})


def entry_refused(entry: str, problem: str) -> PydanticCustomError:
    """One entry of a list is refused: "invalid setting <key> entry <entry>: <problem>"."""
    return PydanticCustomError("wsgate_entry", "entry {entry}: {problem}", {"entry": entry, "problem": problem})


def refused_unshown(problem: str) -> PydanticCustomError:
    """A secret is refused without showing it: "invalid setting <key>: <problem>"."""
    return PydanticCustomError("wsgate_unshown", "{problem}", {"problem": problem})


# --- markers and types ----------------------------------------------------------------------------------------


class Marker:
    """What a setting's type says beyond pydantic: `Annotated[..., SECRET]`."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SECRET = Marker("SECRET")
"""Shown as *** by `wsgate config` and masked in logs (`secrets_of`)."""
DURATION = Marker("DURATION")
"""Seconds, written as a Go-style duration ("54s"), shown as one."""
PATH = Marker("PATH")
"""A file's path (or the file's text): relative ones are relative to the settings file that sets them."""


def _unquoted(value: EnvText) -> str:
    """A variable's text, without the quotes of a quoted TOML string (`"8081"`, as `docker run --env-file` keeps
    them): the text the setting's type reads."""
    text = value.text
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and isinstance(value.value, str):
        return value.value
    return text


def _text(value: Any) -> Any:
    """A variable's text where text is wanted, unquoted (`12345` stays the string "12345")."""
    return _unquoted(value) if isinstance(value, EnvText) else value


def _utf8(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise expected("text that UTF-8 can encode (no lone surrogates)") from None
    return value


_INTEGER = re.compile(r"\s*-?\d+\s*")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _integer(value: Any) -> Any:
    """A variable's integer: optional minus and digits, surrounding blanks allowed (docs/configuration.md)."""
    if not isinstance(value, EnvText):
        return value
    text = _unquoted(value)
    if not _INTEGER.fullmatch(text):
        raise expected("an integer")
    return int(text)


def _number(value: Any) -> Any:
    """A variable's number, as Python's `float` reads it (finite: the model refuses inf and nan)."""
    if not isinstance(value, EnvText):
        return value
    try:
        return float(_unquoted(value))
    except ValueError:
        raise expected("a number") from None


def _flag(value: Any) -> Any:
    """A variable's boolean: true/false, 1/0 or yes/no, in any case, surrounding blanks allowed."""
    if not isinstance(value, EnvText):
        return value
    flag = _BOOLEANS.get(_unquoted(value).strip().lower())
    if flag is None:
        raise expected("true or false (or 1/0, yes/no)")
    return flag


def _duration(value: Any, info: ValidationInfo) -> Any:
    """A Go-style duration string into seconds. From a settings file only strings ("54s"); in Python (no
    validation context) seconds as a number too."""
    value = _text(value)
    if not isinstance(value, str):
        if info.context is None and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise expected('a duration string such as "54s", "500ms" or "1m"')
    seconds = parse_duration(value)
    if seconds is None or not math.isfinite(seconds):
        raise expected('a duration such as "54s", "500ms" or "1m" (units: ns, us, ms, s, m, h)')
    return seconds


def _list(value: Any) -> Any:
    """A list: from a variable, its (unquoted) text read as a TOML list (`["a", "b"]`)."""
    if isinstance(value, EnvText):
        try:
            value = tomllib.loads(f"value = {_unquoted(value)}")["value"]
        except tomllib.TOMLDecodeError:
            raise expected(LIST_EXPECTED) from None
    return tuple(value) if isinstance(value, list) else value


def OneOf(choices: tuple[str, ...]) -> AfterValidator:  # (named as the type it makes)
    """One of `choices`, in any case; the value becomes the choice as spelled here ("debug" -> "DEBUG")."""

    def check(value: str) -> str:
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
        raise expected("one of " + ", ".join(choices))

    return AfterValidator(check)


def Matching(pattern: str, what: str) -> AfterValidator:  # (named as the type it makes)
    """Text that `pattern` matches in full; else "expected <what>"."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise expected(what)
        return value

    return AfterValidator(check)


def _room_name_pattern(value: Any) -> Any:
    value = _text(value)
    if value is None or isinstance(value, LinearPattern):
        return value
    if not isinstance(value, str):
        raise expected("a string")
    if not value:
        return None
    try:
        return LinearPattern(value)
    except ValueError as exc:
        raise expected(f"a regular expression ({exc})") from None


def _room_rule(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # a RoomRule already, or refused as no string
    try:
        return RoomRule.parse(value)
    except ValueError as exc:
        raise entry_refused(value, str(exc)) from None


def _origin(value: str) -> str:
    if value != "*" and (problem := origin_problem(value)):
        raise entry_refused(value, problem)
    return value


def _host(value: str) -> str:
    if problem := host_problem(value):
        raise entry_refused(value, problem)
    return value


def _not_reserved(value: str) -> str:
    if value in RESERVED_PATHS:
        raise expected("a path other than " + ", ".join(RESERVED_PATHS))
    return value


def _password(value: str) -> str:
    if value and len(value) < 12:
        raise refused_unshown("expected at least 12 characters")
    return value


Int = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text), AfterValidator(_utf8)]
Texts = Annotated[tuple[Text, ...], BeforeValidator(_list)]
Secret = Annotated[Text, SECRET]
PathText = Annotated[Text, PATH]
Duration = Annotated[float, BeforeValidator(_duration), DURATION]
Password = Annotated[Secret, AfterValidator(_password)]
MetricsPath = Annotated[Text, Matching(r"/\S*", 'a path starting with "/"'), AfterValidator(_not_reserved)]
Origins = Annotated[tuple[Annotated[Text, AfterValidator(_origin)], ...], BeforeValidator(_list)]
Hosts = Annotated[tuple[Annotated[Text, AfterValidator(_host)], ...], BeforeValidator(_list)]
RoomRules = Annotated[tuple[Annotated[RoomRule, BeforeValidator(_room_rule)], ...], BeforeValidator(_list)]
"""`auth.rooms`: each rule parsed once, here (`wsgate.rooms.RoomRule`)."""
RoomNamePattern = Annotated[LinearPattern | None, BeforeValidator(_room_name_pattern)]
"""`websocket.limits.room_name_pattern`: compiled once, here (None: no pattern)."""


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None) -> Any:
    """One setting's default, meaning (docs/configuration.md's table is generated from it) and bounds."""
    return Field(default, description=doc, ge=minimum, le=maximum)


def _freeze(value: Any) -> Any:
    """Read-only copies of a plugin's tables and lists (plugins get immutable settings too)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class Table(BaseModel):
    """One table of settings: frozen, strict about the file's types, no unknown keys."""

    model_config = ConfigDict(
        frozen=True, strict=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True
    )

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"settings are read-only: cannot set {name}")


class LimitsSettings(Table):
    max_connections: Int = setting(0, "Global max connections (0 = unlimited)", minimum=0)
    max_connections_per_room: Int = setting(0, "Per-room limit (0 = unlimited)", minimum=0)
    max_connections_per_ip: Int = setting(
        0, "Connections one client address may hold; more get 429 before the upgrade (0 = unlimited)", minimum=0
    )
    max_rooms_per_client: Int = setting(0, "Rooms one client may be in at once (0 = unlimited)", minimum=0)
    max_room_name_length: Int = setting(256, "Longest accepted room name, in characters", minimum=1)
    room_name_pattern: RoomNamePattern = setting(
        None,
        'Regular expression every room name must match in full, e.g. "[A-Za-z0-9:_.-]+" '
        "(empty: any name without control characters); run by RE2, in time linear in the name: no lookaround "
        "or backreference",
    )
    max_json_depth: Int = setting(32, "Deepest accepted nesting of arrays and objects in a client message", minimum=1)
    max_number_digits: Int = setting(
        100,
        "Most digits a number in a client message (or an API body) may have; more is refused "
        "(converting long numbers costs time quadratic in their length)",
        minimum=40,
        maximum=4000,
    )
    messages_per_second: Number = setting(
        0.0, "Messages a client may send per second, sustained (token bucket; 0 = unlimited)", minimum=0
    )
    burst: Int = setting(
        0, "Messages a client may send at once above the sustained rate (0: one second's worth)", minimum=0
    )
    bytes_per_second: Int = setting(
        0,
        "Characters of text frames a client may send per second, sustained; bursts of one second (0 = unlimited)",
        minimum=0,
    )
    rate_limit_grace: Duration = setting(
        10.0, "A client kept over a rate limit this long is closed with 1008", minimum=0.001
    )


class WebSocketSettings(Table):
    enabled: Flag = setting(
        False,
        "Serve the `/ws` endpoint (when false `/ws` answers 404 with a JSON reason; "
        "`/health`, `/ready` and `/metrics` still answer)",
    )
    host: Text = setting("0.0.0.0", "Server host interface")
    port: Int = setting(8081, "Server port (0 picks a free port)", minimum=0, maximum=65535)
    timeout: Duration = setting(
        30.0,
        "Graceful shutdown budget: clients are closed and the process exits within it",
        minimum=0.001,
    )
    read_buffer_size: Int = setting(
        1024, "Accepted for compatibility; aiohttp sizes its read buffers itself", minimum=1
    )
    write_buffer_size: Int = setting(
        1024, "Accepted for compatibility; aiohttp sizes its write buffers itself", minimum=1
    )
    max_message_size: Int = setting(
        512000, "Largest accepted client message in bytes; larger closes with 1009", minimum=1
    )
    ping_interval: Duration = setting(54.0, "Interval between keepalive pings", minimum=0.001)
    pong_wait: Duration = setting(
        60.0,
        "A client silent (no pong, no message) this long is dropped; must exceed ping_interval",
        minimum=0.001,
    )
    write_wait: Duration = setting(
        10.0,
        "A write to a client that cannot complete in this time drops the client",
        minimum=0.001,
    )
    compression: Flag = setting(False, "Negotiate permessage-deflate (costs CPU and memory per client)")
    send_queue_size: Int = setting(
        256,
        "Messages buffered per client; a client that falls further behind is closed with 1008",
        minimum=1,
    )
    send_queue_bytes: Int = setting(
        4_194_304,
        "Bytes that may wait for one client, whatever holds them (its outbox, replays and history "
        "answers, live messages held while its history is read, pongs, the socket's own buffer); a client "
        "that would pass it is closed with 1008 as a slow consumer",
        minimum=65_536,
    )
    limits: LimitsSettings = Field(default_factory=LimitsSettings)


class PluginsSettings(Table):
    disabled: Texts = setting((), "Plugin names not to load (built-in, entry point or module)")
    modules: Texts = setting((), "Dotted module paths to load as plugins without packaging them")
    strict: Flag = setting(True, "A plugin that fails to load stops start-up (false: skip it with a warning)")
    startup_timeout: Duration = setting(
        10.0,
        "Longest a plugin's start-up or shutdown (and a service's start/close) may take",
        minimum=0.001,
    )
    hook_timeout: Duration = setting(
        10.0,
        "Longest a hook or message handler may take for a client (authenticate, authorize, handlers, "
        "client_connected/disconnected); past it, it is cancelled and logged, and the client gets a temporary "
        "internal error",
        minimum=0.001,
    )
    options: Annotated[Mapping[str, Mapping[str, Any]], SkipValidation] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    """Every other `[plugins.<name>]` table: that plugin's own settings, read-only."""

    @model_validator(mode="before")
    @classmethod
    def _plugin_tables(cls, data: Any) -> Any:
        """Every table that is no setting of this one is a plugin's: into `options`, frozen."""
        if not isinstance(data, Mapping):
            return data
        tables = {k: v for k, v in data.items() if k not in cls.model_fields and isinstance(v, Mapping)}
        if not tables:
            return data
        known = {k: v for k, v in data.items() if k not in tables}
        return {**known, "options": _freeze(tables)}


class BrokerSettings(Table):
    url: Annotated[
        Text, Matching(r"|(redis|rediss|unix)://\S+", "empty, or a URL starting with redis://, rediss:// or unix://")
    ] = setting(
        "",
        'Empty: in-memory (one process). "redis://host:6379/0": rooms span every node sharing that Redis',
    )
    prefix: Annotated[Text, Matching(r"[A-Za-z0-9_.:-]+", "letters, digits and _ . : -")] = setting(
        "wsgate",
        "Prefix of the Redis channel names (separate clusters on one Redis)",
    )
    required: Flag = setting(True, "Redis unreachable at start-up stops start-up (false: start degraded and retry)")
    connect_timeout: Duration = setting(5.0, "How long to wait for Redis when connecting", minimum=0.001)
    probe_interval: Duration = setting(
        5.0,
        "How often a node checks that its Redis subscription still hears (it resubscribes when the probe is "
        "not back within connect_timeout)",
        minimum=0.01,
    )
    unshared_workers: Flag = setting(
        False,
        "Allow several gunicorn workers with the in-memory broker (each keeps its own rooms: a publish "
        "reaches only its worker's clients); without it they refuse to start",
    )
    linger: Duration = setting(
        0.001,
        "How long a batch for Redis may wait for more messages (0: never). Only right after Redis answered the "
        "previous batch, while messages are queued, and only until as many are queued as the answered batch and "
        "the queue held together: a publisher with many in flight gets full batches, a lone publish never waits; a "
        "publish that waited may wait this long beyond connect_timeout for its answer",
        minimum=0,
        maximum=1.0,
    )
    publish_queue: Int = setting(
        10000,
        "Messages waiting to go to Redis; beyond this they reach local clients only (counted), and messages "
        "for rooms with history are refused",
        minimum=1,
    )


class ApiSettings(Table):
    key: Secret = setting(
        "", "Bearer key for the HTTP API (POST /api/publish, /api/broadcast, /api/subscribe, ...); empty disables it"
    )
    server_id: Text = setting("", "client_id stamped on messages sent through the API (empty: no client_id)")
    max_body_size: Int = setting(512000, "Largest accepted API request body, in bytes", minimum=1)


class SecuritySettings(Table):
    allowed_origins: Origins = setting(
        (),
        'Origins (exact, e.g. "https://app.example.com") allowed to open /ws from a browser; '
        'empty: same host and no Origin only; ["*"]: any',
    )
    allowed_hosts: Hosts = setting(
        (),
        'Host names this gateway serves (e.g. ["gw.example.com", "10.0.0.5:8081"]); other Host headers get 421. '
        'Empty: any Host (then a DNS-rebinding page is "same host" to the Origin check)',
    )
    request_timeout: Duration = setting(
        10.0,
        "A connection that has not sent a complete HTTP request within this (slow or unfinished headers), "
        "or an HTTP connection idle this long, is closed",
        minimum=0.1,
    )


class JwtSettings(Table):
    secret: Secret = setting(
        "", "Shared secret for HS256 tokens; setting it (or public_key) turns the JWT authenticator on"
    )
    public_key: PathText = setting(
        "",
        "PEM public key, or the path of a PEM file (relative: to the settings file's directory), for RS256/ES256 "
        "tokens (turns the JWT authenticator on)",
    )
    algorithms: Texts = setting(
        (), "Accepted signature algorithms (empty: HS256 with secret; RS256 and ES256 with public_key)"
    )
    audience: Text = setting("", "Required `aud` claim (empty: not checked)")
    issuer: Text = setting("", "Required `iss` claim (empty: not checked)")
    leeway: Duration = setting(30.0, "Clock difference allowed when checking `exp` and `nbf`", minimum=0)
    query_param: Flag = setting(
        False, "Also accept the token as `?token=` (off: query strings end up in access and proxy logs)"
    )
    rooms_claim: Text = setting(
        "rooms", "Claim listing the rooms (names or glob patterns) a token may subscribe and publish to"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key)


class AuthSettings(Table):
    required: Flag = setting(False, "Refuse (401, before the upgrade) clients no authenticator identified")
    rooms: RoomRules = setting(
        (),
        'Room rules "<pattern> = <requirement>", first match wins, e.g. '
        '["private-* = identity", "user:{sub} = identity", "ops:* = claim:admin"]',
    )
    broadcast: Annotated[Text, Matching(*REQUIREMENT)] = setting(
        "anyone", "Who may broadcast: anyone, identity, claim:<name>, plugin or nobody"
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)


class HistorySettings(Table):
    rooms: Texts = setting(
        (), 'Glob patterns of rooms that keep history, e.g. ["chat:*"]; their messages carry offset and epoch'
    )
    size: Int = setting(100, "Messages kept per room", minimum=1, maximum=1_000_000)
    ttl: Duration = setting(
        600.0,
        "How long a room's history outlives its last message (then its epoch changes)",
        minimum=1,
    )
    max_answer_bytes: Int = setting(
        1_048_576,
        "Bytes of messages one `history` answer or one recovery (`subscribe` with `since`) may hold: "
        "a `history` answer holds the newest messages that fit (page back with `before`), a recovery that "
        "does not fit answers `recovered: false`; at most websocket.send_queue_bytes, less the answer's "
        "envelope (about 2 KiB) and 10 bytes per message of history.size",
        minimum=1024,
    )
    max_rooms: Int = setting(
        100_000,
        "Rooms whose history the in-memory broker keeps at most (the least recently used go first; "
        "with Redis, history.ttl and Redis's maxmemory bound it)",
        minimum=1,
    )


class PresenceSettings(Table):
    rooms: Texts = setting(
        (), 'Glob patterns of rooms whose members can be listed with a presence request, e.g. ["chat:*"]'
    )
    claims: Texts = setting((), "Claims of authenticated members shown in presence answers and events")
    events: Flag = setting(False, "Send presence_diff messages (joins and leaves) to the members of those rooms")
    interval: Duration = setting(
        1.0, "Joins and leaves are gathered this long into one presence_diff per room", minimum=0.01
    )
    node_ttl: Duration = setting(
        15.0,
        "Redis: members of a node that stopped (crashed) disappear from presence within this time",
        minimum=1,
    )
    max_answer_bytes: Int = setting(
        1_048_576,
        "Bytes of members one `presence` answer may list (the first that fit; `count` stays the "
        "room's whole count, and `truncated` says some were left out; a `presence_diff` listing more is sent "
        "in parts); at most websocket.send_queue_bytes, less the answer's envelope (about 2 KiB)",
        minimum=1024,
    )


class PublishSettings(Table):
    idempotency_window: Duration = setting(
        300.0,
        "How long a publish's idempotency_key is remembered: a second publish with the same key, by the same "
        "publisher, to the same room within it is delivered nowhere and not refused (the first's delivery stands)",
        minimum=1,
    )


class ShutdownSettings(Table):
    mode: Annotated[Text, OneOf(("drain", "restart"))] = setting(
        "drain",
        "drain: close every client at once with 1001; restart: close with 1012 (Service Restart) "
        "in jittered batches over `window`, so clients come back gradually",
    )
    window: Duration = setting(
        5.0,
        "restart mode: the time over which clients are closed (at most a quarter of websocket.timeout)",
        minimum=0,
    )


class DashboardSettings(Table):
    enabled: Flag = setting(
        False, "Serve the operator dashboard at /dashboard (needs a password or the JWT authenticator)"
    )
    password: Password = setting("", "Password of the dashboard's login form (at least 12 characters)")
    admin_claim: Text = setting(
        "admin", "A JWT whose claim of this name is true also logs in (with the JWT authenticator on)"
    )
    session_ttl: Duration = setting(12 * 3600.0, "How long a dashboard login lasts", minimum=60)


class RuntimeSettings(Table):
    uvloop: Flag = setting(
        False,
        "Run on uvloop (the [speed] extra; without it, start-up stops naming this key); off: slower for fan-out here",
    )
    gc_threshold: Int = setting(
        10_000,
        "Allocations between two young-generation garbage collections (Python's default is 700, which made "
        "each connect cost more the more clients were connected); 0 keeps Python's",
        minimum=0,
    )


class MetricsSettings(Table):
    enabled: Flag = setting(True, "Serve Prometheus metrics over HTTP")
    path: MetricsPath = setting("/metrics", "Path of the metrics endpoint")


class CorsSettings(Table):
    allowed_origins: Origins = setting(
        (), 'Origins allowed to read the HTTP endpoints from a browser (exact, or "*"); none by default'
    )


class LoggingSettings(Table):
    level: Annotated[Text, OneOf(LOG_LEVELS)] = setting("INFO", "Log level")
    format: Annotated[Text, OneOf(LOG_FORMATS)] = setting(
        "text", "text: one readable line per record; json: one JSON object per line"
    )
    access_log: Flag = setting(True, "Log every HTTP request (python -m wsgate; gunicorn has its own flag)")


class Settings(Table):
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """What the schema says about one setting besides its type: its doc text and markers."""

    doc: str
    secret: bool
    duration: bool
    path: bool

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The same as a mapping (`metadata["doc"]`)."""
        return {"doc": self.doc, "secret": self.secret, "duration": self.duration, "path": self.path}


def iter_settings(cls: type[Table] = Settings, prefix: str = "") -> Iterator[tuple[str, SettingInfo, Any]]:
    """Yield (dotted key, SettingInfo, type) for every leaf setting, in declaration order; used by docs and tests."""
    for name, info in cls.model_fields.items():
        kind = info.annotation
        if name == "options" and cls is PluginsSettings:
            continue
        if isinstance(kind, type) and issubclass(kind, Table):
            yield from iter_settings(kind, f"{prefix}{name}.")
            continue
        markers = set(info.metadata)
        yield (
            f"{prefix}{name}",
            SettingInfo(info.description or "", SECRET in markers, DURATION in markers, PATH in markers),
            kind,
        )


def env_name(key: str) -> str:
    """The environment variable that sets `key`: the spec's name for websocket keys."""
    table, _, rest = key.partition(".")
    if table == "websocket":
        return SPEC_ENV_PREFIX + rest.replace(".", "_").upper()
    return f"WSGATE_{table.upper()}__{rest.replace('.', '__').upper()}"


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Parse a Go-style duration ("54s", "500ms", "1m30s") into seconds; None when malformed."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos else None


def show_duration(seconds: float) -> str:
    """Seconds as the file would spell them: "500ms", "54s"."""
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
