"""Eager handlers (`wsgate.eager`): a message whose handler may start outside a task is handled at once in the
connection's read callback, and costs a task only when it waits; every other handler starts in a task, so that
`asyncio.timeout` and `asyncio.current_task` work in it as they always did."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import json
import os
from typing import Any

from wsgate import Client, Message, eager, hookimpl, protocol
from wsgate.keys import DISPATCHER
from wsgate.testing import StartServer, eventually
from wsgate.types import is_eager

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("SEEN", default="unset")


async def suspend_once() -> None:
    """Suspend once, until a callback the loop runs next sets a future: a handler that waits (for an event, not
    for time)."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    loop.call_soon(woken.set_result, None)
    await woken


class Handlers:
    """`plain` (unmarked) and `quick` (eager) record whether they started in a task; `plain` enters
    `asyncio.timeout` before its first await, which needs one. `mark` sets a context variable and answers what
    it found."""

    def __init__(self) -> None:
        self.started_in_task: dict[str, bool] = {}

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        async def plain(client: Client, message: Message) -> None:
            self.started_in_task["plain"] = asyncio.current_task() is not None
            async with asyncio.timeout(5):
                await suspend_once()
            client.enqueue(protocol.encode("plain_done"))

        @eager
        async def quick(client: Client, message: Message) -> None:
            self.started_in_task["quick"] = asyncio.current_task() is not None
            client.enqueue(protocol.encode("quick_done"))

        @eager
        async def mark(client: Client, message: Message) -> None:
            client.enqueue(protocol.encode("marked", data={"before": SEEN.get()}))
            SEEN.set(str(message.data))

        return {"plain": plain, "quick": quick, "mark": mark}


async def test_an_eager_handler_starts_by_hand_and_any_other_in_a_task(wsgate_server: StartServer) -> None:
    handlers = Handlers()
    server = await wsgate_server(handlers)
    assert {"quick", "mark", "publish", "ping"} <= server.app[DISPATCHER]._eager
    assert "plain" not in server.app[DISPATCHER]._eager
    peer = await server.connect()
    for kind in ("plain", "quick", "plain"):
        await peer.send({"type": kind})
        assert (await peer.recv())["type"] == f"{kind}_done"
    assert handlers.started_in_task == {"plain": True, "quick": False}


async def test_an_eager_handler_runs_in_a_context_of_its_own(wsgate_server: StartServer) -> None:
    """As in a task: a context variable one message sets is not what the next one finds."""
    server = await wsgate_server(Handlers())
    peer = await server.connect()
    for n in range(3):
        await peer.send({"type": "mark", "data": n})
        assert (await peer.recv())["data"] == {"before": "unset"}


class Guard:
    """A `wsgate_authorize` hook that enters `asyncio.timeout` before its first await, unmarked or `eager`."""

    def __init__(self, marked: bool) -> None:
        self.calls = 0

        async def authorize(client: Client, action: str, room: str | None) -> bool | None:
            self.calls += 1
            async with asyncio.timeout(5):
                await suspend_once()
            return None

        self.wsgate_authorize = hookimpl(eager(authorize) if marked else authorize)


async def test_an_unmarked_authorization_hook_keeps_every_handler_in_a_task(wsgate_server: StartServer) -> None:
    """The built-in `publish` is eager, and calls `wsgate_authorize`: with one hook that is not, it starts in a
    task, where the hook's `asyncio.timeout` works."""
    guard = Guard(marked=False)
    server = await wsgate_server(guard)
    assert server.app[DISPATCHER]._eager == frozenset()
    peer = await server.connect()
    await peer.subscribe("room")
    await peer.send({"type": "publish", "room": "room", "data": "hello"})
    message = await peer.recv()
    assert (message["type"], message["data"]) == ("message", "hello")
    assert guard.calls == 2  # the subscribe's and the publish's


async def test_an_eager_authorization_hook_leaves_publish_eager(wsgate_server: StartServer) -> None:
    server = await wsgate_server(Guard(marked=True))
    assert "publish" in server.app[DISPATCHER]._eager


def _ping_frame() -> bytes:
    payload = json.dumps({"type": "ping"}).encode()
    mask = os.urandom(4)
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_burst_in_one_read_is_answered_whole_within_a_small_outbox(wsgate_server: StartServer) -> None:
    """300 pings in one write, with room for 64 answers in the outbox: handled by hand 32 at a time (READ_BATCH),
    the flusher writing between, as a reader task does; the client is never taken for a slow consumer."""
    server = await wsgate_server(websocket={"send_queue_size": 64})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.test_server.port)  # type: ignore[arg-type]
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 101")
    await eventually(lambda: len(server.hub.connections) == 1)
    writer.write(_ping_frame() * 300)
    types = []
    while len(types) < 301:
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        assert first[0] == 0x81, first  # text frames only: no close
        size = first[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        types.append(json.loads(await reader.readexactly(size))["type"])
    assert types == ["connected"] + ["pong"] * 300
    assert len(server.hub.connections) == 1
    writer.close()


async def test_the_docs_eager_handler(wsgate_server: StartServer, tmp_path: Any) -> None:
    """docs/plugins.md's `shout.py`, "Eager handlers"."""
    from .test_docs_examples import page_block, write_module

    shout = write_module(tmp_path, "shout", page_block("plugins.md", "# shout.py"))
    server = await wsgate_server(shout)
    assert "shout" in server.app[DISPATCHER]._eager
    peer = await server.connect()
    await peer.send({"type": "shout", "data": "hello"})
    answer = await peer.recv()
    assert (answer["type"], answer["data"]) == ("shouted", "HELLO")


class Stray:
    """Handlers that meet a cancellation nobody asked for: a future cancelled before it is awaited (by hand, before
    any wait) or while it is awaited (in the task made for the rest), eager or not."""

    @hookimpl
    def wsgate_message_handlers(self) -> dict[str, Any]:
        async def at_once(client: Client, message: Message) -> None:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

        async def while_waiting(client: Client, message: Message) -> None:
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)
            await future

        return {
            "eager_at_once": eager(at_once),
            "eager_while_waiting": eager(while_waiting),
            "plain_while_waiting": while_waiting,
        }


async def test_a_cancellation_nobody_asked_for_is_an_internal_error_and_the_client_goes_on(
    wsgate_server: StartServer,
) -> None:
    """Not a client gone, not a deadline: the handler's own failure. Answered, and the next message is handled
    (it once left the client's messages queued for good, or escaped the read callback and aborted the socket)."""
    server = await wsgate_server(Stray())
    peer = await server.connect()
    for kind in ("eager_at_once", "eager_while_waiting", "plain_while_waiting"):
        await peer.send({"type": kind, "id": kind})
        answer = await peer.recv()
        assert (answer["type"], answer["error"], answer["id"]) == ("error", "internal error", kind)
        assert (await peer.request({"type": "ping"}))["type"] == "pong"
    assert len(server.hub.connections) == 1


def test_the_mark_is_the_function_s_own() -> None:
    """A wrapper that `functools.wraps` copied the mark to may add what needs a task: not eager unless marked. A
    bound method's function takes the mark."""

    @eager
    async def handler(client: Client, message: Message) -> None: ...

    @functools.wraps(handler)
    async def traced(client: Client, message: Message) -> None:
        async with asyncio.timeout(1):
            await handler(client, message)

    class Plugin:
        async def method(self, client: Client, message: Message) -> None: ...

    bound = Plugin().method
    assert (is_eager(handler), is_eager(traced), is_eager(bound)) == (True, False, False)
    assert eager(bound) is bound and is_eager(bound) and is_eager(Plugin.method)


async def test_a_wrapped_eager_handler_starts_in_a_task(wsgate_server: StartServer) -> None:
    """The built-in `publish`, wrapped by a plugin that enters `asyncio.timeout` first: it works (in a task)."""
    from wsgate.builtin.messages import publish

    @functools.wraps(publish)
    async def timed(client: Client, message: Message) -> None:
        async with asyncio.timeout(5):
            await publish(client, message)

    class Timed:
        @hookimpl
        def wsgate_message_handlers(self) -> dict[str, Any]:
            return {"timed_publish": timed}

    server = await wsgate_server(Timed())
    assert "timed_publish" not in server.app[DISPATCHER]._eager
    peer = await server.connect()
    await peer.subscribe("room")
    await peer.send({"type": "timed_publish", "room": "room", "data": "hi"})
    assert (await peer.recv())["data"] == "hi"


async def test_a_task_factory_without_a_context_argument_still_takes_the_rest(wsgate_server: StartServer) -> None:
    """An embedding application's task factory of the older form `factory(loop, coroutine)`: a message that
    waits, eager or not, still gets its task."""
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any) -> asyncio.Task[Any]:
        made.append(coroutine.__qualname__)
        return asyncio.Task(coroutine, loop=loop)

    server = await wsgate_server(Stray())
    peer = await server.connect()
    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        assert (await peer.subscribe("room"))["type"] == "subscribed"  # not eager: begun in a task
        await peer.send({"type": "eager_while_waiting"})  # eager, and it waits: its rest in a task
        assert (await peer.recv())["error"] == "internal error"
    finally:
        loop.set_task_factory(None)
    assert made.count("Connection._read_queued") >= 2
