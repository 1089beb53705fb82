"""Start-up errors: `ConfigError`, and pydantic's `ValidationError` told as one line.

Every message names the key, the variable that set it (or nothing when the file did), the value as written
(secrets and credential-looking values masked) and what was expected:
`invalid setting websocket.port (WEBSOCKET_PORT) = 'abc': expected an integer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from ..errors import WsgateError
from ..redaction import MASK, looks_like_credential, redact
from .schema import DURATION, LIST_EXPECTED, SECRET, EnvText, PluginsSettings, Settings, Table, show_duration


class ConfigError(WsgateError):
    """A setting cannot be used; the message is one line naming the key, the value and what is expected."""


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "string_unicode": "text that UTF-8 can encode (no lone surrogates)",
    "is_instance_of": "a string",
    "tuple_type": LIST_EXPECTED,
}
"""What each of pydantic's error types expected, as wsgate has always said it (the custom types raise
`wsgate_expected` with their own text)."""
_TABLE_ERRORS = ("model_type", "model_attributes_type", "dict_type")
_BOUNDS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def explain(
    error: ValidationError, raw: Mapping[str, Any], label: Callable[[str], str], tables: Callable[[str], str]
) -> ConfigError:
    """The first of `error`'s entries as a ConfigError. `raw`: the values as read (for the value as written),
    `label(key)`: the key and the variable that set it, `tables(key)`: the same for a key that may be a table
    set by variables of its keys (`metric (WSGATE_METRIC__ENABLED)`)."""
    entry = error.errors(include_url=False)[0]
    model: type[Table] = Settings
    info: FieldInfo | None = None
    parts: list[str] = []
    in_list = False
    for step in entry["loc"]:
        if isinstance(step, int):
            in_list = True
        elif info is None or (isinstance(info.annotation, type) and issubclass(info.annotation, Table)):
            if info is not None:
                model = info.annotation  # type: ignore[assignment]  # (checked just above)
            parts.append(str(step))
            info = model.model_fields.get(str(step))
            if info is None:
                break
    key = ".".join(parts)
    kind, context = entry["type"], entry.get("ctx") or {}
    if kind == "extra_forbidden":
        names = sorted(name for name in model.model_fields if not (model is PluginsSettings and name == "options"))
        prefix = key.rpartition(".")[0]
        more = f", or a [{prefix}.<name>] table" if model is PluginsSettings else ""
        return ConfigError(f"unknown setting {tables(key)}: expected one of {', '.join(names)}{more}")
    if kind == "wsgate_entry":
        return ConfigError(f"invalid setting {label(key)} entry {context['entry']!r}: {context['problem']}")
    if kind == "wsgate_unshown":
        return ConfigError(f"invalid setting {label(key)}: {context['problem']}")
    value = _raw_value(raw, key)
    secret = info is not None and SECRET in info.metadata
    secret = secret or (isinstance(value, str) and looks_like_credential(value))
    shown = MASK if secret else redact(show(value))
    if kind in _TABLE_ERRORS:
        return ConfigError(f"invalid setting {key} = {shown}: expected a table")
    if kind == "wsgate_expected":
        what = str(context["expected"])
    elif in_list and kind not in _BOUNDS:
        what = LIST_EXPECTED
    elif kind in _BOUNDS and info is not None:
        what = _bounds(info)
    else:
        what = _EXPECTED.get(kind, entry["msg"])
    return ConfigError(f"invalid setting {label(key)} = {shown}: expected {what}")


def _bounds(info: FieldInfo) -> str:
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    duration = DURATION in info.metadata

    def bound(value: float | None) -> str:
        return "any" if value is None else show_duration(value) if duration else str(value)

    if high is None:
        return f"a value of at least {bound(low)}"
    return f"a value from {bound(low)} to {bound(high)}"


def _raw_value(raw: Mapping[str, Any], key: str) -> Any:
    value: Any = raw
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return _plain(value)


def _plain(value: Any) -> Any:
    """`value` as the user wrote it: a variable's text, also inside a table a variable set."""
    if isinstance(value, EnvText):
        return value.text
    if isinstance(value, Mapping):
        return {name: _plain(item) for name, item in value.items()}
    return value


def show(value: Any) -> str:
    """A value in an error: strings quoted, booleans as TOML spells them."""
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
