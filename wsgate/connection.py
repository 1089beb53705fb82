"""One connected client: identity, rooms, a bounded outbox, keepalive; and the Flusher.

Everything that sends to the client
appends a complete, pre-built WebSocket frame to its outbox: no await, no encode,
no per-recipient call beyond the append. At the end of the event-loop turn the
Flusher writes each outbox that got frames with ONE transport write, however many
frames piled up, so the kernel gets several frames per system call. A client
whose socket is full is left to its own writer task, which waits (at most
`write_wait`) for it to drain: a slow peer only ever slows itself.

After the upgrade the connection is the socket's protocol (`aiohttp_private.take_over`): frames are parsed
as bytes arrive. Control frames are handled at once. A text message whose handler is eager (`wsgate.eager`) is
handled at once too, and costs a task only if it waits; any other starts a reader task. The reader task handles
the rest of that message, then what arrived meanwhile (queued, bounded in bytes), in order, and ends. An idle
connection holds no task and no buffer (docs/performance.md, "Memory per connection").
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from contextvars import ContextVar, copy_context
from typing import Any, Final, overload

from aiohttp import WebSocketError, WSMessage, WSMsgType

from . import errors, protocol
from .aiohttp_private import Upgraded, deflate_now
from .config import WebSocketSettings
from .errors import CloseReason, Reconnect, close_text, plugin_close
from .keepalive import Action, Keepalive
from .metrics import Metrics
from .ratelimit import RateLimiter
from .schedule import Schedule
from .supervision import Throttled
from .wire import (
    PING_FRAME,
    PONG_OPCODE,
    PROTOCOL_ERROR,
    close_fields,
    close_frame,
    close_reply,
    control_frame,
    frame_payloads,
    text_frame,
)

log = logging.getLogger(__name__)

FAULT_LOG_INTERVAL = 10.0  # seconds between two log lines about a fault that can recur per client
READ_BATCH = 32  # messages one client may have handled in one read before others get a turn (< send_queue_size)
PONGS = 16
"""Pongs one client may have waiting (`Connection.queue_pong`): beyond, only the latest ping is answered."""
OVERLAP = 32
"""Publishes of one client whose outcome may be pending while its next messages are read (`Connection.overlap`)."""

TextHandler = Callable[[Any, str], Coroutine[Any, Any, None]]  # (called with the connection itself)
BinaryHandler = Callable[[Any, bytes], None]
EndHandler = Callable[[Any], Awaitable[None]]


class Released:
    """Set once a connection is gone and everything it held is released; awaitable (`wait`) without a
    future until someone waits (an idle connection holds none)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> bool:
        if not self._set:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return True


class _ParseError(Exception):
    """An error aiohttp's parser met while messages were queued, raised by `_next` after them (its cause)."""


DONE: Final = object()
"""What `next(coroutine steps, DONE)` gives for a coroutine that finished without suspending (here, and in
`Dispatcher.dispatch`)."""


class Resumed:
    """Awaits the rest of a coroutine driven by hand until it first suspended, yielding `first`: what the task
    made for the rest awaits (`Connection.received`). A bare yield (`first` None, `asyncio.sleep(0)`) goes on at
    once: the task's own first step is already a later loop turn."""

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: object) -> None:
        self._coroutine, self._first = coroutine, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, value = self._coroutine, self._first
        try:
            if value is None:
                value = coroutine.send(None)
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    coroutine.close()
                    raise
                except BaseException as exc:  # thrown in by the task (its cancellation)
                    value = coroutine.throw(exc)
                else:
                    value = coroutine.send(sent)
        except StopIteration as stop:
            return stop.value


async def _next(inbox: Any) -> WSMessage | None:
    """The inbox's next queued message; a parse error comes out as `_ParseError` (not mixed with a handler's)."""
    try:
        return await inbox.next()  # type: ignore[no-any-return]
    except Exception as exc:
        raise _ParseError from exc


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Sent:
    """What `Connection.send` returns: awaiting it is allowed and completes at once.

    The frame is already in the outbox; plugin code may `await client.send(...)` or not.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


SENT = Sent()


class Reply:
    """The request id of the message a client's reader is handling (docs/protocol.md, "Request ids"), encoded.

    The dispatcher puts one on the client (`Connection.replying`) and in `REPLYING` for the duration of the
    message's handling: what the handling queues for that client alone (`enqueue`, `send`, `send_error`)
    carries the id. One object per message, so a task a handler left behind never tags a later answer.
    """

    __slots__ = ("id",)

    def __init__(self, encoded_id: bytes) -> None:
        self.id = encoded_id


REPLYING: ContextVar[Reply | None] = ContextVar("wsgate_replying", default=None)
"""The Reply of the message the current task is handling (None outside a message with an id)."""


class Flusher:
    """Writes, once per event-loop turn, every outbox that received frames during that turn."""

    __slots__ = ("_dirty", "_scheduled", "_failed")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._failed = Throttled(log, FAULT_LOG_INTERVAL)

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """The loop's callback: nothing escapes it, so one client's failure never stops the others' writes."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:  # never expected: a transport that refused a write
                self._failed("writing to client %s failed; closing it", conn.id, exc_info=True)
                conn.drop(errors.WRITE_FAILED)


class Connection(asyncio.Protocol):
    """One client's socket and state. Plugins see it through the narrow `wsgate.Client` protocol.

    Collaborators come in the constructor: the upgraded socket's `transport`, `settings` (timeouts, outbox size,
    limits), the `flusher`, `metrics`, `on_drop`, called on the next loop turn after the client is dropped (the
    hub takes it out of its rooms), and `on_text`, `on_binary` and `on_end` (`attach`): what handles the
    client's messages, and what releases it once its socket is gone.
    """

    __slots__ = (
        "id",
        "_metrics",
        "_on_drop",
        "identity",
        "rooms",
        "remote",
        "address",
        "state",
        "close_cause",
        "close_code",
        "last_seen",
        "opened_at",
        "closed",
        "_transport",
        "_high_water",
        "_raw",
        "_loop",
        "_flusher",
        "_schedule",
        "_tick",
        "_outbox",
        "_outbox_limit",
        "_queued",
        "_byte_limit",
        "replied",
        "_marked",
        "_blocked",
        "_write_wait",
        "_alive",
        "handling",
        "_ping_due",
        "_pongs",
        "_timer",
        "_writer",
        "_closer",
        "limiter",
        "_expiry",
        "replying",
        "protocol",
        "_parser",
        "_inbox",
        "_deflate",
        "_on_text",
        "_on_binary",
        "_on_end",
        "reader_task",
        "_reading_paused",
        "_write_paused",
        "_drain_waiter",
        "_peer_closed",
        "_socket_gone",
        "_ending",
        "_peer_code",
        "_cutoff",
        "_overlapping",
        "_burst",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        remote: str | None,
        settings: WebSocketSettings,
        flusher: Flusher,
        schedule: Schedule,
        metrics: Metrics,
        on_drop: Callable[[Connection], None],
        identity: object = None,
        protocol_version: int = protocol.GUIDE_PROTOCOL,
        compressed: bool = False,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.protocol = protocol_version  # the version the client asked for (`/ws?protocol=N`, protocol.negotiate)
        self._metrics = metrics
        self._on_drop = on_drop
        self.identity = identity  # what an authentication plugin returned; None when anonymous
        self.rooms: set[str] = set()
        self.remote = remote
        self.address: str | None = None  # the address this socket is counted against (`Hub.claim_address`)
        self.state = State.OPEN
        self.close_cause: CloseReason | None = None  # why the server closed it (None: the client closed first)
        self.close_code: int | None = None  # the close code sent, or the client's (None: no close frame)
        self._transport = transport
        self._high_water = transport.get_write_buffer_limits()[1]
        self._raw = not compressed  # frames go to the socket as they are, unless deflate was negotiated
        self._loop = asyncio.get_running_loop()
        self._flusher = flusher
        self._schedule = schedule
        self._tick: int | None = None  # the keepalive's next question in the shared schedule
        self._outbox: list[bytes] = []  # complete WebSocket frames, header included
        self._outbox_limit = settings.send_queue_size
        self._queued = 0  # bytes in the outbox
        self._byte_limit = settings.send_queue_bytes  # everything held for this client, the transport's buffer too
        self.replied = 0  # bytes queued for this client alone (answers, replays), ever: rate limits charge them
        self._marked = False  # in the flusher's list for this turn
        self._blocked = False  # the socket is full: the writer task waits for it to drain
        self._write_wait = settings.write_wait
        self.last_seen = self.opened_at = self._loop.time()  # when bytes from the client were last read (loop time)
        limits = settings.limits
        self.limiter = RateLimiter(limits, self.last_seen) if RateLimiter.needed(limits) else None
        self._alive = Keepalive(self.last_seen, settings.ping_interval, settings.pong_wait)  # the verdicts
        self.handling = False  # one of this client's messages is being handled (what follows is queued)
        self._ping_due = False
        self._pongs: list[bytes] | None = None  # the payloads of the pings to answer (at most PONGS)
        self._timer: asyncio.Handle | None = None  # the keepalive's next loop turn (a suspected silence)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = Released()  # set once the client is gone and everything is released
        self.replying: Reply | None = None  # the request id of the message being handled (set by the dispatcher)
        self._parser: Any = None  # aiohttp's frame parser (`attach`)
        self._inbox: Any = None  # its queue (`aiohttp_private.Inbox`)
        self._deflate: Any = None  # aiohttp's writer, for permessage-deflate only
        self._on_text: TextHandler | None = None
        self._on_binary: BinaryHandler | None = None
        self._on_end: EndHandler | None = None
        self.reader_task: asyncio.Task[None] | None = None  # handles text messages, then ends (`_read_queued`)
        self._reading_paused = False
        self._write_paused = False  # the transport asked us to stop writing (over its high-water mark)
        self._drain_waiter: asyncio.Future[None] | None = None
        self._peer_closed: asyncio.Future[None] | None = None  # the client's close frame, or its socket's end
        self._socket_gone = False
        self._ending = False
        self._peer_code: int | None = None  # the code of the client's close frame, when it closed first
        self._cutoff: asyncio.TimerHandle | None = None  # aborts a socket that does not take its close in time
        self._overlapping: list[asyncio.Future[Any]] | None = None  # publishes whose outcome is pending (`overlap`)
        self._burst = 0  # text messages handled by hand in this read (`received`)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value} rooms={len(self.rooms)}>"

    # --- sending -----------------------------------------------------------------

    def send(self, payload: Mapping[str, Any]) -> Sent:
        """Send one JSON object to this client (stamped with `timestamp` if it has none). While this client's
        message with an `id` is handled, the object gets that `id` as its last key, unless it has one."""
        obj = dict(payload)
        obj.setdefault("timestamp", protocol.now_ms())
        if "id" in obj:
            self.notify(protocol.dumps(obj))
        else:
            self.enqueue(protocol.dumps(obj))
        return SENT

    def send_error(self, err: protocol.ClientError) -> None:
        """Answer this client with an `error` message (with `code` and `temporary` under protocol 2)."""
        self.enqueue(protocol.encode_error(err, coded=self.protocol >= protocol.PROTOCOL))

    def enqueue(self, payload: bytes) -> None:
        """Queue one encoded message for this client alone (counted as one delivery); ValueError, and nothing
        queued, when it is not valid UTF-8 (`wire.data_frame`), or its frame alone is over `send_queue_bytes`
        (it could never wait for this client: a plugin's mistake, not a slow reader).

        Queued while this client's message with an `id` is handled (in that handling's context: `REPLYING`),
        it is a reply and gets that `id` (`protocol.with_id`); otherwise it goes as it is (one attribute test).
        """
        reply = self.replying
        if reply is not None and REPLYING.get() is reply:
            payload = protocol.with_id(payload, reply.id)
        self.notify(payload)

    def notify(self, payload: bytes) -> None:
        """Queue one encoded message for this client alone that answers no request of its own (never given a
        request id): the `unsubscribed` of a room a refreshed token no longer allows, a push. ValueError as
        `enqueue`."""
        frame = text_frame(payload)
        if len(frame) > self._byte_limit:
            raise ValueError(
                f"a message of {len(payload)} bytes cannot be sent: at most websocket.send_queue_bytes = "
                f"{self._byte_limit} bytes may wait for a client"
            )
        if self.put(frame):
            self.replied += len(frame)
            self._metrics.messages_delivered(1)

    def enqueue_many(self, payloads: list[bytes]) -> None:
        """Queue encoded messages for this client alone as ONE outbox entry (a history replay).

        A replay takes one slot of `send_queue_size` (with deflate too: its frames are compressed one by one), and
        its bytes count against `send_queue_bytes` like any other.
        """
        frames = b"".join(text_frame(payload) for payload in payloads)
        if payloads and self.put(frames):
            self.replied += len(frames)
            self._metrics.messages_delivered(len(payloads))

    def put(self, frame: bytes) -> bool:
        """Queue a complete WebSocket frame; the hub builds it once for a whole fan-out.

        A client whose outbox is full (`send_queue_size` frames, or `send_queue_bytes` with what
        the socket still holds) is dropped (close 1008): it never slows the others, and what one
        client makes the server hold stays bounded in bytes. Returns whether the frame was queued.
        """
        if self.state is not State.OPEN:
            return False
        outbox, size = self._outbox, len(frame)
        if (  # (the socket's buffer only counts while it is over its high-water mark: see held_bytes)
            len(outbox) >= self._outbox_limit
            or self._queued + size > self._byte_limit
            or (self._blocked and not self.fits(size))
        ) and not self._room_made(size):
            self._too_slow(f"{len(outbox)} messages, {self.held_bytes()} bytes queued")
            return False
        outbox.append(frame)
        self._queued += size
        if not self._marked:
            self._marked = True
            self._flusher.mark(self)
        return True

    def _room_made(self, size: int) -> bool:
        """The outbox is full for `size` more bytes. While the socket takes writes (below its high-water mark),
        that is a burst within one loop turn, not a slow reader: what is queued is written now, and whether the
        frame may then wait is decided again (the socket's buffer counting once over its mark). A reader that
        keeps up is never closed for the size of a burst; one whose socket is full is (`put`)."""
        if self._blocked or not self._outbox:
            return False
        self.flush()
        return size <= self._byte_limit and (not self._blocked or self.fits(size))

    def held_bytes(self) -> int:
        """Bytes held for this client: its outbox, and the transport's buffer once it is over its high-water
        mark (below the mark, at most 64 KiB by default, it is not counted: asking costs a call per frame)."""
        held = self._queued
        if self._blocked and self._transport is not None:
            held += self._transport.get_write_buffer_size()
        return held

    def fits(self, size: int) -> bool:
        """Whether `size` more bytes may be held for this client within `send_queue_bytes`."""
        return self.held_bytes() + size <= self._byte_limit

    def _too_slow(self, held: str) -> None:
        """Close as a slow consumer (1008), counted as `slow_consumer`."""
        self._metrics.error(errors.SLOW_CONSUMER.label)
        log.warning("client %s is too slow (%s); closing", self.id, held, extra={"client_id": self.id})
        self.drop(errors.SLOW_CONSUMER)

    def flush(self) -> None:
        """Write the whole outbox with one system call, unless the socket is full (then the writer waits); under
        permessage-deflate, each frame compressed now (`_deflate_all`)."""
        self._marked = False
        outbox = self._outbox
        if self._blocked or not outbox or self.state is not State.OPEN:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._clear()
            return
        if self._raw:
            transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        else:
            self._deflate_all(outbox)
        outbox.clear()  # (`_clear` and `_check_buffer`, written out: twice per delivered message, not a call each)
        self._queued = 0
        if transport.get_write_buffer_size() > self._high_water:
            self._blocked = True
            self._need_writer()

    def _deflate_all(self, outbox: list[bytes]) -> None:
        """Compress and write every frame of `outbox` (`aiohttp_private.deflate_now`), on the event loop: what a
        deflate client is sent is written as soon as it would be a raw client's, so that the time compression
        takes is the server's, never counted as the client's slowness; a burst is slowed by it instead."""
        deflate, transport = self._deflate, self._transport
        for entry in outbox:
            for opcode, payload in frame_payloads(entry):  # an entry may hold several frames (a replay)
                if transport.is_closing():  # a write failed (the peer reset): aiohttp's would raise
                    return  # (what is left goes with the socket: connection_lost releases the client)
                deflate_now(deflate, payload, opcode)

    def write_head(self, head: bytes) -> None:
        """Write the upgrade's response (`Upgraded.head`; b"": written already) now, with the frames queued since
        (`connected`): one system call. Called right after `aiohttp_private.take_over`, before anything else can
        write to the socket."""
        if head:
            self._outbox.insert(0, head)
            self._queued += len(head)
            self.flush()

    def _clear(self) -> None:
        self._outbox.clear()
        self._queued = 0

    def _check_buffer(self, transport: asyncio.WriteTransport) -> None:
        """After a write: a transport over its high-water mark blocks this client until it drains (the writer
        waits, at most `write_wait`), so that the socket's buffer is counted in `held_bytes`."""
        if transport.get_write_buffer_size() > self._high_water:
            self._blocked = True
            self._need_writer()

    # --- reading: the socket's protocol after the upgrade -------------------------------------------

    def attach(
        self,
        upgraded: Upgraded,
        on_text: TextHandler,
        on_binary: BinaryHandler,
        on_end: EndHandler,
        *,
        hold: bool = False,
    ) -> None:
        """Take the socket `aiohttp_private.take_over` moved here: `on_text(conn, text)` handles each text
        message (a coroutine, awaited in the reader task), `on_binary(conn, data)` each binary one, and
        `on_end(conn)` runs once the socket is gone and this connection released (`stop`). Messages aiohttp
        parsed before the hand-over (sent with the handshake) come first.

        `hold`: what the client sends is queued (bounded in bytes, as while a message is handled) until
        `release`: for work before its first message, e.g. the `wsgate_client_connected` hooks.
        """
        self._parser, self._inbox, self._deflate = upgraded.parser, upgraded.inbox, upgraded.deflate
        self._on_text, self._on_binary, self._on_end = on_text, on_binary, on_end
        self._reading_paused = upgraded.paused  # (resumed once the queue is taken)
        if hold:
            self.handling = True
        elif self._inbox.has_queued():  # sent with the handshake
            self.release()
        else:
            self._inbox.queuing = False

    def release(self) -> None:
        """End `attach`'s hold: what was queued meanwhile is handled now, in order."""
        if self.reader_task is None and self._inbox.queuing:
            self.handling = True
            self.reader_task = self._loop.create_task(self._read_queued(None))

    def data_received(self, data: bytes) -> None:
        self._burst = 0
        self.last_seen = self._loop.time()  # any bytes are a sign of life: a long message still arriving, too
        self._parser.feed_data(data)  # -> received() for each message, frame_error() for a bad frame

    def eof_received(self) -> bool | None:
        """The client half-closed without a close frame: the answers its messages have so far, and its pings',
        go out first (it may still read), then the transport closes; connection_lost follows (a message whose
        handler still awaits something is cancelled then)."""
        self.flush()
        self._answer_pings()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket is gone (closed by either side, reset): the client goes now, out of its rooms, its work in
        flight cancelled (`on_drop`); then everything is released (`stop`) and `on_end` runs."""
        self._socket_gone = True
        if self._cutoff is not None:
            self._cutoff.cancel()  # (it held the transport, and through it this connection)
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the socket is gone"))
            waiter.exception()  # (retrieved: nobody may be waiting any more)
        if self._peer_closed is not None and not self._peer_closed.done():
            self._peer_closed.set_result(None)
        self.lost()
        if not self._ending:
            self._ending = True
            self._loop.create_task(self._end(), name=f"wsgate-end-{self.id}")

    def _cut_off(self) -> None:
        """Abort the socket `write_wait` from now unless it is gone by then (closed after what is buffered)."""
        if self._cutoff is None:
            self._cutoff = self._loop.call_later(self._write_wait, self._transport.abort)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drain(self) -> None:
        """Wait until the transport takes writes again (below its low-water mark); ConnectionResetError once
        the socket is gone."""
        if self._socket_gone:
            raise ConnectionResetError("the socket is gone")
        if not self._write_paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    def pause_reading(self) -> None:
        """Stop reading the socket (aiohttp's queue is full: `aiohttp_private.Inbox`)."""
        if not self._reading_paused:
            self._reading_paused = True
            if not self._transport.is_closing():
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def received(self, message: WSMessage) -> bool:
        """One message as it is parsed, in `data_received`; whether this client is now busy with it.

        A text message is handled at once, driven by hand in a context of its own (as a task would run it): one
        that finishes without waiting (an eager handler's: `wsgate.eager`) costs no task and no loop turn. One
        that suspends gets a reader task for the rest (`_read_queued`), and what follows is queued by the inbox
        until the task has taken it. Past READ_BATCH messages in one read, the rest goes to a reader task too,
        after a loop turn (the flusher writes the answers so far first, as `_read_queued` lets it every
        READ_BATCH). Never raises: an exception here would stop aiohttp's parser for good."""
        try:
            if message.type is not WSMsgType.TEXT:
                self._control(message)
                return False
            if self.state is not State.OPEN:
                return False  # read after the client was closed (a flood still buffered): not handled
            assert self._on_text is not None
            self.handling = True
            if self._burst >= READ_BATCH:
                self.reader_task = self._loop.create_task(self._read_queued(message.data))
                return True
            self._burst += 1
            context = copy_context()
            coroutine = self._on_text(self, message.data)
            first = context.run(next, coroutine.__await__(), DONE)  # (a default: when done, no StopIteration)
            if first is DONE:
                self.handling = False
                return False
            # the rest in a task made in that context (so in a copy of it: any task factory takes that call)
            self.reader_task = context.run(self._loop.create_task, self._read_queued(None, Resumed(coroutine, first)))
            return True
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:  # never expected (the dispatcher answers every failure of a message): a bug in wsgate
            self.handling = self.reader_task is not None
            log.exception("client %s: handling a frame failed; closing", self.id, extra={"client_id": self.id})
            self.drop(errors.INTERNAL_CLOSE)
        return False

    def _control(self, message: WSMessage) -> None:
        """A message that is not text, handled at once wherever it comes from: binary, ping, pong, close."""
        kind = message.type
        if kind is WSMsgType.BINARY:
            if self.state is State.OPEN and self._on_binary is not None:
                self._on_binary(self, message.data)
        elif kind is WSMsgType.PING:
            self.queue_pong(message.data)
        elif kind is WSMsgType.CLOSE:
            self._peer_close(message.data)
        # PONG: a sign of life (last_seen), nothing more

    def frame_error(self, error: BaseException) -> None:
        """A frame aiohttp's parser refused (RFC 6455 section 7.4.1: 1002 a protocol error, 1007 invalid UTF-8,
        1009 too big): closed with its code, as aiohttp closes, and a reason: "message too big", else the
        parser's own words ("Received frame with non-zero reserved bits"); under protocol 2 with its advice
        (`backoff`). The messages before it took effect: their answers go out first (a client would not know its
        publish went out), unless its socket is full."""
        code = int(error.code) if isinstance(error, WebSocketError) else PROTOCOL_ERROR
        why: CloseReason | None = None
        if code == errors.MESSAGE_TOO_BIG.code:
            self._metrics.error(errors.MESSAGE_TOO_BIG.label)
            why = errors.MESSAGE_TOO_BIG
        if self.state is not State.OPEN:
            return
        text = str(error) if isinstance(error, WebSocketError) else "protocol error"
        words = why or CloseReason(code, text, "protocol_error", Reconnect.BACKOFF)
        reason = close_text(words, advise=self.protocol >= protocol.PROTOCOL)
        self.flush()
        self._answer_pings()
        self.state = State.CLOSING
        self.close_cause, self.close_code = why, code
        self._clear()  # what a full socket could not take
        self._loop.call_soon(self._on_drop, self)
        self._closer = self._loop.create_task(
            self._close(code, reason, True, answer=False), name=f"wsgate-close-{self.id}"
        )

    async def _read_queued(self, text: str | None, rest: Resumed | None = None) -> None:
        """The reader task: handle `text` (None: none), or the `rest` of a message that suspended, then what was
        queued meanwhile, in order, each awaited; every READ_BATCH messages, a loop turn for the others. It ends
        once the queue is empty (reading resumes then, if the queue had filled: `aiohttp_private.Inbox`)."""
        inbox, on_text = self._inbox, self._on_text
        assert on_text is not None
        try:
            if rest is not None:
                await rest
            elif text is not None:
                await on_text(self, text)
            batch = 1
            while (message := await _next(inbox)) is not None:
                self.last_seen = self._loop.time()
                if message.type is WSMsgType.TEXT:
                    if self.state is State.OPEN:
                        await on_text(self, message.data)
                    batch += 1
                    if batch >= READ_BATCH:  # receive() did not yield while frames were buffered: the flusher runs
                        batch = 0
                        await asyncio.sleep(0)
                else:
                    self._control(message)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        except _ParseError as error:  # a bad frame after the queued messages (any error aiohttp's parser raised)
            self.frame_error(error.__cause__ or error)
        except Exception:  # never expected: the dispatcher answers every failure of a message
            log.exception("client %s: reading its messages failed; closing", self.id, extra={"client_id": self.id})
            self.drop(errors.INTERNAL_CLOSE)
        finally:
            self.reader_task = None
            self.handling = False

    def _peer_close(self, data: int) -> None:
        """The client's close frame (`data`: its code, 0 for none). While open: answered (section 5.5.1), then the
        socket is closed, within `write_wait`. While the server closes (its close sent, or about to be): that
        close's handshake is complete, whichever frame came first."""
        if self._peer_closed is None:
            self._peer_closed = self._loop.create_future()
        if not self._peer_closed.done():
            self._peer_closed.set_result(None)  # the answer to our close, or its crossing it: `_handshake` ends
        if self.state is not State.OPEN:
            return
        self._peer_code = data or None
        self.flush()  # the answers to the messages before it took effect: they go out before the close's answer
        self._answer_pings()  # (a ping read before the close is answered: section 5.5.2)
        self.lost()
        transport = self._transport
        if not transport.is_closing():
            transport.write(close_frame(close_reply(data), b""))
            transport.close()  # after what is buffered; a peer that does not read it is cut at write_wait
            self._cut_off()

    # --- publishes in flight ------------------------------------------------------------

    async def overlap(self, outcome: asyncio.Future[Any], check: Callable[[asyncio.Future[Any]], object]) -> None:
        """Let this client's next message be read while `outcome` (the future of a publish's answer, its place in
        every order already fixed: `Router.begin`) is pending. When it is done, `check(outcome)` gives the answer or
        raises its ClientError, which is answered then, with the request id of the message it answers. Waits while
        OVERLAP are pending. A message of another kind waits for all (`settled`): whatever it does comes after them,
        as if each publish had been awaited. A done-callback, not a task: a pending publish costs one list slot."""
        reply = self.replying if self.replying is not None and REPLYING.get() is self.replying else None
        pending = self._overlapping
        if pending is None:
            pending = self._overlapping = []
        pending.append(outcome)
        outcome.add_done_callback(functools.partial(self._settle, pending, check, reply))
        while len(pending) > OVERLAP:
            await asyncio.wait((pending[0],))

    @property
    def overlapping(self) -> int:
        """How many publishes of this client are pending (`overlap`): 0 to OVERLAP."""
        return len(self._overlapping) if self._overlapping else 0

    async def settled(self) -> None:
        """Wait until no publish of this client is pending."""
        while self._overlapping:
            await asyncio.wait(tuple(self._overlapping))

    def _settle(
        self,
        pending: list[asyncio.Future[Any]],
        check: Callable[[asyncio.Future[Any]], object],
        reply: Reply | None,
        outcome: asyncio.Future[Any],
    ) -> None:
        """A pending publish was answered (`overlap`): its error, if any, goes to the client, unless it has gone."""
        pending.remove(outcome)
        try:
            check(outcome)
        except errors.ClientError as err:
            if pending is not self._overlapping:  # the connection stopped (`stop`): nobody to answer
                return
            self._metrics.error(err.kind.label)
            payload = protocol.encode_error(err, coded=self.protocol >= protocol.PROTOCOL)
            self.notify(payload if reply is None else protocol.with_id(payload, reply.id))
        except asyncio.CancelledError:
            pass
        except Exception:  # never expected: the gateway turns every failure of a publish into a ClientError
            log.exception("client %s: a publish failed", self.id, extra={"client_id": self.id})

    # --- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the keepalive (called once the client is admitted): its questions are in the shared schedule."""
        self._tick = self._schedule.at(self._alive.next_ping, self)

    def due(self) -> None:
        """The keepalive's time has come (`wsgate.schedule`)."""
        self._tick = None
        self._keepalive()

    def expire_at(self, when: float | None) -> None:
        """Close with 4001 "token expired" at Unix time `when` (seconds; None: never), replacing any earlier
        deadline: the rights a token gave end with it, on sockets already open too."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if when is not None and self.state is State.OPEN:
            self._expiry = self._loop.call_later(max(0.0, when - time.time()), self.drop, errors.TOKEN_EXPIRED)

    @property
    def close_reason(self) -> str:
        """The text of the close the server sent (`close_cause`), or "" when the client closed first."""
        return self.close_cause.text if self.close_cause is not None else ""

    @overload
    def drop(self, code: CloseReason) -> None: ...
    @overload
    def drop(self, code: int, reason: str) -> None: ...
    def drop(self, code: CloseReason | int, reason: str = "") -> None:
        """Close this client from any context, without waiting; idempotent. `drop(errors.SLOW_CONSUMER)`
        closes for one of the server's reasons; `drop(code, reason)` for a plugin's (`errors.plugin_close`).

        Raises ValueError for a code an endpoint may not send (`wire.close_fields`), before anything changes;
        a reason longer than 123 UTF-8 bytes is cut on a character boundary.
        """
        why = code if isinstance(code, CloseReason) else plugin_close(code, reason)
        close_fields(why.code, why.text)  # refused here, at the caller, not later in the closing task
        if self.state is not State.OPEN:
            return
        reason = close_text(why, advise=self.protocol >= protocol.PROTOCOL)  # (never raises: before any change)
        # A peer closed for not reading gets no wait for its writer; any other is let take what is being written,
        # and what was queued for it before (a plugin's `send` then `drop`, the answer before a rate limit's close).
        patient = why not in (errors.SLOW_CONSUMER, errors.WRITE_TIMEOUT)
        if patient:
            self.flush()
            self._answer_pings()
        self.state = State.CLOSING
        self.close_cause = why
        self.close_code = code = why.code
        self._clear()
        # Leave the rooms now (next turn: we may be inside a fan-out over one of them),
        # not after a close handshake that a stalled peer can hold up for write_wait.
        self._loop.call_soon(self._on_drop, self)
        self._closer = asyncio.create_task(self._close(code, reason, patient), name=f"wsgate-close-{self.id}")

    def lost(self) -> None:
        """The socket is gone (the peer closed or reset it), whatever the reader is doing, e.g. awaiting a hook
        for this client's message: the client goes now, out of its rooms, its work in flight cancelled
        (`on_drop`); `connection_lost` then releases the rest (`stop`)."""
        if self.state is not State.OPEN:
            return
        self.state = State.CLOSING
        self._clear()
        self._loop.call_soon(self._on_drop, self)

    def close_gracefully(self, why: CloseReason, timeout: float) -> None:
        """Close for `why` (`errors.SHUTTING_DOWN`, `errors.SERVICE_RESTART`) after writing what is already
        queued (the shutdown drain), without waiting; idempotent.

        New messages are no longer taken. The outbox is written, then the close frame (RFC 6455
        section 7.1.2), then the close handshake is awaited: all within `timeout` seconds. A client
        that reads gets everything that was queued for it; one that cannot take its queue in time is
        counted (`websocket_errors_total{reason="drain_incomplete"}`), logged, and its socket aborted.
        Raises ValueError for a code an endpoint may not send, as `drop` does.
        """
        close_fields(why.code, why.text)
        if self.state is not State.OPEN:
            return
        reason = close_text(why, advise=self.protocol >= protocol.PROTOCOL)  # (never raises: before any change)
        self.state = State.CLOSING
        self.close_cause = why
        self.close_code = why.code
        self._loop.call_soon(self._on_drop, self)  # out of its rooms now: nothing new is queued
        self._closer = asyncio.create_task(self._finish(why.code, reason, timeout), name=f"wsgate-close-{self.id}")

    async def _finish(self, code: int, reason: str, timeout: float) -> None:
        queued = len(self._outbox)
        written = clean = False
        try:
            async with asyncio.timeout(timeout):
                if self._writer is not None and not self._writer.done():
                    await asyncio.wait([self._writer])  # it waits for a full socket to drain
                if self._outbox and not self._transport.is_closing():
                    frames = b"".join(self._outbox)  # bounded by send_queue_bytes: one write, then wait for it
                    self._clear()
                    self._transport.write(frames)
                    await self._drain()
                written = True
                await self._handshake(*close_fields(code, reason))
            clean = True
        except TimeoutError:
            if not written:
                self._metrics.error("drain_incomplete")
                log.warning(
                    "client %s did not take the %d messages queued for it within %.3gs of the drain; closing",
                    self.id,
                    queued,
                    timeout,
                    extra={"client_id": self.id},
                )
        except ConnectionError:
            pass  # the peer is gone; connection_lost cleans up
        finally:
            if not clean:
                self._transport.abort()

    async def _handshake(self, code: int, message: bytes, answer: bool = True) -> None:
        """The server's side of the closing handshake (RFC 6455 section 7.1.2): send the close frame, await the
        client's answer (or its socket's end; not for a peer that does not read: `answer` false), then close
        the socket. The caller bounds it in time."""
        transport = self._transport
        if self._socket_gone or transport.is_closing():
            return
        if self._peer_closed is None:
            self._peer_closed = self._loop.create_future()
        transport.write(close_frame(code, message))
        if answer:
            await self._drain()
            await self._peer_closed
        transport.close()
        if not answer:
            self._cut_off()  # (what asyncio still holds, at most)

    async def _end(self) -> None:
        """The socket is gone: release everything (`stop`), then the owner's `on_end`."""
        try:
            await self.stop()
        finally:
            if self._on_end is not None:
                await self._on_end(self)

    async def stop(self) -> None:
        """Release everything this client holds; called once its socket is gone."""
        self.state = State.CLOSED
        self._clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._tick is not None:
            self._schedule.cancel(self._tick, self)
            self._tick = None
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            if self.reader_task is not None:
                self.reader_task.cancel()
                await asyncio.gather(self.reader_task, return_exceptions=True)
            self._overlapping = None  # its publishes still pending are answered to nobody (`_settle`); the router
            # still delivers them to the room's members
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)
        finally:  # (a cancellation spreads, but everything is released first)
            self.closed.set()
            self._metrics.connection_closed(self.close_cause, self._loop.time() - self.opened_at)
            code = self.close_code if self.close_code is not None else self._peer_code
            code = code or 1005  # a close frame without a status code: 1005, "no status received" (section 7.4.1)
            log.info(
                "client %s disconnected (code %s%s)",
                self.id,
                code,
                f", {self.close_reason}" if self.close_reason else "",
                extra={"client_id": self.id, "remote": self.remote, "close_code": code},
            )

    async def _close(self, code: int, reason: str, patient: bool, answer: bool | None = None) -> None:
        """Send the close frame and await the handshake, all within `write_wait`; else abort the socket.

        `patient`: a writer still draining the socket (a peer that reads, slowly: a flooder reading its error
        replies) is let finish first, within the same deadline, so that the peer sees the reason it was closed
        for rather than a reset socket (1006). A peer closed for not reading (slow consumer, write timeout) gets no
        such wait: its writer is cancelled and, its socket still full, the socket is aborted at once.
        """
        writer = self._writer
        if not patient:
            if writer is not None and not writer.done() and writer is not asyncio.current_task():
                writer.cancel()
            if self._blocked or self._write_paused:  # the close frame would wait behind what it does not read
                self._transport.abort()
                return
        clean = False
        try:
            code, message = close_fields(code, reason)
            async with asyncio.timeout(self._write_wait):
                if writer is not None and not writer.done() and writer is not asyncio.current_task():
                    await asyncio.wait([writer])  # (the outbox was emptied by drop: it finishes its current write)
                await self._handshake(code, message, answer=patient if answer is None else answer)
            clean = True
        except (TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # (only our own cancellation spreads)
        finally:
            if not clean:
                if writer is not None and not writer.done() and writer is not asyncio.current_task():
                    writer.cancel()  # stuck on a peer that stopped reading
                self._transport.abort()  # close() would wait forever to flush to a stalled peer

    # --- writer and keepalive ----------------------------------------------------

    def queue_pong(self, payload: bytes) -> None:
        """Answer a client's ping without the reader ever waiting on a write: on the next loop turn, with the
        other pings of the same read, in one write (one system call per ping let the adversary's 43,000 pings
        in a read stall every client for up to a second).

        At most PONGS wait; past that only the latest ping is answered (RFC 6455 section 5.5.3 allows it), so
        a client that floods pings and never reads holds at most PONGS pongs (2 KiB), never a buffer that grows.
        """
        pongs = self._pongs
        if pongs is None:
            self._pongs = [payload]
            self._loop.call_soon(self._send_control)
        elif len(pongs) < PONGS:
            pongs.append(payload)
        else:
            pongs[-1] = payload

    def _send_control(self) -> None:
        """Write a due ping or pong straight to the socket, or leave it to the writer when it must wait."""
        transport = self._transport
        if self._blocked or transport.is_closing():
            self._need_writer()
            return
        self._write_control(transport)
        self._check_buffer(transport)

    def _write_control(self, transport: asyncio.WriteTransport) -> None:
        """Write the pending pongs and the due ping, if any, in one write."""
        frames = self._take_pongs()
        if self._ping_due:
            frames += PING_FRAME
            self._ping_due = False
        if frames:
            transport.write(frames)

    def _take_pongs(self) -> bytes:
        """The pending pongs' frames (b"": none), taken."""
        pongs, self._pongs = self._pongs, None
        return b"".join([control_frame(PONG_OPCODE, payload) for payload in pongs]) if pongs else b""

    def _answer_pings(self) -> None:
        """Before a close: write the pending pongs now, unless the socket is full (a ping read before the close
        is answered, RFC 6455 section 5.5.2; the next loop turn's write would find the socket closing)."""
        transport = self._transport
        if self._pongs is not None and not self._blocked and transport is not None and not transport.is_closing():
            transport.write(self._take_pongs())

    def _need_writer(self) -> None:
        """Make sure a writer task runs: one exists only while something has to wait (most clients: never)."""
        if self.state is State.OPEN and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write_loop(), name=f"wsgate-writer-{self.id}")

    async def _write_loop(self) -> None:
        """What may have to wait: a full socket, and control frames behind it; each bounded by write_wait."""
        write_wait, transport = self._write_wait, self._transport
        try:
            while True:
                if self._blocked:
                    async with asyncio.timeout(write_wait):  # the spec's write deadline
                        await self._drain()
                    self._blocked = False
                    self.flush()
                if self._pongs is not None or self._ping_due:
                    if transport.is_closing():
                        return
                    self._write_control(transport)
                    async with asyncio.timeout(write_wait):
                        await self._drain()
                if not (self._blocked or self._pongs is not None or self._ping_due):
                    return  # nothing left that waits: the next need starts a new writer
        except TimeoutError:
            self._metrics.error(errors.WRITE_TIMEOUT.label)
            log.warning(
                "client %s: a write did not complete in %ss; closing",
                self.id,
                write_wait,
                extra={"client_id": self.id},
            )
            self.drop(errors.WRITE_TIMEOUT)
        except ConnectionError:
            pass  # the peer is gone; connection_lost cleans up

    def _keepalive(self) -> None:
        """The keepalive's question (a callback, not a task): supervised by hand, it can never stop unseen."""
        try:
            self._keep_alive()
        except Exception:
            log.exception("client %s: the keepalive failed; closing", self.id, extra={"client_id": self.id})
            self._metrics.task_restarted("keepalive")
            self.drop(errors.KEEPALIVE_TIMEOUT)

    def _keep_alive(self) -> None:
        """Carry out the keepalive core's verdict (wsgate.keepalive: the rules, and why a stall is not silence)."""
        loop = self._loop
        verdict = self._alive.check(loop.time(), self.last_seen, busy=self.handling)
        action = verdict.action
        if action is Action.CLOSE:
            log.info(
                "client %s sent nothing for %ss and did not answer a ping; closing",
                self.id,
                round(loop.time() - self.last_seen, 3),
                extra={"client_id": self.id},
            )
            self.drop(errors.KEEPALIVE_TIMEOUT)
            return
        if action is Action.CONFIRM:  # what has arrived counts first: the reader takes it, then we ask again
            self._timer = loop.call_soon(self._reader_turn)
            return
        if action is Action.PING:
            self._ping_due = True
            self._send_control()
        self._timer = None
        if self.state is not State.CLOSED:
            self._tick = self._schedule.at(verdict.at, self)

    def _reader_turn(self) -> None:
        """One loop turn after a suspected silence: the socket's bytes are parsed in this one, the reader
        takes them in the next, and the keepalive asks again after it."""
        self._timer = self._loop.call_soon(self._keepalive)
