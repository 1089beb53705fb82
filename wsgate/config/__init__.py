"""Settings: the only package that reads settings files and the environment.

`load_settings` reads the sources (`sources`: dynaconf, the settings file and variables), validates and
converts them against the schema (`schema`: pydantic models, frozen), tells the first problem in one line
(`errors`), then checks the settings that relate to each other (`checks`). `report` is what `wsgate config`
prints. Components receive a `Settings` object and never look anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .checks import check_relations, inert_settings
from .errors import ConfigError, explain
from .report import describe_settings, secrets_of
from .schema import (
    LOG_FORMATS,
    LOG_LEVELS,
    RESERVED_PATHS,
    SPEC_ENV_PREFIX,
    ApiSettings,
    AuthSettings,
    BrokerSettings,
    CorsSettings,
    DashboardSettings,
    HistorySettings,
    JwtSettings,
    LimitsSettings,
    LoggingSettings,
    MetricsSettings,
    PluginsSettings,
    PresenceSettings,
    PublishSettings,
    RuntimeSettings,
    SecuritySettings,
    Settings,
    ShutdownSettings,
    WebSocketSettings,
    env_name,
    iter_settings,
    parse_duration,
)
from .sources import (
    DEFAULT_SETTINGS_FILE,
    DYNACONF_FILE_VARIABLES,
    DYNACONF_VARIABLES,
    NOT_SETTINGS,
    SETTINGS_FILE_ENV,
    describe_source,
    read,
    settings_file,
    settings_files,
    unknown_variables,
)

__all__ = [
    "DEFAULT_SETTINGS_FILE",
    "DYNACONF_FILE_VARIABLES",
    "DYNACONF_VARIABLES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "NOT_SETTINGS",
    "RESERVED_PATHS",
    "SETTINGS_FILE_ENV",
    "SPEC_ENV_PREFIX",
    "ApiSettings",
    "AuthSettings",
    "BrokerSettings",
    "ConfigError",
    "CorsSettings",
    "DashboardSettings",
    "HistorySettings",
    "JwtSettings",
    "LimitsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PluginsSettings",
    "PresenceSettings",
    "PublishSettings",
    "RuntimeSettings",
    "SecuritySettings",
    "Settings",
    "ShutdownSettings",
    "WebSocketSettings",
    "describe_settings",
    "describe_source",
    "env_name",
    "inert_settings",
    "iter_settings",
    "load_settings",
    "parse_duration",
    "secrets_of",
    "settings_file",
    "settings_files",
    "unknown_variables",
]


def load_settings(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings file, then `WSGATE_*` and `WEBSOCKET_*` variables, then `overrides`.

    `path` defaults to `$WSGATE_SETTINGS`, then `./settings.toml` (silently absent is fine
    for the default only). `overrides` is a nested mapping (used by the CLI flags and tests).
    Raises ConfigError with a one-line message for any bad value.
    """
    sources = read(path, overrides)
    try:
        settings = Settings.model_validate(sources.raw, context={"source": "settings"})
    except ValidationError as exc:
        raise explain(exc, sources.raw, sources.label, sources.table_label) from None
    check_relations(settings, sources.label)
    return settings
