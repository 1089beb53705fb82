"""Settings: the only module that reads settings files and the environment.

dynaconf loads `settings.toml` (and `WSGATE_<TABLE>__<KEY>` variables); the
spec's own `WEBSOCKET_*` variables are laid over that; the result is checked
against the typed dataclasses below and frozen. Components receive a
`Settings` object and never look anywhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .origins import host_problem, origin_problem
from .redaction import MASK, SECRET_NAME, credentials_in, looks_like_credential, mask_value, redact
from .regex import LinearPattern

DEFAULT_SETTINGS_FILE = "settings.toml"
SETTINGS_FILE_ENV = "WSGATE_SETTINGS"
SPEC_ENV_PREFIX = "WEBSOCKET_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A setting cannot be used; the message is one line naming the key, the value and what is expected."""


def setting(
    default: Any,
    doc: str,
    *,
    duration: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: tuple[str, str] | None = None,
    secret: bool = False,
    path: bool = False,
) -> Any:
    """Declare one setting: its default, its meaning (the README table is checked against it) and its bounds."""
    meta = {
        "doc": doc,
        "duration": duration,
        "min": minimum,
        "max": maximum,
        "choices": choices,
        "pattern": pattern,
        "secret": secret,
        "path": path,
    }
    if isinstance(default, (tuple, list)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_connections: int = setting(0, "Global max connections (0 = unlimited)", minimum=0)
    max_connections_per_room: int = setting(0, "Per-room limit (0 = unlimited)", minimum=0)
    max_connections_per_ip: int = setting(
        0, "Connections one client address may hold; more get 429 before the upgrade (0 = unlimited)", minimum=0
    )
    max_rooms_per_client: int = setting(0, "Rooms one client may be in at once (0 = unlimited)", minimum=0)
    max_room_name_length: int = setting(256, "Longest accepted room name, in characters", minimum=1)
    room_name_pattern: str = setting(
        "",
        'Regular expression every room name must match in full, e.g. "[A-Za-z0-9:_.-]+" '
        "(empty: any name without control characters); run by RE2, in time linear in the name: no lookaround "
        "or backreference",
    )
    max_json_depth: int = setting(32, "Deepest accepted nesting of arrays and objects in a client message", minimum=1)
    max_number_digits: int = setting(
        100,
        "Most digits a number in a client message (or an API body) may have; more is refused "
        "(converting long numbers costs time quadratic in their length)",
        minimum=40,
        maximum=4000,
    )
    messages_per_second: float = setting(
        0.0, "Messages a client may send per second, sustained (token bucket; 0 = unlimited)", minimum=0
    )
    burst: int = setting(
        0, "Messages a client may send at once above the sustained rate (0: one second's worth)", minimum=0
    )
    bytes_per_second: int = setting(
        0,
        "Characters of text frames a client may send per second, sustained; bursts of one second (0 = unlimited)",
        minimum=0,
    )
    rate_limit_grace: float = setting(
        10.0, "A client kept over a rate limit this long is closed with 1008", duration=True, minimum=0.001
    )


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    enabled: bool = setting(
        False,
        "Serve the `/ws` endpoint (when false `/ws` answers 404 with a JSON reason; "
        "`/health`, `/ready` and `/metrics` still answer)",
    )
    host: str = setting("0.0.0.0", "Server host interface")
    port: int = setting(8081, "Server port (0 picks a free port)", minimum=0, maximum=65535)
    timeout: float = setting(
        30.0,
        "Graceful shutdown budget: clients are closed and the process exits within it",
        duration=True,
        minimum=0.001,
    )
    read_buffer_size: int = setting(
        1024, "Accepted for compatibility; aiohttp sizes its read buffers itself", minimum=1
    )
    write_buffer_size: int = setting(
        1024, "Accepted for compatibility; aiohttp sizes its write buffers itself", minimum=1
    )
    max_message_size: int = setting(
        512000, "Largest accepted client message in bytes; larger closes with 1009", minimum=1
    )
    ping_interval: float = setting(54.0, "Interval between keepalive pings", duration=True, minimum=0.001)
    pong_wait: float = setting(
        60.0,
        "A client silent (no pong, no message) this long is dropped; must exceed ping_interval",
        duration=True,
        minimum=0.001,
    )
    write_wait: float = setting(
        10.0,
        "A write to a client that cannot complete in this time drops the client",
        duration=True,
        minimum=0.001,
    )
    compression: bool = setting(False, "Negotiate permessage-deflate (costs CPU and memory per client)")
    send_queue_size: int = setting(
        256,
        "Messages buffered per client; a client that falls further behind is closed with 1008",
        minimum=1,
    )
    send_queue_bytes: int = setting(
        4_194_304,
        "Bytes that may wait for one client, whatever holds them (its outbox, replays and history "
        "answers, live messages held while its history is read, pongs, the socket's own buffer); a client "
        "that would pass it is closed with 1008 as a slow consumer",
        minimum=65_536,
    )
    limits: LimitsSettings = field(default_factory=LimitsSettings)


@dataclass(frozen=True, slots=True)
class PluginsSettings:
    disabled: tuple[str, ...] = setting((), "Plugin names not to load (built-in, entry point or module)")
    modules: tuple[str, ...] = setting((), "Dotted module paths to load as plugins without packaging them")
    strict: bool = setting(True, "A plugin that fails to load stops start-up (false: skip it with a warning)")
    startup_timeout: float = setting(
        10.0,
        "Longest a plugin's start-up or shutdown (and a service's start/close) may take",
        duration=True,
        minimum=0.001,
    )
    hook_timeout: float = setting(
        10.0,
        "Longest a hook or message handler may take for a client (authenticate, authorize, handlers, "
        "client_connected/disconnected); past it, it is cancelled and logged, and the client gets a temporary "
        "internal error",
        duration=True,
        minimum=0.001,
    )
    options: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}), metadata={"tables": True}
    )
    """Every other `[plugins.<name>]` table: that plugin's own settings, read-only."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    url: str = setting(
        "",
        'Empty: in-memory (one process). "redis://host:6379/0": rooms span every node sharing that Redis',
        pattern=(r"|(redis|rediss|unix)://\S+", "empty, or a URL starting with redis://, rediss:// or unix://"),
    )
    prefix: str = setting(
        "wsgate",
        "Prefix of the Redis channel names (separate clusters on one Redis)",
        pattern=(r"[A-Za-z0-9_.:-]+", "letters, digits and _ . : -"),
    )
    required: bool = setting(True, "Redis unreachable at start-up stops start-up (false: start degraded and retry)")
    connect_timeout: float = setting(5.0, "How long to wait for Redis when connecting", duration=True, minimum=0.001)
    probe_interval: float = setting(
        5.0,
        "How often a node checks that its Redis subscription still hears (it resubscribes when the probe is "
        "not back within connect_timeout)",
        duration=True,
        minimum=0.01,
    )
    unshared_workers: bool = setting(
        False,
        "Allow several gunicorn workers with the in-memory broker (each keeps its own rooms: a publish "
        "reaches only its worker's clients); without it they refuse to start",
    )
    publish_queue: int = setting(
        10000,
        "Messages waiting to go to Redis; beyond this they reach local clients only (counted), and messages "
        "for rooms with history are refused",
        minimum=1,
    )


@dataclass(frozen=True, slots=True)
class ApiSettings:
    key: str = setting("", "Bearer key for POST /api/publish and /api/broadcast; empty disables the API", secret=True)
    server_id: str = setting("", "client_id stamped on messages sent through the API (empty: no client_id)")
    max_body_size: int = setting(512000, "Largest accepted API request body, in bytes", minimum=1)


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    allowed_origins: tuple[str, ...] = setting(
        (),
        'Origins (exact, e.g. "https://app.example.com") allowed to open /ws from a browser; '
        'empty: same host and no Origin only; ["*"]: any',
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        'Host names this gateway serves (e.g. ["gw.example.com", "10.0.0.5:8081"]); other Host headers get 421. '
        'Empty: any Host (then a DNS-rebinding page is "same host" to the Origin check)',
    )
    request_timeout: float = setting(
        10.0,
        "A connection that has not sent a complete HTTP request within this (slow or unfinished headers), "
        "or an HTTP connection idle this long, is closed",
        duration=True,
        minimum=0.1,
    )


REQUIREMENT = (r"anyone|identity|plugin|nobody|claim:\S+", "anyone, identity, claim:<name>, plugin or nobody")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""`{claim}` in a room rule: the client's own value of that claim, exactly."""
ROOM_RULE = re.compile(rf"\s*(?P<pattern>\S+)\s*=\s*(?P<requirement>{REQUIREMENT[0]})\s*")
"""One `auth.rooms` entry: a room pattern (no spaces), `=`, a requirement."""


@dataclass(frozen=True, slots=True)
class JwtSettings:
    secret: str = setting(
        "", "Shared secret for HS256 tokens; setting it (or public_key) turns the JWT authenticator on", secret=True
    )
    public_key: str = setting(
        "",
        "PEM public key, or the path of a PEM file (relative: to the settings file's directory), for RS256/ES256 "
        "tokens (turns the JWT authenticator on)",
        path=True,
    )
    algorithms: tuple[str, ...] = setting(
        (), "Accepted signature algorithms (empty: HS256 with secret; RS256 and ES256 with public_key)"
    )
    audience: str = setting("", "Required `aud` claim (empty: not checked)")
    issuer: str = setting("", "Required `iss` claim (empty: not checked)")
    leeway: float = setting(30.0, "Clock difference allowed when checking `exp` and `nbf`", duration=True, minimum=0)
    query_param: bool = setting(
        False, "Also accept the token as `?token=` (off: query strings end up in access and proxy logs)"
    )
    rooms_claim: str = setting(
        "rooms", "Claim listing the rooms (names or glob patterns) a token may subscribe and publish to"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    required: bool = setting(False, "Refuse (401, before the upgrade) clients no authenticator identified")
    rooms: tuple[str, ...] = setting(
        (),
        'Room rules "<pattern> = <requirement>", first match wins, e.g. '
        '["private-* = identity", "user:{sub} = identity", "ops:* = claim:admin"]',
    )
    broadcast: str = setting(
        "anyone", "Who may broadcast: anyone, identity, claim:<name>, plugin or nobody", pattern=REQUIREMENT
    )
    jwt: JwtSettings = field(default_factory=JwtSettings)


@dataclass(frozen=True, slots=True)
class HistorySettings:
    rooms: tuple[str, ...] = setting(
        (), 'Glob patterns of rooms that keep history, e.g. ["chat:*"]; their messages carry offset and epoch'
    )
    size: int = setting(100, "Messages kept per room", minimum=1, maximum=1_000_000)
    ttl: float = setting(
        600.0,
        "How long a room's history outlives its last message (then its epoch changes)",
        duration=True,
        minimum=1,
    )
    max_answer_bytes: int = setting(
        1_048_576,
        "Bytes of messages one `history` answer or one recovery (`subscribe` with `since`) may hold: "
        "a `history` answer holds the newest messages that fit (page back with `before`), a recovery that "
        "does not fit answers `recovered: false`; at most websocket.send_queue_bytes",
        minimum=1024,
    )
    max_rooms: int = setting(
        100_000,
        "Rooms whose history the in-memory broker keeps at most (the least recently used go first; "
        "with Redis, history.ttl and Redis's maxmemory bound it)",
        minimum=1,
    )


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    rooms: tuple[str, ...] = setting(
        (), 'Glob patterns of rooms whose members can be listed with a presence request, e.g. ["chat:*"]'
    )
    claims: tuple[str, ...] = setting((), "Claims of authenticated members shown in presence answers and events")
    events: bool = setting(False, "Send presence_diff messages (joins and leaves) to the members of those rooms")
    interval: float = setting(
        1.0, "Joins and leaves are gathered this long into one presence_diff per room", duration=True, minimum=0.01
    )
    node_ttl: float = setting(
        15.0,
        "Redis: members of a node that stopped (crashed) disappear from presence within this time",
        duration=True,
        minimum=1,
    )
    max_answer_bytes: int = setting(
        1_048_576,
        "Bytes of members one `presence` answer may list (the first that fit; `count` stays the "
        "room's whole count, and `truncated` says some were left out); at most websocket.send_queue_bytes",
        minimum=1024,
    )


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    mode: str = setting(
        "drain",
        "drain: close every client at once with 1001; restart: close with 1012 (Service Restart) "
        "in jittered batches over `window`, so clients come back gradually",
        choices=("drain", "restart"),
    )
    window: float = setting(
        5.0,
        "restart mode: the time over which clients are closed (at most a quarter of websocket.timeout)",
        duration=True,
        minimum=0,
    )


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    enabled: bool = setting(
        False, "Serve the operator dashboard at /dashboard (needs a password or the JWT authenticator)"
    )
    password: str = setting("", "Password of the dashboard's login form (at least 12 characters)", secret=True)
    admin_claim: str = setting(
        "admin", "A JWT whose claim of this name is true also logs in (with the JWT authenticator on)"
    )
    session_ttl: float = setting(12 * 3600.0, "How long a dashboard login lasts", duration=True, minimum=60)


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    uvloop: bool = setting(False, "Run on uvloop when installed (the [speed] extra); off: measured slower for fan-out")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = setting(True, "Serve Prometheus metrics over HTTP")
    path: str = setting("/metrics", "Path of the metrics endpoint", pattern=(r"/\S*", 'a path starting with "/"'))


@dataclass(frozen=True, slots=True)
class CorsSettings:
    allowed_origins: tuple[str, ...] = setting(
        (), 'Origins allowed to read the HTTP endpoints from a browser (exact, or "*"); none by default'
    )


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = setting("INFO", "Log level", choices=LOG_LEVELS)
    format: str = setting(
        "text", "text: one readable line per record; json: one JSON object per line", choices=LOG_FORMATS
    )
    access_log: bool = setting(True, "Log every HTTP request (python -m wsgate; gunicorn has its own flag)")


@dataclass(frozen=True, slots=True)
class Settings:
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    plugins: PluginsSettings = field(default_factory=PluginsSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


# --- public entry point -----------------------------------------------------------


def load_settings(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings file, then `WSGATE_*` and `WEBSOCKET_*` variables, then `overrides`.

    `path` defaults to `$WSGATE_SETTINGS`, then `./settings.toml` (silently absent is fine
    for the default only). `overrides` is a nested mapping (used by the CLI flags and tests).
    Raises ConfigError with a one-line message for any bad value.
    """
    file = settings_file(path)
    raw = _absolute_paths(_read_dynaconf(file), file)
    _merge(raw, _spec_environment())
    if overrides:
        _merge(raw, _absolute_paths(_lower_keys(dict(overrides)), None))
    settings: Settings = _build(Settings, raw, "")
    _check_relations(settings)
    return settings


def _absolute_paths(raw: dict[str, Any], file: Path | None) -> dict[str, Any]:
    """`raw` with every path setting (`path=True`; PEM text is no path) made absolute: a relative path from a
    settings file is relative to that file's directory, one from a variable or an override to the working
    directory. Every entry point then reads the same file, and errors name it."""
    for key, f, _kind in iter_settings():
        *tables, name = key.split(".")
        table: Any = raw
        for part in tables:
            table = table.get(part) if isinstance(table, Mapping) else None
        value = table.get(name) if isinstance(table, dict) else None
        if not f.metadata["path"] or value is None:
            continue
        text = value.text if isinstance(value, _FromEnv) else value
        if not isinstance(text, str) or not text.strip() or text.lstrip().startswith("-----BEGIN"):
            continue
        from_file = file is not None and not isinstance(value, _FromEnv) and env_name(key) not in os.environ
        base = file.parent if from_file and file is not None else Path.cwd()
        absolute = os.path.join(base, os.path.expanduser(text))
        table[name] = _FromEnv(value.name, absolute) if isinstance(value, _FromEnv) else absolute
    return raw


def settings_file(path: str | Path | None = None) -> Path | None:
    """The settings file to read, as an absolute path: `path`, else `$WSGATE_SETTINGS`, else `settings.toml`
    in the working directory if it exists.

    A relative name is resolved against the working directory here, before dynaconf sees it: dynaconf looks
    for a relative name in the running script's directory and its parents first (`dynaconf.utils.files.
    find_file`), so the `wsgate` command or gunicorn in a checkout's .venv would read the checkout's file.
    """
    explicit = path if path is not None else os.environ.get(SETTINGS_FILE_ENV)
    file = Path(os.path.abspath(explicit if explicit else DEFAULT_SETTINGS_FILE))  # normalised, symlinks kept
    if explicit and not file.is_file():
        raise ConfigError(f"settings file {str(file)!r} not found")
    if file.suffix != ".toml":
        raise ConfigError(f"settings file {str(file)!r} must be TOML (named *.toml)")
    return file if file.is_file() else None


def settings_files(path: str | Path | None = None) -> list[Path]:
    """Every file the settings are read from, absolute, weakest first: the settings file and the
    `<name>.local.toml` beside it (dynaconf reads that one too, and it wins)."""
    file = settings_file(path)
    if file is None:
        return []
    return [f for f in (file, file.with_name(f"{file.stem}.local.toml")) if f.is_file()]


def describe_source(path: str | Path | None = None) -> str:
    """The start-up line's account of where settings come from: `settings: /abs/settings.toml` (and the local
    file), or that no file is read."""
    files = settings_files(path)
    if not files:
        return (
            f"settings: no file ({DEFAULT_SETTINGS_FILE} is not in {os.getcwd()} and {SETTINGS_FILE_ENV} is "
            "not set): defaults and environment"
        )
    return "settings: " + ", then ".join(str(f) for f in files)


def describe_settings(
    settings: Settings, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for every setting, secrets masked: `wsgate config`.

    Sources, strongest first: command line, environment (the variable's name), file, default.
    """
    contents = [
        (f, _lower_keys(tomllib.loads(f.read_text()))) for f in reversed(settings_files(path))
    ]  # the local file wins
    from_cli = {key for key, _ in _flatten(_lower_keys(dict(overrides or {})))}
    leaves = [
        (key, _get(settings, key), bool(f.metadata["secret"]), bool(f.metadata["duration"]))
        for key, f, _ in iter_settings()
    ]
    for name, table in settings.plugins.options.items():
        for key, value in table.items():  # a secret-looking name masks its whole value, keys included
            leaves.append((f"plugins.{name}.{key}", value, bool(SECRET_NAME.search(key)), False))  # (the value's
            # shape masks it too, whatever its name: mask_value)
    rows = []
    for key, value, secret, duration in leaves:
        parts = key.split(".")  # a table value may come whole from one variable: try the key's ancestors
        names = [env_name(key)] + [f"WSGATE_{'__'.join(parts[:n]).upper()}" for n in range(len(parts), 1, -1)]
        variable = next((name for name in names if name in os.environ), None)
        if key in from_cli:
            source = "command line"
        elif variable:
            source = f"environment {variable}"
        elif found := next((f for f, content in contents if _has(content, key)), None):
            source = f"file {found}"
        else:
            source = "default"
        masked = mask_value(value)  # by shape, whatever the name (`wsgate.redaction`)
        shown = MASK if (secret and value) or (masked == MASK and value != MASK) else _show_value(masked, duration)
        rows.append((key, shown, source))
    return rows


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold: secret settings, secret-named plugin options, and in any setting
    or plugin option, whatever its name, a credential-looking value and every URL's password
    (`wsgate.redaction.credentials_in`). Logs and errors mask them (`wsgate.redaction.Redactor`)."""
    found = [value for key, f, _ in iter_settings() if f.metadata["secret"] and (value := _get(settings, key))]

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                walk(item, secret or bool(SECRET_NAME.search(str(name))))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, secret)
        else:
            if secret and isinstance(value, (str, int)) and not isinstance(value, bool):
                found.append(str(value))
            if isinstance(value, str):
                found.extend(credentials_in(value))

    for key, _f, _kind in iter_settings():
        walk(_get(settings, key), False)
    walk(settings.plugins.options, False)
    return [str(value) for value in found]


def _get(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _has(table: Mapping[str, Any], key: str) -> bool:
    for part in key.split("."):
        if not isinstance(table, Mapping) or part not in table:
            return False
        table = table[part]
    return True


def _show_value(value: Any, duration: bool = False) -> str:
    """A value as TOML would spell it; durations in the file's own notation ("54s")."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_show_value(v)}" for k, v in value.items()) + "}"
    if duration:
        return f'"{_show_duration(value)}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return _show(value)


def iter_settings(
    cls: type[Any] = Settings, prefix: str = ""
) -> typing.Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """Yield (dotted key, field, type) for every leaf setting; used by docs and tests."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("tables"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_settings(hints[f.name], key + ".")
        else:
            yield key, f, hints[f.name]


def env_name(key: str) -> str:
    """The environment variable that sets `key`: the spec's name for websocket keys."""
    table, _, rest = key.partition(".")
    if table == "websocket":
        return SPEC_ENV_PREFIX + rest.replace(".", "_").upper()
    return f"WSGATE_{table.upper()}__{rest.replace('.', '__').upper()}"


# --- loading ----------------------------------------------------------------------


DYNACONF_FILE_VARIABLES = (
    "SETTINGS_FILE_FOR_DYNACONF",
    "SETTINGS_FILES_FOR_DYNACONF",
    "INCLUDES_FOR_DYNACONF",
    "PRELOAD_FOR_DYNACONF",
    "ROOT_PATH_FOR_DYNACONF",
    "ENVVAR_FOR_DYNACONF",
    "LOAD_DOTENV_FOR_DYNACONF",
)
"""dynaconf's own variables that make it read other files than the one wsgate hands it (they win over its
arguments, and `.env` is looked for from the script's directory up): refused, so one file is read."""


def _read_dynaconf(file: Path | None) -> dict[str, Any]:
    """The settings file (absolute: `settings_file`) and the WSGATE_* variables, through dynaconf."""
    from dynaconf import Dynaconf  # type: ignore[import-untyped]  # only loading needs it

    for name in DYNACONF_FILE_VARIABLES:
        if name in os.environ:
            raise ConfigError(
                f"environment variable {name} would make dynaconf read other settings files than "
                f"{str(file) if file else 'none'}: name the file with {SETTINGS_FILE_ENV} or --settings"
            )
    try:
        loaded = Dynaconf(
            settings_files=[str(file)] if file else [],
            root_path=str(file.parent) if file else os.getcwd(),  # what dynaconf resolves relative names against
            envvar_prefix="WSGATE",
            environments=False,
        ).as_dict()
    except Exception as exc:  # dynaconf raises many types for an unreadable file
        where = str(file) if file else "environment"
        raise ConfigError(f"cannot read settings from {where}: {exc}") from None
    raw: dict[str, Any] = _lower_keys(loaded)
    # Settings come from WSGATE_<TABLE>__<KEY>; other WSGATE_* names (WSGATE_SETTINGS, a
    # test suite's WSGATE_TEST_REDIS_URL, ...) are not settings and must not stop start-up.
    tables = {f.name for f in dataclasses.fields(Settings)}
    for name in os.environ:
        if name.startswith("WSGATE_") and "__" not in name:
            table = name[len("WSGATE_") :].lower()
            if table in tables:  # dynaconf put it in place of the file's whole table: nothing would say so
                raise ConfigError(
                    f"environment variable {name} would replace the whole [{table}] table: set "
                    f"{name}__<KEY> for each key instead"
                )
            raw.pop(table, None)
    for key, _, _kind in iter_settings():  # every variable keeps its text: 12345 is a key, 0 is false, and
        variable = _variable(key)  # errors name the variable
        if variable in os.environ:
            _merge(raw, _nest(key, _FromEnv(variable, os.environ[variable])))
    return raw


def _variable(key: str) -> str:
    return "WSGATE_" + key.replace(".", "__").upper()


def inert_settings(settings: Settings) -> list[str]:
    """Warnings about settings that do nothing as the others stand (a feature of /ws while /ws is off)."""
    if settings.websocket.enabled:
        return []
    warnings = [
        "websocket.enabled is false (the spec's default): /ws answers 404 with the reason; set "
        "websocket.enabled = true (WEBSOCKET_ENABLED=true) to serve WebSocket clients"
    ]
    inert = [
        name
        for name, value in (
            ("history.rooms", settings.history.rooms),
            ("presence.rooms", settings.presence.rooms),
            ("presence.events", settings.presence.events),
            ("auth.rooms", settings.auth.rooms),
            ("auth.required", settings.auth.required),
            ("auth.jwt", settings.auth.jwt.enabled),
            ("dashboard.enabled", settings.dashboard.enabled),
        )
        if value
    ]
    if inert:
        one = len(inert) == 1
        warnings.append(
            f"{', '.join(inert)} {'is' if one else 'are'} set, but {'takes' if one else 'take'} effect "
            "only on /ws, which is off"
        )
    return warnings


NOT_SETTINGS = ("WSGATE_TEST_", "WSGATE_BENCH_")
"""Beginnings of WSGATE_* names that are not settings: the test suite's and the benchmarks' own."""


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per WEBSOCKET_* or WSGATE_* variable that is no setting (a typo is otherwise silently
    ignored), with the closest real name."""
    environ = os.environ if environ is None else environ
    known = {SETTINGS_FILE_ENV}
    for key, _, _kind in iter_settings():
        parts = key.split(".")
        known.update("WSGATE_" + "__".join(parts[:n]).upper() for n in range(1, len(parts) + 1))
        if key.startswith("websocket."):
            known.add(env_name(key))
    warnings = []
    for name in sorted(environ):
        if not name.startswith(("WEBSOCKET_", "WSGATE_")) or name in known or name.startswith(NOT_SETTINGS):
            continue
        if name.startswith("WSGATE_PLUGINS__") and name.count("__") >= 2:
            continue  # a plugin's own table: [plugins.<name>]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"environment variable {name} is not a setting and is ignored{hint}")
    return warnings


def _spec_environment() -> dict[str, Any]:
    """The spec's WEBSOCKET_* variables as a nested mapping (values stay strings; _build converts)."""
    found: dict[str, Any] = {}
    for key, _field, _type in iter_settings(WebSocketSettings, "websocket."):
        value = os.environ.get(env_name(key))
        if value is not None:
            _merge(found, _nest(key, _FromEnv(env_name(key), value)))
    return found


@dataclass(frozen=True, slots=True)
class _FromEnv:
    """A raw string from a spec variable; remembers the variable for error messages."""

    name: str
    text: str


def _nest(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _lower_keys(value: Any, depth: int = 3) -> Any:
    """Lower-case setting names (dynaconf upper-cases names from the environment).

    Only the first `depth` levels are names (table, [sub-table or plugin,] key): values
    below them, such as a plugin's `tokens = { "S3cret" = "alice" }`, keep their case.
    """
    if isinstance(value, Mapping) and depth > 0:
        return {str(k).lower(): _lower_keys(v, depth - 1) for k, v in value.items()}
    return value


# --- validation -------------------------------------------------------------------


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    table = prefix.rstrip(".") or "settings"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid setting {table} = {_show(raw)}: expected a table")
    hints = typing.get_type_hints(cls)
    tables = next((f.name for f in dataclasses.fields(cls) if f.metadata.get("tables")), None)
    names = {f.name for f in dataclasses.fields(cls)} - {tables}
    values: dict[str, Any] = {}
    for unknown in sorted(set(raw) - names):
        if tables is None or not isinstance(raw[unknown], Mapping):
            expected = ", ".join(sorted(names)) + (f", or a [{prefix}<name>] table" if tables else "")
            raise ConfigError(f"unknown setting {_labelled(prefix + unknown, tables=True)}: expected one of {expected}")
        values.setdefault(tables, {})[unknown] = _freeze(raw[unknown])
    if tables in values:
        values[tables] = MappingProxyType(values[tables])
    for f in dataclasses.fields(cls):
        if f.name not in raw or f.name == tables:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, raw[f.name], f"{prefix}{f.name}.")
        else:
            values[f.name] = _convert(f"{prefix}{f.name}", f, kind, raw[f.name])
    return cls(**values)


def _convert(key: str, f: dataclasses.Field[Any], kind: Any, value: Any) -> Any:
    label = f"{key} ({value.name})" if isinstance(value, _FromEnv) else key
    raw_value = value.text if isinstance(value, _FromEnv) else value
    secret = f.metadata["secret"] or (isinstance(raw_value, str) and looks_like_credential(raw_value))
    shown = MASK if secret else redact(_show(raw_value))
    meta = f.metadata

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"invalid setting {label} = {shown}: expected {expected}")

    text = value.text if isinstance(value, _FromEnv) else None
    if text is not None and len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:  # a quoted TOML string, as dynaconf reads variables: "300ms"
            text = str(tomllib.loads(f"value = {text}")["value"])
        except tomllib.TOMLDecodeError:
            pass
    result: Any
    if meta["duration"]:
        raw = text if text is not None else value
        if not isinstance(raw, str):
            fail('a duration string such as "54s", "500ms" or "1m"')
        seconds = parse_duration(raw)
        if seconds is None or not math.isfinite(seconds):
            fail('a duration such as "54s", "500ms" or "1m" (units: ns, us, ms, s, m, h)')
        result = seconds
    elif kind is bool:
        if text is not None:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                fail("true or false (or 1/0, yes/no)")
            result = lowered in ("true", "1", "yes")
        elif isinstance(value, bool):
            result = value
        else:
            fail("true or false")
    elif kind is int:
        if text is not None:
            if not re.fullmatch(r"\s*-?\d+\s*", text):
                fail("an integer")
            result = int(text)
        elif isinstance(value, int) and not isinstance(value, bool):
            result = value
        else:
            fail("an integer")
    elif kind is float:
        if text is not None:
            try:
                result = float(text)
            except ValueError:
                fail("a number")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        else:
            fail("a number")
        if not math.isfinite(result):
            fail("a finite number")
    elif kind is str:
        raw = text if text is not None else value
        if not isinstance(raw, str):
            fail("a string")
        if not _utf8(raw):
            fail("text that UTF-8 can encode (no lone surrogates)")
        result = raw
        if meta["choices"]:
            result = next((c for c in meta["choices"] if c.lower() == raw.lower()), None)
            if result is None:
                fail("one of " + ", ".join(meta["choices"]))
        if meta["pattern"] and not re.fullmatch(meta["pattern"][0], raw):
            fail(meta["pattern"][1])
    elif typing.get_origin(kind) is tuple:
        if text is not None:  # from a variable: a TOML or JSON list, e.g. ["a", "b"]
            try:
                value = tomllib.loads(f"value = {text}")["value"]
            except tomllib.TOMLDecodeError:
                fail('a list of strings, e.g. ["a", "b"]')
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            fail('a list of strings, e.g. ["a", "b"]')
        if not all(_utf8(s) for s in value):
            fail("text that UTF-8 can encode (no lone surrogates)")
        result = tuple(value)
    else:  # pragma: no cover - a new setting type without a converter is a programming error
        raise TypeError(f"no converter for {key}: {kind!r}")

    if isinstance(result, (int, float)) and not isinstance(result, bool):
        low, high = meta["min"], meta["max"]
        if (low is not None and result < low) or (high is not None and result > high):
            if high is None:
                fail(f"a value of at least {_show_bound(low, meta['duration'])}")
            fail(f"a value from {_show_bound(low, meta['duration'])} to {_show_bound(high, meta['duration'])}")
    return result


def _utf8(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (an environment variable with invalid bytes cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _freeze(value: Any) -> Any:
    """Read-only copies of nested tables and lists (plugin settings stay immutable too)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


RESERVED_PATHS = ("/ws", "/health", "/ready", "/client.js", "/dashboard", "/api/publish", "/api/broadcast")


def _check_relations(settings: Settings) -> None:
    if settings.metrics.path in RESERVED_PATHS:
        raise ConfigError(
            f"invalid setting {_labelled('metrics.path')} = {settings.metrics.path!r}: expected a path other than "
            + ", ".join(RESERVED_PATHS)
        )
    pattern = settings.websocket.limits.room_name_pattern
    try:
        LinearPattern(pattern)
    except ValueError as exc:
        raise ConfigError(
            f"invalid setting {_labelled('websocket.limits.room_name_pattern')} = {pattern!r}: "
            f"expected a regular expression ({exc})"
        ) from None
    for rule in settings.auth.rooms:
        match = ROOM_RULE.fullmatch(rule)
        if not match:
            raise ConfigError(
                f'invalid setting {_labelled("auth.rooms")} entry {rule!r}: expected "<room pattern> = <requirement>" '
                f"with a requirement of {REQUIREMENT[1]}"
            )
        placeholders = PLACEHOLDER.findall(match["pattern"])
        if len(placeholders) > 1 or (placeholders and re.search(r"[*?]", PLACEHOLDER.sub("", match["pattern"]))):
            raise ConfigError(
                f"invalid setting {_labelled('auth.rooms')} entry {rule!r}: ambiguous: a placeholder beside a wildcard "
                "or another placeholder lets one user's room name match another's (with {sub} and *, user 'bob' "
                "would match 'bob.smith''s rooms); use one placeholder and no wildcard, e.g. \"dm.{sub} = identity\""
            )
    for key, origins in (
        ("security.allowed_origins", settings.security.allowed_origins),
        ("cors.allowed_origins", settings.cors.allowed_origins),
    ):
        for origin in origins:
            if origin != "*" and (problem := origin_problem(origin)):
                raise ConfigError(f"invalid setting {_labelled(key)} entry {origin!r}: {problem}")
    for host in settings.security.allowed_hosts:
        if problem := host_problem(host):
            raise ConfigError(f"invalid setting {_labelled('security.allowed_hosts')} entry {host!r}: {problem}")
    dashboard = settings.dashboard
    if dashboard.enabled and not dashboard.password and not settings.auth.jwt.enabled:
        raise ConfigError(
            f"invalid setting {_labelled('dashboard.enabled')} = true: expected dashboard.password (or the JWT "
            "authenticator, [auth.jwt]) so that only operators can log in"
        )
    if dashboard.password and len(dashboard.password) < 12:
        raise ConfigError(f"invalid setting {_labelled('dashboard.password')}: expected at least 12 characters")
    jwt = settings.auth.jwt
    if jwt.secret and jwt.public_key:
        raise ConfigError(
            f"invalid setting {_labelled('auth.jwt.secret')} and {_labelled('auth.jwt.public_key')}: "
            "expected one of them, not both"
        )
    ws = settings.websocket
    if settings.shutdown.mode == "restart" and settings.shutdown.window > ws.timeout / 4:
        raise ConfigError(
            f"invalid setting {_labelled('shutdown.window')} = {_show_duration(settings.shutdown.window)}: expected "
            f"at most a quarter of {_labelled('websocket.timeout')}, {_show_duration(ws.timeout / 4)} (the drain "
            f'gets half of it, and closing takes time too), with {_labelled("shutdown.mode")} = "restart"'
        )
    for key, answer_bytes in (
        ("history.max_answer_bytes", settings.history.max_answer_bytes),
        ("presence.max_answer_bytes", settings.presence.max_answer_bytes),
    ):
        if answer_bytes > ws.send_queue_bytes:
            raise ConfigError(
                f"invalid setting {_labelled(key)} = {answer_bytes}: expected at most "
                f"{_labelled('websocket.send_queue_bytes')} = {ws.send_queue_bytes} (an answer must fit in what "
                "may wait for one client)"
            )
    if ws.pong_wait <= ws.ping_interval:
        raise ConfigError(
            f"invalid setting {_labelled('websocket.pong_wait')} = {_show_duration(ws.pong_wait)}: expected a "
            f"duration greater than {_labelled('websocket.ping_interval')} = {_show_duration(ws.ping_interval)}"
        )


def _labelled(key: str, *, tables: bool = False) -> str:
    """`key`, followed by the variable that set it when one did: errors name what the user wrote.

    `tables`: `key` may be a table, set by variables of its keys (WSGATE_METRIC__ENABLED sets `metric`).
    """
    for name in (env_name(key), _variable(key)):  # the spec's WEBSOCKET_* names are laid over WSGATE_*
        if name in os.environ:
            return f"{key} ({name})"
    if tables:
        names = sorted(name for name in os.environ if name.startswith(_variable(key) + "__"))
        if names:
            return f"{key} ({', '.join(names)})"
    return key


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _show_bound(bound: float | None, duration: bool) -> str:
    if bound is None:
        return "any"
    return _show_duration(bound) if duration else str(bound)


def _show_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


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
