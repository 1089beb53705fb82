"""What `wsgate config` prints (each setting, its value and where it came from) and which values are secret."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..redaction import MASK, SECRET_NAME, credentials_in, mask_value
from ..regex import LinearPattern
from ..rooms import RoomRule
from .errors import show
from .schema import Settings, iter_settings, show_duration
from .sources import read


def describe_settings(
    settings: Settings, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for every setting, secrets masked: `wsgate config`.

    Sources, strongest first: command line, environment (the variable's name), file, default; as dynaconf
    recorded them (`wsgate.config.sources.read`).
    """
    sources = read(path, overrides)
    leaves = [(key, get(settings, key), info.secret, info.duration) for key, info, _ in iter_settings()]
    for name, table in settings.plugins.options.items():
        for key, value in table.items():  # a secret-looking name masks its whole value, keys included
            leaves.append((f"plugins.{name}.{key}", value, bool(SECRET_NAME.search(key)), False))  # (the value's
            # shape masks it too, whatever its name: mask_value)
    rows = []
    for key, value, secret, duration in leaves:
        masked = mask_value(plain(value))  # by shape, whatever the name (`wsgate.redaction`)
        shown = MASK if (secret and value) or (masked == MASK and value != MASK) else show_value(masked, duration)
        rows.append((key, shown, sources.origin(key) or "default"))
    return rows


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold: secret settings, secret-named plugin options, and in any setting
    or plugin option, whatever its name, a credential-looking value and every URL's password
    (`wsgate.redaction.credentials_in`). Logs and errors mask them (`wsgate.redaction.Redactor`)."""
    found = [value for key, info, _ in iter_settings() if info.secret and (value := get(settings, key))]

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

    for key, _info, _kind in iter_settings():
        walk(plain(get(settings, key)), False)
    walk(settings.plugins.options, False)
    return [str(value) for value in found]


def get(settings: Settings, key: str) -> Any:
    """The value of a dotted key."""
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def plain(value: Any) -> Any:
    """A parsed value as the text it was written as: a room rule's text, a pattern's text ("" for none)."""
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    if isinstance(value, RoomRule):
        return value.text
    if isinstance(value, LinearPattern):
        return value.pattern
    return "" if value is None else value


def show_value(value: Any, duration: bool = False) -> str:
    """A value as TOML would spell it; durations in the file's own notation ("54s")."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {show_value(v)}" for k, v in value.items()) + "}"
    if duration:
        return f'"{show_duration(value)}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return show(value)
