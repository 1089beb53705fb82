"""Checks that relate settings to each other, once each setting is valid by itself (`wsgate.config.schema`)."""

from __future__ import annotations

from collections.abc import Callable

from ..overhead import FRAME_HEAD_BYTES, answer_overhead
from .errors import ConfigError
from .schema import Settings, show_duration


def check_relations(settings: Settings, label: Callable[[str], str] = str) -> None:
    """Raise ConfigError (one line) for the first pair of settings that cannot go together. `label(key)`: the
    key and the variable that set it (`wsgate.config.sources.Sources.label`)."""
    dashboard = settings.dashboard
    if dashboard.enabled and not dashboard.password and not settings.auth.jwt.enabled:
        raise ConfigError(
            f"invalid setting {label('dashboard.enabled')} = true: expected dashboard.password (or the JWT "
            "authenticator, [auth.jwt]) so that only operators can log in"
        )
    jwt = settings.auth.jwt
    if jwt.secret and jwt.public_key:
        raise ConfigError(
            f"invalid setting {label('auth.jwt.secret')} and {label('auth.jwt.public_key')}: "
            "expected one of them, not both"
        )
    ws = settings.websocket
    if settings.shutdown.mode == "restart" and settings.shutdown.window > ws.timeout / 4:
        raise ConfigError(
            f"invalid setting {label('shutdown.window')} = {show_duration(settings.shutdown.window)}: expected "
            f"at most a quarter of {label('websocket.timeout')}, {show_duration(ws.timeout / 4)} (the drain "
            f'gets half of it, and closing takes time too), with {label("shutdown.mode")} = "restart"'
        )
    envelope = answer_overhead(ws.limits.max_room_name_length)
    history = settings.history
    for key, answer_bytes, reserve, why in (  # (what an answer lists, and around it: `overhead.answer_overhead`)
        (
            "history.max_answer_bytes",
            history.max_answer_bytes,
            envelope + FRAME_HEAD_BYTES * history.size,
            f"its envelope and a frame head for each of {label('history.size')} = {history.size} messages",
        ),
        ("presence.max_answer_bytes", settings.presence.max_answer_bytes, envelope, "its envelope"),
    ):
        if answer_bytes + reserve > ws.send_queue_bytes:
            raise ConfigError(
                f"invalid setting {label(key)} = {answer_bytes}: expected at most {ws.send_queue_bytes - reserve}, "
                f"{label('websocket.send_queue_bytes')} = {ws.send_queue_bytes} less {reserve} for {why} "
                "(an answer must fit in what may wait for one client)"
            )
    if ws.max_message_size > ws.send_queue_bytes:
        raise ConfigError(
            f"invalid setting {label('websocket.max_message_size')} = {ws.max_message_size}: expected at most "
            f"{label('websocket.send_queue_bytes')} = {ws.send_queue_bytes} (a message as large as a client may "
            "send must fit in what may wait for each member it goes to)"
        )
    if ws.pong_wait <= ws.ping_interval:
        raise ConfigError(
            f"invalid setting {label('websocket.pong_wait')} = {show_duration(ws.pong_wait)}: expected a "
            f"duration greater than {label('websocket.ping_interval')} = {show_duration(ws.ping_interval)}"
        )


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
