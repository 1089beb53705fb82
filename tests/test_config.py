"""Settings: defaults match the spec, file and environment layering, and one-line errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from wsgate.config import (
    ConfigError,
    Settings,
    env_name,
    iter_settings,
    load_settings,
    parse_duration,
)

from .processes import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_spec_defaults() -> None:
    ws = load_settings().websocket  # no file in the (temporary) working directory
    assert (ws.enabled, ws.host, ws.port) == (False, "0.0.0.0", 8081)
    assert (ws.timeout, ws.ping_interval, ws.pong_wait, ws.write_wait) == (30, 54, 60, 10)
    assert (ws.read_buffer_size, ws.write_buffer_size, ws.max_message_size) == (1024, 1024, 512000)
    assert (ws.limits.max_connections, ws.limits.max_connections_per_room) == (0, 0)
    assert ws.compression is False
    assert ws.send_queue_size == 256


def test_shipped_settings_file_loads_and_enables_the_gateway() -> None:
    settings = load_settings(ROOT / "settings.toml")
    assert settings.websocket.enabled is True
    assert settings.websocket.port == 8081
    assert settings == Settings(websocket=type(settings.websocket)(enabled=True))


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[websocket]\nport = 9000\nping_interval = "500ms"\npong_wait = "1m"\n'
        '[websocket.limits]\nmax_connections = 5\n[logging]\nlevel = "debug"\n',
    )
    settings = load_settings(path)
    assert settings.websocket.port == 9000
    assert settings.websocket.ping_interval == 0.5
    assert settings.websocket.pong_wait == 60
    assert settings.websocket.limits.max_connections == 5
    assert settings.logging.level == "DEBUG"


def test_spec_environment_variables_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[websocket]\nport = 9000\n[websocket.limits]\nmax_connections = 5\n")
    monkeypatch.setenv("WEBSOCKET_PORT", "9100")
    monkeypatch.setenv("WEBSOCKET_ENABLED", "true")
    monkeypatch.setenv("WEBSOCKET_PING_INTERVAL", "30s")
    monkeypatch.setenv("WEBSOCKET_PONG_WAIT", "35s")
    monkeypatch.setenv("WEBSOCKET_LIMITS_MAX_CONNECTIONS", "50000")
    monkeypatch.setenv("WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_ROOM", "5000")
    ws = load_settings(path).websocket
    assert (ws.port, ws.enabled, ws.ping_interval, ws.pong_wait) == (9100, True, 30, 35)
    assert (ws.limits.max_connections, ws.limits.max_connections_per_room) == (50000, 5000)


def test_wsgate_variables_set_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_LOGGING__LEVEL", "warning")
    monkeypatch.setenv("WSGATE_PLUGINS__DISABLED", '["messages"]')
    monkeypatch.setenv("WSGATE_WEBSOCKET__LIMITS__MAX_CONNECTIONS", "7")
    settings = load_settings()
    assert settings.logging.level == "WARNING"
    assert settings.plugins.disabled == ("messages",)
    assert settings.websocket.limits.max_connections == 7


def test_settings_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[websocket]\nport = 9200\n")
    monkeypatch.setenv("WSGATE_SETTINGS", str(path))
    assert load_settings().websocket.port == 9200


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(AttributeError):
        settings.websocket.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('[websocket]\nport = "abc"\n', {}, "invalid setting websocket.port = 'abc': expected an integer"),
        ("", {"WEBSOCKET_PORT": "abc"}, "invalid setting websocket.port (WEBSOCKET_PORT) = 'abc': expected an integer"),
        ("[websocket]\nport = 70000\n", {}, "invalid setting websocket.port = 70000: expected a value from 0 to 65535"),
        (
            "[websocket.limits]\nmax_connections = -1\n",
            {},
            "invalid setting websocket.limits.max_connections = -1: expected a value of at least 0",
        ),
        (
            "",
            {"WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_ROOM": "-5"},
            "invalid setting websocket.limits.max_connections_per_room (WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_ROOM) = '-5': expected a value of at least 0",
        ),
        ('[websocket]\nping_interval = "1' + "0" * 400 + 's"\n', {}, "invalid setting websocket.ping_interval = '1000"),
        (
            '[websocket]\nping_interval = "54x"\n',
            {},
            'invalid setting websocket.ping_interval = \'54x\': expected a duration such as "54s", "500ms" or "1m" (units: ns, us, ms, s, m, h)',
        ),
        (
            "[websocket]\nping_interval = 54\n",
            {},
            'invalid setting websocket.ping_interval = 54: expected a duration string such as "54s", "500ms" or "1m"',
        ),
        (
            '[websocket]\nping_interval = "60s"\npong_wait = "60s"\n',
            {},
            "invalid setting websocket.pong_wait = 60s: expected a duration greater than websocket.ping_interval = 60s",
        ),
        (
            "",
            {"WEBSOCKET_PONG_WAIT": "10s"},
            "invalid setting websocket.pong_wait (WEBSOCKET_PONG_WAIT) = 10s: expected a duration greater than websocket.ping_interval = 54s",
        ),
        # errors of settings checked together, or entry by entry, name the variables too (the first hour, 4)
        (
            "",
            {"WEBSOCKET_PING_INTERVAL": "2m"},
            "invalid setting websocket.pong_wait = 60s: expected a duration greater than websocket.ping_interval (WEBSOCKET_PING_INTERVAL) = 120s",
        ),
        (
            "[websocket]\nsend_queue_bytes = 65536\n",
            {},
            "invalid setting history.max_answer_bytes = 1048576: expected at most 62476, websocket.send_queue_bytes = 65536 less 3060 for its envelope and a frame head for each of history.size = 100 messages (an answer must fit in what may wait for one client)",
        ),
        (  # equal was allowed: the replay's frame heads, or the answer's envelope, then closed the client
            "[websocket]\nsend_queue_bytes = 65536\n[history]\nmax_answer_bytes = 65536\nsize = 300\n",
            {},
            "invalid setting history.max_answer_bytes = 65536: expected at most 60476, websocket.send_queue_bytes = 65536 less 5060 for its envelope and a frame head for each of history.size = 300 messages (an answer must fit in what may wait for one client)",
        ),
        (
            "[history]\nmax_answer_bytes = 1024\n[presence]\nmax_answer_bytes = 1024\n",
            {"WEBSOCKET_SEND_QUEUE_BYTES": "65536"},
            "invalid setting websocket.max_message_size = 512000: expected at most websocket.send_queue_bytes (WEBSOCKET_SEND_QUEUE_BYTES) = 65536 (a message as large as a client may send must fit in what may wait for each member it goes to)",
        ),
        (
            "[history]\nmax_answer_bytes = 1024\n",
            {"WEBSOCKET_SEND_QUEUE_BYTES": "65536"},
            "invalid setting presence.max_answer_bytes = 1048576: expected at most 63476, websocket.send_queue_bytes (WEBSOCKET_SEND_QUEUE_BYTES) = 65536 less 2060 for its envelope (an answer must fit in what may wait for one client)",
        ),
        (
            "",
            {"WSGATE_METRICS__PATH": "/health"},
            "invalid setting metrics.path (WSGATE_METRICS__PATH) = '/health': expected a path other than",
        ),
        (
            "",
            {"WEBSOCKET_LIMITS_ROOM_NAME_PATTERN": "["},
            "invalid setting websocket.limits.room_name_pattern (WEBSOCKET_LIMITS_ROOM_NAME_PATTERN) = '[': expected a regular expression",
        ),
        (
            "",
            {"WSGATE_AUTH__ROOMS": '["bad"]'},
            "invalid setting auth.rooms (WSGATE_AUTH__ROOMS) entry 'bad': expected",
        ),
        (
            "",
            {"WSGATE_SECURITY__ALLOWED_HOSTS": '["a/b"]'},
            "invalid setting security.allowed_hosts (WSGATE_SECURITY__ALLOWED_HOSTS) entry 'a/b': expected a host name",
        ),
        (
            "",
            {"WSGATE_SECURITY__ALLOWED_HOSTS": '["bücher.example"]'},
            "invalid setting security.allowed_hosts (WSGATE_SECURITY__ALLOWED_HOSTS) entry 'bücher.example': expected the host in ASCII, as browsers send it: an international name in punycode (xn--...)",
        ),
        (
            "",
            {"WSGATE_SECURITY__ALLOWED_HOSTS": '["*"]'},
            "invalid setting security.allowed_hosts (WSGATE_SECURITY__ALLOWED_HOSTS) entry '*': expected a host name: to allow any host, leave security.allowed_hosts empty",
        ),
        (
            "",
            {"WSGATE_SECURITY__ALLOWED_ORIGINS": '["http://x/"]'},
            "invalid setting security.allowed_origins (WSGATE_SECURITY__ALLOWED_ORIGINS) entry 'http://x/': expected an origin as browsers send it",
        ),
        (
            "",
            {"WSGATE_DASHBOARD__ENABLED": "true", "WSGATE_DASHBOARD__PASSWORD": "short"},
            "invalid setting dashboard.password (WSGATE_DASHBOARD__PASSWORD): expected at least 12 characters",
        ),
        (
            "",
            {"WSGATE_SHUTDOWN__MODE": "restart", "WSGATE_SHUTDOWN__WINDOW": "20s"},
            'invalid setting shutdown.window (WSGATE_SHUTDOWN__WINDOW) = 20s: expected at most a quarter of websocket.timeout, 7.5s (the drain gets half of it, and closing takes time too), with shutdown.mode (WSGATE_SHUTDOWN__MODE) = "restart"',
        ),
        (
            "",
            {"WSGATE_AUTH__JWT__SECRET": "s" * 40, "WSGATE_AUTH__JWT__PUBLIC_KEY": "k"},
            "invalid setting auth.jwt.secret (WSGATE_AUTH__JWT__SECRET) and auth.jwt.public_key (WSGATE_AUTH__JWT__PUBLIC_KEY): expected one of them, not both",
        ),
        (
            "",
            {"WSGATE_METRIC__ENABLED": "0"},
            "unknown setting metric (WSGATE_METRIC__ENABLED): expected one of api, auth,",
        ),
        (
            "[websocket]\nportt = 1\n",
            {},
            "unknown setting websocket.portt: expected one of compression, enabled, host, limits,",
        ),
        (
            "[websocket.limits]\nmax_conections = 1\n",
            {},
            "unknown setting websocket.limits.max_conections: expected one of burst, bytes_per_second, max_connections, max_connections_per_ip,",
        ),
        (
            "[websockets]\nport = 1\n",
            {},
            "unknown setting websockets: expected one of api, auth, broker, cors, dashboard, history, logging, metrics, plugins, presence, publish, runtime, security, shutdown, websocket",
        ),
        ('[websocket]\nenabled = "yes"\n', {}, "invalid setting websocket.enabled = 'yes': expected true or false"),
        (
            "",
            {"WEBSOCKET_ENABLED": "maybe"},
            "invalid setting websocket.enabled (WEBSOCKET_ENABLED) = 'maybe': expected true or false (or 1/0, yes/no)",
        ),
        (
            '[logging]\nlevel = "loud"\n',
            {},
            "invalid setting logging.level = 'loud': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        ('[plugins]\ndisabled = "x"\n', {}, "invalid setting plugins.disabled = 'x': expected a list of strings"),
        ("[websocket]\nlimits = 3\n", {}, "invalid setting websocket.limits = 3: expected a table"),
        ('[metrics]\npath = "/health"\n', {}, "invalid setting metrics.path = '/health': expected a path other than"),
        (
            '[metrics]\npath = "metrics"\n',
            {},
            "invalid setting metrics.path = 'metrics': expected a path starting with \"/\"",
        ),
        (
            '[broker]\nurl = "http://redis"\n',
            {},
            "invalid setting broker.url = 'http://redis': expected empty, or a URL",
        ),
        ("[api]\nmax_body_size = 0\n", {}, "invalid setting api.max_body_size = 0: expected a value of at least 1"),
        ("[websocket\nport=", {}, "cannot read settings from"),
        (
            '[websocket.limits]\nmessages_per_second = "fast"\n',
            {},
            "invalid setting websocket.limits.messages_per_second = 'fast': expected a number",
        ),
        (
            "",
            {"WEBSOCKET_LIMITS_MESSAGES_PER_SECOND": "ten"},
            "invalid setting websocket.limits.messages_per_second (WEBSOCKET_LIMITS_MESSAGES_PER_SECOND) = 'ten': expected a number",
        ),
        (
            "",
            {"WEBSOCKET_LIMITS_MESSAGES_PER_SECOND": "nan"},
            "invalid setting websocket.limits.messages_per_second (WEBSOCKET_LIMITS_MESSAGES_PER_SECOND) = 'nan': expected a finite number",
        ),
        (
            "[websocket.limits]\nmessages_per_second = -1.5\n",
            {},
            "invalid setting websocket.limits.messages_per_second = -1.5: expected a value of at least 0",
        ),
        (
            '[websocket.limits]\nroom_name_pattern = "[a-z"\n',
            {},
            "invalid setting websocket.limits.room_name_pattern = '[a-z': expected a regular expression (unterminated character set",
        ),
        (
            "[websocket.limits]\nmax_json_depth = 0\n",
            {},
            "invalid setting websocket.limits.max_json_depth = 0: expected a value of at least 1",
        ),
        (
            '[websocket.limits]\nrate_limit_grace = "soon"\n',
            {},
            "invalid setting websocket.limits.rate_limit_grace = 'soon': expected a duration",
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file '.*nowhere.toml' not found"):
        load_settings(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("54s", 54), ("500ms", 0.5), ("1m", 60), ("1m30s", 90), ("1.5h", 5400), ("250us", 0.00025), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "54", "s", "5 s", "1d", "-1s", "1m-3s", "abc"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_the_generated_configuration_reference_lists_every_setting() -> None:
    """docs/configuration.md renders the table from the schema (docs/_ext/wsgate_refs.py): one row per setting,
    with its variable, type, default and doc text."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    import wsgate_refs

    rows = {key: (variable, kind, default, doc) for key, variable, kind, default, doc in wsgate_refs.settings_rows()}
    assert list(rows) == [key for key, _field, _type in iter_settings()]
    for key, field, _type in iter_settings():
        variable, kind, default, doc = rows[key]
        assert (variable, doc) == (env_name(key), field.metadata["doc"])
    assert rows["websocket.port"][1:3] == ("int", "8081")
    assert rows["websocket.ping_interval"][1:3] == ("duration", '"54s"')
    assert rows["plugins.disabled"][1:3] == ("list of strings", "[]")
    assert rows["broker.prefix"][1:3] == ("string", '"wsgate"')
    assert rows["websocket.limits.messages_per_second"][1:3] == ("number", "0")
    assert rows["plugins.strict"][1:3] == ("bool", "true")
    assert "```{wsgate-settings}" in (ROOT / "docs" / "configuration.md").read_text()


def test_plugin_tables_keep_the_case_of_their_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[plugins.Token_Auth]\ntokens = { "S3cret-Token" = "Alice" }\n')
    monkeypatch.setenv("WSGATE_PLUGINS__USERS__DATABASE", "Users.sqlite3")
    options = load_settings(path).plugins.options
    assert dict(options["token_auth"]["tokens"]) == {"S3cret-Token": "Alice"}
    assert options["users"]["database"] == "Users.sqlite3"


def test_settings_files_must_be_toml(tmp_path: Path) -> None:
    other = tmp_path / "settings.yaml"
    other.write_text("websocket:\n  port: 1\n")
    with pytest.raises(ConfigError, match=r"settings file '.*settings.yaml' must be TOML"):
        load_settings(other)


def test_a_relative_settings_file_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dynaconf looked for a relative name in the running script's directory and its parents first."""
    from wsgate.config import settings_file

    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "[websocket]\nport = 9201\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSGATE_SETTINGS", "conf/../conf/settings.toml")
    assert settings_file() == tmp_path / "conf" / "settings.toml"  # absolute and normalised
    assert load_settings().websocket.port == 9201
    monkeypatch.delenv("WSGATE_SETTINGS")
    assert settings_file() is None  # no ./settings.toml here: the checkout's is never read
    assert load_settings().websocket.port == 8081


@pytest.mark.parametrize(
    "name",
    [
        "SETTINGS_FILE_FOR_DYNACONF",
        "INCLUDES_FOR_DYNACONF",
        "PRELOAD_FOR_DYNACONF",
        "SETTINGS_FILES_FOR_DYNACONF",
        "ROOT_PATH_FOR_DYNACONF",
    ],
)
def test_dynaconf_variables_that_read_other_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[websocket]\nport = 9202\n")
    path = write(tmp_path, "[websocket]\nport = 9203\n")
    monkeypatch.setenv(name, str(other) if name != "ROOT_PATH_FOR_DYNACONF" else str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=f"^environment variable {name} would make dynaconf read other settings "
        f"files than {re.escape(str(path))}: name the file with WSGATE_SETTINGS",
    ):
        load_settings(path)


def test_a_relative_key_path_is_relative_to_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`public_key = "jwt.pem"` in /etc/wsgate/settings.toml means /etc/wsgate/jwt.pem, wherever wsgate runs."""
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[auth.jwt]\npublic_key = "keys/jwt.pem"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(path).auth.jwt.public_key == str(tmp_path / "etc" / "keys" / "jwt.pem")
    monkeypatch.setenv("WSGATE_AUTH__JWT__PUBLIC_KEY", "jwt.pem")  # from a variable: the working directory
    assert load_settings(path).auth.jwt.public_key == str(tmp_path / "jwt.pem")
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    monkeypatch.setenv("WSGATE_AUTH__JWT__PUBLIC_KEY", pem)  # PEM text is no path
    assert load_settings(path).auth.jwt.public_key == pem


def test_values_are_parsed_once_into_what_their_users_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """Room rules and the room name pattern are parsed when settings load, never again downstream; a
    variable's text stays text where text is wanted (dynaconf alone reads `12345` as an int)."""
    from wsgate.regex import LinearPattern
    from wsgate.rooms import RoomRule

    monkeypatch.setenv("WSGATE_API__SERVER_ID", "12345")
    monkeypatch.setenv("WEBSOCKET_LIMITS_ROOM_NAME_PATTERN", "[a-z:]+")
    settings = load_settings(overrides={"auth": {"rooms": ["dm.{sub} = identity", "ops:* = claim:admin"]}})
    assert settings.api.server_id == "12345"
    rules = settings.auth.rooms
    assert all(isinstance(rule, RoomRule) for rule in rules) and [str(rule) for rule in rules] == [
        "dm.{sub} = identity",
        "ops:* = claim:admin",
    ]
    assert (rules[0].placeholder, rules[1].requirement) == ("sub", "claim:admin")
    pattern = settings.websocket.limits.room_name_pattern
    assert isinstance(pattern, LinearPattern) and pattern.fullmatch("chat:a") and not pattern.fullmatch("Chat")


@pytest.mark.parametrize(
    ("variable", "text", "key", "value"),
    [
        ("WEBSOCKET_PORT", '"8082"', "port", 8082),  # `docker run --env-file` keeps the quotes
        ("WEBSOCKET_ENABLED", '"true"', "enabled", True),
        ("WEBSOCKET_ENABLED", "' Yes '", "enabled", True),
        ("WEBSOCKET_ENABLED", " no ", "enabled", False),
        ("WEBSOCKET_PORT", " 8083 ", "port", 8083),
        ("WEBSOCKET_PING_INTERVAL", '"30s"', "ping_interval", 30.0),
        ("WSGATE_WEBSOCKET__LIMITS__MESSAGES_PER_SECOND", "'2.5'", "limits.messages_per_second", 2.5),
        ("WSGATE_PLUGINS__DISABLED", "'[\"echo\"]'", "plugins.disabled", ("echo",)),
        ("WSGATE_API__SERVER_ID", "12345", "api.server_id", "12345"),  # text stays text
        ("WSGATE_API__SERVER_ID", '"12345"', "api.server_id", "12345"),
    ],
)
def test_variables_are_read_with_one_grammar_quoted_or_not(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, key: str, value: object
) -> None:
    monkeypatch.setenv(variable, text)
    settings: object = load_settings()
    parts = key.split(".")
    if parts[0] not in ("plugins", "api"):
        parts.insert(0, "websocket")
    for part in parts:
        settings = getattr(settings, part)
    assert settings == value


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        ("WEBSOCKET_PORT", "+8081", "an integer"),
        ("WEBSOCKET_PORT", "8_081", "an integer"),
        ("WEBSOCKET_PORT", "8081.0", "an integer"),
        ("WEBSOCKET_ENABLED", "on", "true or false (or 1/0, yes/no)"),
        ("WEBSOCKET_ENABLED", "t", "true or false (or 1/0, yes/no)"),
        ("WSGATE_PLUGINS__DISABLED", "echo", 'a list of strings, e.g. ["a", "b"]'),
    ],
)
def test_variables_outside_the_grammar_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, expected: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigError, match=f"\\({variable}\\) = .*: expected {re.escape(expected)}$"):
        load_settings()


@pytest.mark.parametrize("name", ["LOADERS_FOR_DYNACONF", "CORE_LOADERS_FOR_DYNACONF", "MERGE_ENABLED_FOR_DYNACONF"])
def test_dynaconf_variables_that_change_how_it_reads_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Found in review: LOADERS_FOR_DYNACONF=false switched off every WSGATE_* and WEBSOCKET_* variable, silently."""
    monkeypatch.setenv(name, "false")
    monkeypatch.setenv("WEBSOCKET_PORT", "9000")
    with pytest.raises(ConfigError, match=f"^environment variable {name} would change how dynaconf reads settings"):
        load_settings()


def test_dynaconf_prefixed_variables_are_named_as_not_read() -> None:
    from wsgate.config import unknown_variables

    assert unknown_variables({"DYNACONF_WEBSOCKET__PORT": "9"}) == [
        "environment variable DYNACONF_WEBSOCKET__PORT is not read (wsgate reads WSGATE_* variables); "
        "did you mean WSGATE_WEBSOCKET__PORT?"
    ]


def test_a_plugin_variable_keeps_the_case_of_keys_below_its_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_PLUGINS__TOKEN_AUTH__TOKENS__S3CRET", "alice")
    assert dict(load_settings().plugins.options["token_auth"]["tokens"]) == {"S3CRET": "alice"}


def test_an_error_shows_a_table_a_variable_set_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_PLUGINS__STRICT__X", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "EnvText" not in str(caught.value) and "'x': '1'" in str(caught.value), caught.value


def test_a_local_file_replaces_the_tables_it_names_whole(tmp_path: Path) -> None:
    """docs/configuration.md: settings.local.toml wins, table by table (the keys it leaves out are defaults)."""
    path = write(tmp_path, '[websocket]\nport = 9000\n[security]\nallowed_origins = ["https://a.example"]\n')
    (tmp_path / "settings.local.toml").write_text("[websocket]\nenabled = true\n")
    settings = load_settings(path)
    assert (settings.websocket.enabled, settings.websocket.port) == (True, 8081)
    assert settings.security.allowed_origins == ("https://a.example",)


def test_the_shipped_settings_file_lists_every_setting() -> None:
    """docs/configuration.md: `settings.toml` lists every key, with its default."""
    import tomllib

    data = tomllib.loads((ROOT / "settings.toml").read_text())
    missing = []
    for key, _, _ in iter_settings():
        node: object = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    assert not missing, f"settings.toml lacks {missing}"
