"""Unit tests of the Dispatcher (wsgate/dispatch.py) on a connection without a server."""

from __future__ import annotations

from typing import Any

from wsgate import protocol
from wsgate.dispatch import Dispatcher
from wsgate.protocol import ClientError, Decoder, Message
from wsgate.registry import HandlerRegistry

from .fakes import Parts, turn


async def test_dispatcher_answers_every_failure_and_lets_nothing_escape() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    registry = HandlerRegistry()

    async def crash(client: Any, message: Message) -> None:
        raise RuntimeError("boom")

    async def refuse(client: Any, message: Message) -> None:
        raise ClientError("not today", "a detail")

    registry.register("test", {"crash": crash, "refuse": refuse})
    dispatcher = Dispatcher(registry, parts.metrics, Decoder())
    for text in ("{", "[]", '{"type":"nope"}', '{"type":"crash"}', '{"type":"refuse"}'):
        await dispatcher.dispatch(conn, text)
    await turn()
    assert [(m["error"], m.get("detail")) for m in transport.messages()] == [
        (protocol.INVALID_JSON, "the frame is not valid JSON"),
        (protocol.INVALID_JSON, "a message must be a JSON object"),
        (protocol.UNKNOWN_TYPE, None),
        (protocol.INTERNAL_ERROR, None),
        ("not today", "a detail"),
    ]
    assert parts.metrics.error_count("handler_error") == 1
