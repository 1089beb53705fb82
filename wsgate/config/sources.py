"""Where settings come from: the settings file and variables, read by dynaconf, and which source set each key.

dynaconf reads the settings file (and `<name>.local.toml` beside it) and, through this module's `load` (a
dynaconf loader, `loaders=["wsgate.config.sources"]`), the variables: `WSGATE_<TABLE>__<KEY>` and the spec's
`WEBSOCKET_*` names, laid over them. A variable's value is handed over as `EnvText`, its text beside TOML's
reading of it, so that the schema's type decides (dynaconf's own env loader would read `12345` as an int where
text is wanted). `overrides` (command line flags, tests) are set last. Which source set each key is dynaconf's
own record, `dynaconf.utils.inspect.get_history`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import EnvText, PluginsSettings, Settings, env_name, iter_settings

DEFAULT_SETTINGS_FILE = "settings.toml"
SETTINGS_FILE_ENV = "WSGATE_SETTINGS"
PREFIX = "WSGATE_"
NOT_SETTINGS = ("WSGATE_TEST_", "WSGATE_BENCH_")
"""Beginnings of WSGATE_* names that are not settings: the test suite's and the benchmarks' own."""
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
DYNACONF_VARIABLES = "_FOR_DYNACONF"
"""The end of every other variable of dynaconf's own (`LOADERS_FOR_DYNACONF`, `MERGE_ENABLED_FOR_DYNACONF`, ...):
they too win over wsgate's arguments, and could switch off the loader of WSGATE_* variables without a word."""
COMMAND_LINE = "command line"
ENVIRONMENT = "environment"


@dataclass(frozen=True, slots=True)
class Sources:
    """What was read: `raw`, the nested values (`EnvText` where a variable set one), and `origins`, for each
    dotted key some source set, that source: "environment <VARIABLE>", "file <path>" or "command line"."""

    raw: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str | None:
        """The source of `key`, or of the table that holds it when a variable set the table whole."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if (found := self.origins.get(".".join(parts[:n]))) is not None:
                return found if n == len(parts) or found.startswith(ENVIRONMENT) else None
        return None

    def label(self, key: str) -> str:
        """`key`, followed by the variable that set it when one did: errors name what the user wrote."""
        origin = self.origin(key) or ""
        return f"{key} ({origin.split(' ', 1)[1]})" if origin.startswith(ENVIRONMENT) else key

    def table_label(self, key: str) -> str:
        """`label`, for a key that may be a table set by variables of its keys (`metric (WSGATE_METRIC__ENABLED)`)."""
        if (self.origin(key) or "").startswith(ENVIRONMENT):
            return self.label(key)
        names = sorted(
            origin.split(" ", 1)[1]
            for name, origin in self.origins.items()
            if name.startswith(key + ".") and origin.startswith(ENVIRONMENT)
        )
        return f"{key} ({', '.join(names)})" if names else key


def read(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Sources:
    """Read the settings file (`settings_file(path)`), the variables, then `overrides` (a nested mapping)."""
    from dynaconf import Dynaconf  # type: ignore[import-untyped]  # only loading needs it
    from dynaconf.loaders.base import SourceMetadata  # type: ignore[import-untyped]
    from dynaconf.utils.inspect import get_history  # type: ignore[import-untyped]

    file = settings_file(path)
    for name in sorted(os.environ):
        if name in DYNACONF_FILE_VARIABLES:
            raise ConfigError(
                f"environment variable {name} would make dynaconf read other settings files than "
                f"{str(file) if file else 'none'}: name the file with {SETTINGS_FILE_ENV} or --settings"
            )
        if name.endswith(DYNACONF_VARIABLES):
            raise ConfigError(f"environment variable {name} would change how dynaconf reads settings: unset it")
    try:
        loaded = Dynaconf(
            settings_files=[str(file)] if file else [],
            root_path=str(file.parent) if file else os.getcwd(),  # what dynaconf resolves relative names against
            envvar_prefix="WSGATE",
            environments=False,
            loaders=[__name__],  # `load` below, in place of dynaconf's env loader
        )
        for key, value in _leaves(overrides or {}):
            loaded.set(key, value, tomlfy=False, loader_identifier=SourceMetadata(COMMAND_LINE, "overrides", "global"))
        raw: dict[str, Any] = _lower_names(loaded.as_dict())
        history = get_history(loaded)
    except ConfigError:
        raise
    except Exception as exc:  # dynaconf raises many types for an unreadable file
        where = str(file) if file else "environment"
        raise ConfigError(f"cannot read settings from {where}: {exc}") from None
    origins: dict[str, str] = {}
    for entry in history:
        if entry["loader"] == "toml":
            origins.update((key, f"file {entry['identifier']}") for key, _ in _leaves(_lower_names(entry["value"])))
        elif entry["loader"] == ENVIRONMENT:
            origins[_key_of(entry["identifier"])] = f"{ENVIRONMENT} {entry['identifier']}"
    origins.update((key, COMMAND_LINE) for key, _ in _leaves(_lower_names(dict(overrides or {}))))
    sources = Sources(raw, origins)
    _absolute_paths(sources)
    return sources


def load(obj: Any, env: Any = None, silent: bool = True, key: Any = None, filename: Any = None, **_: Any) -> None:
    """dynaconf's loader interface (`loaders=[...]`): set every setting a variable gives, as `EnvText`.

    `WSGATE_<TABLE>__<KEY>[__<KEY>]` names a key (lower case); the spec's `WEBSOCKET_<KEY>` names, laid over
    them, the websocket keys. A plugin's own table (`WSGATE_PLUGINS__<NAME>__<KEY>`) has no schema: its values
    are read as dynaconf reads variables. `WSGATE_<TABLE>` alone would replace a whole table: refused.
    """
    from dynaconf.loaders.base import SourceMetadata
    from dynaconf.utils.parse_conf import boolean_fix, parse_conf_data, parse_with_toml  # type: ignore[import-untyped]

    tables = set(Settings.model_fields)
    found: list[tuple[str, str]] = []
    for name in sorted(os.environ):
        if not name.startswith(PREFIX) or name.startswith(NOT_SETTINGS):
            continue
        if "__" not in name:
            table = name[len(PREFIX) :].lower()
            if table in tables:  # dynaconf would put it in place of the file's whole table: nothing would say so
                raise ConfigError(
                    f"environment variable {name} would replace the whole [{table}] table: set "
                    f"{name}__<KEY> for each key instead"
                )
            continue
        found.append((name, _key_of(name)))
    found += [(env_name(dotted), dotted) for dotted, _, _ in iter_settings() if env_name(dotted) in os.environ]
    for name, dotted in found:  # (the spec's names last: they win)
        text = os.environ[name]
        parts = dotted.split(".")
        if parts[0] == "plugins" and len(parts) > 1 and parts[1] not in PluginsSettings.model_fields:
            value: Any = parse_conf_data(boolean_fix(text), tomlfy=True, box_settings=obj)
        else:
            value = EnvText(text, parse_with_toml(text), name)
        obj.set(dotted, value, tomlfy=False, loader_identifier=SourceMetadata(ENVIRONMENT, name, "global"))


def _key_of(variable: str) -> str:
    """The dotted key a variable sets: `WSGATE_AUTH__JWT__SECRET` -> auth.jwt.secret, `WEBSOCKET_PORT` ->
    websocket.port."""
    if variable.startswith(PREFIX):  # names are case-insensitive; a plugin's keys below them keep their case
        parts = variable[len(PREFIX) :].split("__")
        return ".".join([part.lower() for part in parts[:3]] + parts[3:])
    return next(dotted for dotted, _, _ in iter_settings() if env_name(dotted) == variable)


def _leaves(table: Mapping[str, Any], prefix: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """(dotted key, value) down to setting names (table, [sub-table or plugin,] key): below, values are whole."""
    out: list[tuple[str, Any]] = []
    for name, value in table.items():
        if isinstance(value, Mapping) and depth > 1:
            out += _leaves(value, f"{prefix}{name}.", depth - 1)
        else:
            out.append((f"{prefix}{name}", value))
    return out


def _lower_names(value: Any, depth: int = 3) -> Any:
    """Setting names in lower case: dynaconf upper-cases table names, and names are case-insensitive. Only
    the first `depth` levels are names (table, [sub-table or plugin,] key): values below them, such as a
    plugin's `tokens = { "S3cret" = "alice" }`, keep their case."""
    if isinstance(value, Mapping) and depth > 0:
        return {str(k).lower(): _lower_names(v, depth - 1) for k, v in value.items()}
    return value


def _absolute_paths(sources: Sources) -> None:
    """Every path setting (PEM text is no path) made absolute: relative to the directory of the settings file
    that set it, or to the working directory for a variable or an override. Every entry point then reads the
    same file, and errors name it."""
    for key, info, _ in iter_settings():
        if not info.path:
            continue
        *tables, name = key.split(".")
        table: Any = sources.raw
        for part in tables:
            table = table.get(part) if isinstance(table, Mapping) else None
        value = table.get(name) if isinstance(table, dict) else None
        text = value.text if isinstance(value, EnvText) else value
        if not isinstance(text, str) or not text.strip() or text.lstrip().startswith("-----BEGIN"):
            continue
        origin = sources.origin(key) or ""
        base = Path(origin.split(" ", 1)[1]).parent if origin.startswith("file ") else Path.cwd()
        absolute = os.path.join(base, os.path.expanduser(text))
        table[name] = EnvText(absolute, absolute, value.variable) if isinstance(value, EnvText) else absolute


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


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per WEBSOCKET_* or WSGATE_* variable that is no setting (a typo is otherwise silently
    ignored), with the closest real name."""
    environ = os.environ if environ is None else environ
    known = {SETTINGS_FILE_ENV}
    for key, _, _kind in iter_settings():
        parts = key.split(".")
        known.update(PREFIX + "__".join(parts[:n]).upper() for n in range(1, len(parts) + 1))
        if key.startswith("websocket."):
            known.add(env_name(key))
    warnings = []
    for name in sorted(environ):
        if name.startswith("DYNACONF_"):  # dynaconf's own prefix: wsgate reads WSGATE_* and WEBSOCKET_* only
            close = difflib.get_close_matches(PREFIX + name[len("DYNACONF_") :], known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"environment variable {name} is not read (wsgate reads WSGATE_* variables){hint}")
            continue
        if not name.startswith(("WEBSOCKET_", PREFIX)) or name in known or name.startswith(NOT_SETTINGS):
            continue
        if name.startswith("WSGATE_PLUGINS__") and name.count("__") >= 2:
            continue  # a plugin's own table: [plugins.<name>]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"environment variable {name} is not a setting and is ignored{hint}")
    return warnings
