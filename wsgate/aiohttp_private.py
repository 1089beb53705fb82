"""The one place wsgate touches aiohttp's private or undocumented internals, each for want of a public API.

An aiohttp upgrade that changes one of them fails `tests/test_aiohttp_private.py`, naming the API, rather
than a test deep in the suite. What each use relies on, and why no public API serves:

- `web.Server.connection_made` / `connection_lost` (`watch_connections`): every `RequestHandler` calls them
  on its server (`self._manager`) when a socket is accepted and when it is gone, before any request is
  parsed. aiohttp has no public per-socket callback (signals and middlewares start at a parsed request).
- `RequestHandler._keepalive_handle`, `_next_keepalive_close_time`, `_process_keepalive`, `_request_count`
  (`close_unfinished_at`):
  a socket the front door hands over keeps the deadline it had from accept(), rather than a fresh keep-alive
  timeout from the hand-over (which would let a client take twice `security.request_timeout`).
- `BaseTestServer._make_runner` (`production_test_server`): `TestServer.start_server` builds an `AppRunner`
  with `handler_cancellation=True`; neither the runner's class nor that flag can be chosen publicly.
- The upgraded socket's hand-over (`take_over`, `Inbox`): after `WebSocketResponse.prepare`, the socket is moved
  from aiohttp's `RequestHandler` to the wsgate connection (`transport.set_protocol`), so that the request, its
  headers, the handler, its tasks and aiohttp's WebSocket reader objects are freed: an idle connection then
  holds only its socket, its transport and the connection (docs/performance.md, "Memory per connection").
  It relies on: `WebSocketResponse._post_start` (overridden: the upgrade installs wsgate's queue under aiohttp's
  parser, so that what a client sent with its handshake stays in order across the hand-over), the fields it
  sets (`_ws_protocol`, `_writer`, `_reader`) and reads (`_max_msg_size`, `_compress`), `RequestHandler.transport`
  (set to None, so aiohttp does not close the socket when the view returns), `RequestHandler._reading_paused`,
  `RequestHandler._manager` (`Server.connection_lost`, so the server forgets the handler), `WebSocketResponse.
  _writer` (the deflate writer, kept for a connection that negotiated compression, whose frames wsgate compresses
  and writes at once through its `_send_compressed_frame_sync`: `deflate_now`) and aiohttp's frame parser
  `aiohttp._websocket.reader.WebSocketReader` with its queue `WebSocketDataQueue` (subclassed: messages are
  handed to the connection as they are parsed, and queued, bounded in bytes, only while one is handled; its
  `_buffer`, `_protocol` and `read`). The upgrade's response is held back (`StreamResponse.
  _send_headers_immediately`, False, as aiohttp's own `Response` has it) and taken from aiohttp's `StreamWriter`
  (`_headers_buf`, `_headers_written`, `send_headers()`), so that the connection writes it with `connected` in
  one system call.
  aiohttp has no public way to detach an upgraded socket from its request handler.
- The handshake wsgate answers itself (`upgraded_here`, `http_date`, `SERVER`): the same frame parser and queue
  as `take_over`'s, and the `Date` and `Server` values of aiohttp's 101 (`aiohttp.helpers.rfc822_formatted_time`,
  `aiohttp.http.SERVER_SOFTWARE`), so that a 101 from `wsgate.frontdoor` is byte for byte aiohttp's.
- `GunicornWebWorker._get_valid_log_format` (`gunicorn_access_log_format`): how aiohttp's worker turns
  gunicorn's `--access-logformat` into aiohttp's (gunicorn's default becomes aiohttp's default; a
  gunicorn-style `%(name)s` format is refused with a ValueError). A worker that builds its own runner must
  do the same, and the conversion has no public form.

Where a public API exists wsgate uses it instead: `GatewayRunner` extends `AppRunner.setup()` and reads
`runner.server` (not `AppRunner._make_server`), and `GatewayWorker` hands aiohttp's worker an async
factory returning the runner from gunicorn's `load_wsgi` (not an override of `GunicornWebWorker._run`).

This module is at the bottom layer: it imports aiohttp only, and aiohttp's test utilities and gunicorn
worker only inside the function that needs them (neither is loaded by a production server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from aiohttp import WSMessage, WSMsgType, web
from aiohttp._websocket import reader as _ws_reader
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web import RequestHandler

if TYPE_CHECKING:
    from aiohttp.test_utils import TestServer
    from aiohttp.worker import GunicornWebWorker

SocketMade = Callable[[RequestHandler, asyncio.Transport], None]
SocketLost = Callable[[RequestHandler], None]
RunnerFactory = Callable[..., web.AppRunner]


def watch_connections(server: web.Server, made: SocketMade | None, lost: SocketLost) -> None:
    """Call `made(handler, transport)` (unless None) when `server` accepts a socket and `lost(handler)` when
    it is gone.

    `made` runs after aiohttp's own `Server.connection_made` (the handler is then in `server.connections`);
    `lost` runs before aiohttp's `Server.connection_lost`, which runs whatever `lost` raises. Both are
    called by the event loop, from `RequestHandler.connection_made` / `connection_lost`, once per socket,
    whatever its stage (headers under way, HTTP, WebSocket).

    Private: replaces the two methods on this Server instance (`RequestHandler` calls them through the
    instance, `self._manager`); aiohttp has no public hook that sees a socket before its request is parsed.
    """
    server_made, server_lost = server.connection_made, server.connection_lost

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        server_made(handler, transport)
        if made is not None:
            made(handler, transport)

    def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
        try:
            lost(handler)
        finally:
            server_lost(handler, exc)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]


def close_unfinished_at(handler: RequestHandler, deadline: float) -> None:
    """Make `handler` close its socket at loop time `deadline` if no complete request has come by then, instead
    of a whole keep-alive timeout after its `connection_made` (the socket was accepted earlier, by the front door).

    Private: `RequestHandler._keepalive_handle`, `_next_keepalive_close_time` and `_process_keepalive`, the timer
    `connection_made` starts (aiohttp's only protection against a socket that never completes a request), and
    `_request_count` (requests parsed on this socket); no public API sets when the timer fires.
    """
    handle = handler._keepalive_handle
    if handle is None:  # (no keep-alive timeout)
        return
    handle.cancel()
    handler._next_keepalive_close_time = deadline
    handler._keepalive_handle = asyncio.get_running_loop().call_at(deadline, _close_unfinished, handler)


def _close_unfinished(handler: RequestHandler) -> None:
    """At the deadline: closed if no request was ever parsed, whether or not its request loop has started (on
    Python 3.11 it starts in a task of its own, which a timer due at once may precede: aiohttp's own check would
    then see no waiter and never close it); otherwise aiohttp's own keep-alive check."""
    if handler._request_count == 0:
        handler._keepalive_handle = None
        handler.force_close()
    else:
        handler._process_keepalive()


def production_test_server(app: web.Application, runner: RunnerFactory, **kwargs: Any) -> TestServer:
    """aiohttp's `TestServer` for `app` (kwargs: its host, port, scheme), serving through
    `runner(app, **runner_kwargs)` and, as production servers do, with `handler_cancellation=False`.

    aiohttp's test server cancels a request's handler when its peer goes (`handler_cancellation`), which
    production servers never do, and which would hide what a gone client leaves running.

    Private: overrides `TestServer._make_runner`, which `start_server` calls with `handler_cancellation=True`
    (passing the flag again to `start_server` is a duplicate keyword); no public argument picks the runner.
    """
    from aiohttp.test_utils import TestServer

    class ProductionTestServer(TestServer):
        async def _make_runner(self, **runner_kwargs: Any) -> web.AppRunner:
            return runner(self.app, **{**runner_kwargs, "handler_cancellation": False})

    return ProductionTestServer(app, **kwargs)


def gunicorn_access_log_format(worker: GunicornWebWorker, gunicorn_format: str) -> str:
    """aiohttp's access log format for gunicorn's `--access-logformat` (`worker.cfg.access_log_format`).

    Raises ValueError (aiohttp's text) for a gunicorn-style `%(name)s` format other than gunicorn's default.
    Private: `GunicornWebWorker._get_valid_log_format`, what aiohttp's worker does for the runner it builds
    itself; a worker building its own runner must convert alike, and aiohttp offers no public conversion.
    """
    return worker._get_valid_log_format(gunicorn_format)


# --- the upgraded socket's hand-over ---------------------------------------------------------------------

QUEUE_LIMIT = 2**16
"""Bytes (aiohttp's accounting: each message's size plus 128) queued while a message is handled, before the
parser stops and the socket is no longer read: aiohttp's own default (`WebSocketResponse`'s reader)."""

_COMPILED = _ws_reader.WebSocketDataQueue.__module__.endswith("_c")  # aiohttp's C parser (else AIOHTTP_NO_EXTENSIONS)


class Receiver(Protocol):
    """What `Inbox` hands messages to: the wsgate connection (`wsgate.connection.Connection`)."""

    _reading_paused: bool

    def received(self, message: WSMessage) -> bool: ...
    def frame_error(self, error: BaseException) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Inbox(_ws_reader.WebSocketDataQueue):
    """aiohttp's parser's queue, for one connection.

    It queues from the upgrade on (aiohttp's handler pausing the socket when it is full), until `hand_to` gives
    it its connection. Then each message goes to the connection as it is parsed (`Receiver.received`), and is
    queued only while the connection is busy with one (`queuing`): aiohttp's own accounting bounds the queue in
    bytes (`QUEUE_LIMIT`), stops the parser and pauses reading the socket, and `next` takes the queued messages
    in order. The queue's buffer (a deque, about 600 bytes) is made only when a message is first queued: an
    connection that never sends while one of its messages is handled never pays for it. A parse error while
    queuing comes after the queued messages.
    """

    __slots__ = ("_receiver", "_flow", "queuing")

    def __init__(self, flow: Any) -> None:
        self._receiver: Receiver | None = None
        self._flow = flow  # what pauses and resumes reading: aiohttp's handler, then the connection
        self.queuing = True
        if not _COMPILED:  # the pure-Python queue reads its fields from the start
            super().__init__(flow, QUEUE_LIMIT, loop=asyncio.get_running_loop())

    def hand_to(self, receiver: Receiver) -> None:
        """From now on messages go to `receiver`, which also pauses and resumes reading."""
        self._receiver = self._flow = receiver
        if self._buffer is not None:
            self._protocol = receiver  # type: ignore[assignment]  # what aiohttp's queue uses of it: flow control

    def feed_data(self, data: Any, size: int) -> None:
        if self.queuing:
            self.start_queuing()
            super().feed_data(data, size)
        elif self._receiver is not None and self._receiver.received(data):  # busy with it: queue what follows
            self.queuing = True  # (the buffer is made if something is queued)

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        if self.queuing or self._receiver is None:
            self.start_queuing()
            super().set_exception(exc)
        else:
            self._receiver.frame_error(exc)

    def feed_eof(self) -> None:
        """aiohttp's handler's end; the connection learns of its socket's end from the transport itself."""

    def start_queuing(self) -> None:
        if self._buffer is None:
            _ws_reader.WebSocketDataQueue.__init__(self, self._flow, QUEUE_LIMIT, loop=asyncio.get_running_loop())
        self.queuing = True

    def has_queued(self) -> bool:
        """Whether messages (or a parse error) wait in the queue."""
        return bool(self._buffer) or (self._buffer is not None and self.exception() is not None)

    async def next(self) -> WSMessage | None:
        """The next queued message (never waits), or None once none is left: queuing stops. A parse error
        met while queuing is raised after the messages before it (aiohttp's WebSocketError)."""
        if self.has_queued():
            return await self.read()  # type: ignore[return-value]  # decode_text: a text message's data is str
        self.queuing = False
        return None


class Upgraded(NamedTuple):
    parser: Any  # aiohttp's WebSocketReader: `feed_data(bytes)`
    inbox: Inbox
    deflate: Any  # aiohttp's WebSocketWriter for a connection that negotiated permessage-deflate, else None
    paused: bool  # aiohttp's handler had paused reading the socket (its queue was full)
    head: bytes  # the upgrade's response (101) not yet written: the receiver writes it before its first frame


def held_head(ws: DetachedResponse) -> bytes:
    """Take the upgrade's response that `ws.prepare` serialized but did not write (b"" when it was written)."""
    writer: Any = ws._payload_writer
    head = writer._headers_buf  # (an AttributeError, not a silent b"", if aiohttp renames it: no 101 would go)
    if not head or writer._headers_written:
        return b""
    writer._headers_buf = None
    writer._headers_written = True
    return bytes(head)


def take_over(request: web.BaseRequest, ws: DetachedResponse, receiver: Receiver) -> Upgraded:
    """Move the socket of `request`, upgraded by `ws.prepare`, from aiohttp to `receiver` (an asyncio.Protocol):
    from now on the transport calls `receiver`, the view may return at once (aiohttp neither closes the socket
    nor sends a close frame: see `DetachedResponse`), and the handler, the request and `ws` are freed.

    Must be called without an await since `ws.prepare` returned. The parser and its queue are the ones the
    upgrade installed (`DetachedResponse._post_start`): what a client sent with its handshake, parsed or not, is
    kept, in order. The upgrade's response, not written yet, comes back in `Upgraded.head` for the receiver to
    write before its first frame (one system call for the 101 and `connected`); under permessage-deflate, whose
    frames go through aiohttp's writer, it is written here.
    """
    handler = request.protocol
    transport = request.transport
    assert transport is not None and handler is not None and ws.inbox is not None
    ws.detached = True
    ws.inbox.hand_to(receiver)
    paused = bool(handler._reading_paused)
    transport.set_protocol(receiver)  # type: ignore[arg-type]
    deflate = ws._writer if ws.compress else None
    if deflate is not None:
        ws.send_head()
        deflate.protocol = receiver  # type: ignore[assignment]  # (not the handler: it is freed)
    handler.transport = None  # aiohttp closes its handler's transport when the view returns: no longer its own
    manager = handler._manager
    if manager is not None:
        manager.connection_lost(handler, None)  # the server forgets the handler (once its task has ended)
    return Upgraded(ws.parser, ws.inbox, deflate, paused, held_head(ws))


def deflate_now(writer: Any, payload: bytes, opcode: int) -> None:
    """Compress `payload` and write it as one frame through `writer` (the deflate writer `take_over` kept), now,
    on the event loop: `WebSocketWriter._send_compressed_frame_sync`, as aiohttp does itself for payloads up to
    16 KiB (above, its `send_frame` compresses in its executor, in a task a cancellation cannot stop, and the
    frames wait meanwhile: counted as a slow client's). ClientConnectionResetError once the transport closes."""
    writer._send_compressed_frame_sync(payload, opcode, None)


def upgraded_here(receiver: Receiver, max_msg_size: int, head: bytes) -> Upgraded:
    """What `take_over` gives, for a socket whose handshake wsgate answered itself (`wsgate.frontdoor`): aiohttp's
    frame parser over a queue already handed to `receiver`, no deflate (never negotiated there), and the 101
    (`head`) for the receiver to write with its first frame."""
    inbox = Inbox(receiver)
    inbox.hand_to(receiver)
    parser = _ws_reader.WebSocketReader(inbox, max_msg_size, compress=False, decode_text=True)
    return Upgraded(parser, inbox, None, False, head)


def http_date() -> str:
    """The `Date` header's value aiohttp writes now (`helpers.rfc822_formatted_time`, cached per second)."""
    return rfc822_formatted_time()


SERVER = SERVER_SOFTWARE
"""The `Server` header's value aiohttp writes (`aiohttp.http.SERVER_SOFTWARE`)."""


class DetachedResponse(web.WebSocketResponse):
    """A WebSocketResponse whose socket `take_over` moves to a wsgate connection.

    Its upgrade installs wsgate's queue (`Inbox`) under aiohttp's parser (`_post_start`, aiohttp's own but for
    the queue, and without aiohttp's heartbeat: wsgate's keepalive is the connection's). Its response (the 101)
    is held back until `take_over` hands it to the connection, or until the first frame aiohttp sends itself.
    aiohttp's end of the request (`write_eof`) then neither sends a close frame nor touches the socket, no
    longer aiohttp's. Before the hand-over (a refusal at capacity, a drain), `send_frame` and `close` work as
    aiohttp's, after the 101.
    """

    _send_headers_immediately = False  # (written with the first frames: `take_over`, `send_head`)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.detached = False
        self.inbox: Inbox | None = None
        self.parser: Any = None

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        self.inbox = Inbox(request.protocol)
        self._reader = self.inbox
        self.parser = _ws_reader.WebSocketReader(
            self.inbox, self._max_msg_size, compress=bool(self._compress), decode_text=True
        )
        request.protocol.set_parser(self.parser)
        request.protocol.keep_alive(False)

    def send_head(self) -> None:
        """Write the held response now (before a frame aiohttp sends itself); nothing once it is written."""
        if self._payload_writer is not None:
            self._payload_writer.send_headers()

    async def send_frame(self, message: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        self.send_head()
        await super().send_frame(message, opcode, compress)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        self.send_head()
        if self.inbox is not None:
            self.inbox.start_queuing()  # (aiohttp reads the client's close frame from it)
        return await super().close(code=code, message=message, drain=drain)

    async def write_eof(self) -> None:  # type: ignore[override]
        if not self.detached:
            await super().write_eof()
