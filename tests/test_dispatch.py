"""Unit tests of the Dispatcher (wsgate/dispatch.py) on a connection without a server."""

from __future__ import annotations

import asyncio
from typing import Any

from wsgate import protocol
from wsgate.connection import Resumed
from wsgate.dispatch import Dispatcher
from wsgate.protocol import ClientError, Decoder, Message
from wsgate.registry import HandlerRegistry
from wsgate.testing import TIMEOUT

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


async def _by_hand(dispatcher: Dispatcher, conn: Any, text: str) -> asyncio.Task[Any] | None:
    """Drive `dispatch` outside any task, as a protocol-driven reader does: None when it completed at once, else
    the task made for its rest."""

    def drive() -> asyncio.Task[Any] | None:
        coroutine = dispatcher.dispatch(conn, text)
        try:
            first = coroutine.send(None)
        except StopIteration:
            return None

        async def rest() -> Any:
            return await Resumed(coroutine, first)

        return asyncio.get_running_loop().create_task(rest())

    handle: asyncio.Future[asyncio.Task[Any] | None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(lambda: handle.set_result(drive()))  # (a loop callback: no current task)
    return await handle


async def test_a_message_that_does_not_wait_completes_without_a_task_and_leaves_nothing_in_flight() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    registry = HandlerRegistry()

    async def answer(client: Any, message: Message) -> None:
        client.enqueue(protocol.encode("answer"))

    registry.register("test", {"answer": answer})
    dispatcher = Dispatcher(registry, parts.metrics, Decoder(), eager=frozenset({"answer"}))
    for text in ('{"type":"answer"}', '{"type":"answer","id":7}', "{", '{"type":"nope"}'):
        assert await _by_hand(dispatcher, conn, text) is None
    assert not dispatcher._in_flight and dispatcher._sweeper is None
    await turn()
    assert [(m["type"], m.get("id")) for m in transport.messages()] == [
        ("answer", None),
        ("answer", 7),
        ("error", None),
        ("error", None),
    ]


async def test_a_message_driven_by_hand_that_waits_is_cancelled_at_its_deadline_or_when_its_client_goes() -> None:
    parts = Parts()
    conn, transport = parts.connect()
    gone, _ = parts.connect()
    registry = HandlerRegistry()
    cancelled: list[str] = []

    async def hang(client: Any, message: Message) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(client.id)
            raise

    registry.register("test", {"hang": hang})
    dispatcher = Dispatcher(registry, parts.metrics, Decoder(), hook_timeout=0.05, eager=frozenset({"hang"}))
    # the leaving client's deadline is far off, so that a stalled test process cannot time it out first
    patient = Dispatcher(registry, parts.metrics, Decoder(), hook_timeout=60, eager=frozenset({"hang"}))
    leaving = await _by_hand(patient, gone, '{"type":"hang"}')
    assert leaving is not None
    patient.client_gone(gone)  # before its task resumed it once: through the future it waits on
    await asyncio.wait_for(leaving, TIMEOUT)
    assert cancelled == [gone.id]
    timing_out = await _by_hand(dispatcher, conn, '{"type":"hang","id":"a"}')
    assert timing_out is not None
    await asyncio.wait_for(timing_out, TIMEOUT)
    assert cancelled == [gone.id, conn.id]
    assert not dispatcher._in_flight and not patient._in_flight
    await turn()
    (answer,) = transport.messages()
    assert (answer["error"], answer["id"]) == (protocol.INTERNAL_ERROR, "a")
    assert parts.metrics.error_count("hook_timeout") == 1


async def test_a_message_driven_by_hand_through_an_async_hook_is_handled_and_bounded_by_its_own_deadline() -> None:
    """asyncio sets no timer outside a task: a hook awaited before the message's first suspension (an eager
    handler's, through an eager hook) runs under the message's deadline instead (`plugins.within`), answered
    `internal error` with the hook named, as in a task."""
    import json

    from tests.fakes import RecordingTransport
    from wsgate import eager, hookimpl
    from wsgate.app import create_app
    from wsgate.clients import GatewayConnection
    from wsgate.keys import DISPATCHER, FLUSHER, GATEWAY, HUB, METRICS, SCHEDULE, SETTINGS
    from wsgate.testing import make_settings

    class Slow:
        @hookimpl
        @eager
        async def wsgate_authorize(self, client: Any, action: str, room: str | None) -> bool | None:
            if room == "stuck":
                await asyncio.Event().wait()
            await asyncio.sleep(0)  # (one loop turn: a hook that suspends once, not a wait for time)
            return None

        @hookimpl
        def wsgate_message_handlers(self) -> dict[str, Any]:
            @eager
            async def check(client: Any, message: Message) -> None:
                assert asyncio.current_task() is None  # (started by hand)
                await client.gateway.authorize(client, "publish", message.room)
                client.enqueue(protocol.encode("checked", room=message.room))

            return {"check": check}

    app = await create_app(make_settings(plugins={"hook_timeout": "100ms"}), plugins=[Slow()])
    transport = RecordingTransport()
    conn = GatewayConnection(
        transport,  # type: ignore[arg-type]
        remote="127.0.0.1",
        settings=app[SETTINGS].websocket,
        flusher=app[FLUSHER],
        schedule=app[SCHEDULE],
        metrics=app[METRICS],
        on_drop=app[HUB].remove,
        gateway=app[GATEWAY],
    )
    assert app[HUB].admit(conn)
    dispatcher = app[DISPATCHER]
    for room in ("free", "stuck"):
        task = await _by_hand(dispatcher, conn, json.dumps({"type": "check", "room": room, "id": room}))
        assert task is not None  # (the hook suspends)
        await asyncio.wait_for(task, TIMEOUT)
    await turn()
    checked, timed_out = transport.messages()[-2:]
    assert (checked["type"], checked["id"]) == ("checked", "free")
    assert (timed_out["error"], timed_out["id"]) == (protocol.INTERNAL_ERROR, "stuck")
    assert app[METRICS].error_count("hook_timeout") == 1
    assert not dispatcher._in_flight and app[DISPATCHER]._waiting_on(conn) is None
