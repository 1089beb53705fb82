"""wsgate.errors: the close reasons and client errors are whole, sendable values; ClientError keeps its forms."""

from __future__ import annotations

import dataclasses
import re

import pytest

import wsgate
from wsgate import errors, protocol
from wsgate.broker import BrokerError
from wsgate.broker.base import OutcomeUnknown
from wsgate.cli import ListenError
from wsgate.metrics import MetricsError
from wsgate.plugins import HookTimedOut
from wsgate.presence import PresenceError
from wsgate.registry import PluginError
from wsgate.wire import MAX_CLOSE_REASON, close_fields


@pytest.mark.parametrize("reason", errors.CLOSE_REASONS, ids=lambda r: r.label + ":" + r.text)
def test_every_close_reason_can_be_sent_as_it_is(reason: errors.CloseReason) -> None:
    assert close_fields(reason.code, reason.text) == (reason.code, reason.text.encode())  # not refused, not cut
    assert len(reason.text.encode()) <= MAX_CLOSE_REASON
    assert isinstance(reason.reconnect, errors.Reconnect)


def test_close_reasons_are_distinct_frozen_values() -> None:
    assert len({reason.text for reason in errors.CLOSE_REASONS}) == len(errors.CLOSE_REASONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        errors.SLOW_CONSUMER.text = "x"  # type: ignore[misc]


def test_a_plugins_close_counts_as_other_unless_it_is_word_for_word_one_of_the_servers() -> None:
    assert errors.plugin_close(1008, "slow consumer") is errors.SLOW_CONSUMER
    own = errors.plugin_close(4000, "bye")
    assert (own.code, own.text, own.label) == (4000, "bye", "other")
    assert errors.plugin_close(1000, "token expired").label == "token_expired"  # as the text table counted it
    assert errors.plugin_close(1000, "").label == "client"  # a close without a reason counted as `client`


def test_the_protocol_texts_are_the_error_values_texts() -> None:
    assert {kind.text for kind in errors.CLIENT_ERRORS} == {
        getattr(protocol, kind_name)
        for kind_name in (
            "INVALID_JSON",
            "UNKNOWN_TYPE",
            "ROOM_REQUIRED",
            "NOT_SUBSCRIBED",
            "ROOM_FULL",
            "SERVER_FULL",
            "ROOM_TOO_LONG",
            "BINARY_NOT_SUPPORTED",
            "INTERNAL_ERROR",
            "INVALID_ROOM",
            "TOO_DEEP",
            "TOO_MANY_ROOMS",
            "RATE_LIMITED",
            "NOT_ALLOWED",
            "NO_HISTORY",
            "HISTORY_UNAVAILABLE",
            "PUBLISH_OUTCOME_UNKNOWN",
            "NO_PRESENCE",
            "PRESENCE_UNAVAILABLE",
            "INVALID_TOKEN",
            "UNSUPPORTED_PROTOCOL",
            "UPGRADE_REQUIRED",
            "MESSAGE_TOO_LARGE",
        )
    }
    assert len({kind.code for kind in errors.CLIENT_ERRORS}) == len(errors.CLIENT_ERRORS)


def test_client_error_takes_a_value_a_documented_text_or_a_plugins_text() -> None:
    by_value = wsgate.ClientError(errors.NOT_ALLOWED, "why")
    by_text = wsgate.ClientError(protocol.NOT_ALLOWED, "why")
    assert by_value.kind is by_text.kind is errors.NOT_ALLOWED
    assert (by_text.text, by_text.detail, str(by_text)) == ("not allowed", "why", "not allowed")
    own = wsgate.ClientError("no such user")
    assert (own.text, own.kind.label, own.detail) == ("no such user", "rejected", None)
    untimed = re.compile(rb'"timestamp":\d+')  # (two encodings may fall in two milliseconds)
    assert untimed.sub(b"", protocol.encode_error(by_value)) == untimed.sub(b"", protocol.encode_error(by_text))
    assert wsgate.ClientError is protocol.ClientError is errors.ClientError
    assert wsgate.ClientError(text="no such user", detail="x").text == "no such user"  # the documented keywords


def test_config_errors_share_the_base_too() -> None:
    from wsgate.config import ConfigError

    assert issubclass(ConfigError, errors.WsgateError)


@pytest.mark.parametrize(
    "kind",
    [BrokerError, OutcomeUnknown, PresenceError, PluginError, MetricsError, ListenError, HookTimedOut],
)
def test_the_servers_exceptions_share_one_base(kind: type[Exception]) -> None:
    assert issubclass(kind, errors.WsgateError)
    assert issubclass(wsgate.ClientError, errors.WsgateError) and issubclass(errors.ClientGone, errors.WsgateError)
