"""The front door: every accepted socket's first protocol, before aiohttp's.

It does two things for every socket, whatever comes next:

- **The address limit.** `websocket.limits.max_connections_per_ip` counts sockets from accept() on, whatever
  their stage (headers under way, HTTP, WebSocket): one over the limit gets
  `429 {"error": "too many connections from this address"}` at once and is closed (slowloris: aiohttp counts
  nothing before a request is parsed).
- **The plain WebSocket upgrade.** When the first bytes read are the plain opening handshake of `/ws`
  (`wsgate.handshake.read_opening`) and nothing about it needs aiohttp's request (no authentication plugin,
  no `security.allowed_hosts`, no compression, no custom access logger class; an allowed origin; room on the
  server), the front door answers it itself: the same 101, the same connection, the same `connected`, the
  same access log line, without aiohttp's request handler, request, routing, response and their tasks. That
  is most of what a connect costs (docs/performance.md, "Connect rate").

Everything else (HTTP, a refused or unusual handshake, a handshake split over two reads) is handed, with the
bytes read, to aiohttp's request handler, which answers as it always has: the view (`wsgate.views.ws_view`)
makes every decision the front door declined to. A socket that sends nothing is closed after
`security.request_timeout`, as aiohttp closes one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress
from typing import Any, NamedTuple, cast

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.web import RequestHandler
from aiohttp.web_log import AccessLogger
from multidict import CIMultiDict

from . import protocol
from .aiohttp_private import SERVER, close_unfinished_at, http_date, upgraded_here, watch_connections
from .errors import ClientError
from .handshake import Opening, read_opening, switching_protocols
from .keys import HUB, METRICS, PLUGINS, SCHEDULE, SETTINGS
from .origins import origin_allowed
from .views import SESSIONS, WS_PATH, new_connection

log = logging.getLogger(__name__)

TOO_MANY_FROM_ADDRESS = "too many connections from this address"
_REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
)
REFUSAL_LINGER = 1.0  # seconds a refused socket stays open so its peer can read the 429


class FrontDoors:
    """The protocol factory a `GatewayRunner`'s sites listen with: a `FrontDoor` per accepted socket, in front of
    aiohttp's `web.Server` (`server`, whose request handlers it hands sockets to).

    Reading an attribute it lacks reads the server's (`requests_count`, `connections`, ...): aiohttp's sites and
    gunicorn worker, and tests, use `runner.server` as the `web.Server` it is.
    """

    def __init__(self, app: web.Application, server: web.Server, access: AccessLog) -> None:
        self.server = server
        self.app = app
        settings = app[SETTINGS]
        plugins = app[PLUGINS]
        self.hub, self.metrics, self.schedule, self.sessions = app[HUB], app[METRICS], app[SCHEDULE], app[SESSIONS]
        self.request_timeout = settings.security.request_timeout
        self.allowed_origins = settings.security.allowed_origins
        self.max_message_size = settings.websocket.max_message_size
        self._access: AccessLogger | None = None
        self.answers = (  # what the front door may decide alone; any other case is the view's
            settings.websocket.enabled
            and not settings.websocket.compression
            and not settings.security.allowed_hosts
            and not settings.auth.required
            and not plugins.authenticates
            and not app.middlewares  # (an embedding application's own)
            and all(_cors(prepare) for prepare in app.on_response_prepare)  # (idem: it may add headers to a 101)
            and access.own_class  # (a custom access logger class may read anything of aiohttp's request)
        )
        if self.answers and access.logger is not None:
            try:
                self._access = AccessLogger(access.logger, access.format)
            except Exception:  # a format aiohttp cannot use: its handler fails alike on every request
                self.answers = False
        self.pending: set[FrontDoor] = set()  # sockets whose first bytes have not come yet
        self.welcoming: set[asyncio.Task[None]] = set()  # `Sessions.welcome` of the connections upgraded here
        self.upgraded = 0  # handshakes answered here
        watch_connections(server, None, self._lost)

    def __call__(self) -> FrontDoor:
        return FrontDoor(self)

    @property
    def requests_count(self) -> int:
        """Requests served: aiohttp's and the upgrades answered here (gunicorn's `--max-requests` reads it)."""
        return self.server.requests_count + self.upgraded

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def close_pending(self) -> None:
        """Close every socket still waiting for its first bytes (the server is stopping)."""
        for door in list(self.pending):
            door.close()

    def upgrade(self, transport: asyncio.Transport, data: bytes, address: str) -> bool:
        """Answer the plain opening handshake in `data` (see the module); False, with nothing done, for
        anything else."""
        hub = self.hub
        started = asyncio.get_running_loop().time() if self._access is not None else 0.0
        if not self.answers or hub.draining or hub.full or (opening := read_opening(data, WS_PATH)) is None:
            return False
        try:
            version = protocol.negotiate(opening.protocol)
        except ClientError:
            return False  # (the view's 400 says why)
        if opening.origin is not None and not origin_allowed(opening.origin, opening.host, self.allowed_origins):
            return False  # (the view's 403, or the dashboard's own page)
        head = switching_protocols(opening.key, http_date(), SERVER)
        conn = new_connection(self.app, transport, address, None, version, compressed=False)  # (the view's remote)
        upgraded = upgraded_here(conn, self.max_message_size, head)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            with suppress(OSError):  # (a socket the peer reset: aiohttp's tcp_keepalive passes it too)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as aiohttp's handler
        if not hub.admit(conn):
            return False
        try:
            transport.set_protocol(conn)
            hooks = self.sessions.begin(conn, upgraded, address)
        except BaseException:  # a defect: nothing of this client may stay (its end never runs: not attached)
            hub.remove(conn)
            self.sessions.live.discard(conn)
            hub.release_address(address)
            transport.set_protocol(Abandoned())
            raise
        self.upgraded += 1
        if self._access is not None and self._access.enabled:
            took = asyncio.get_running_loop().time() - started  # (aiohttp's: from the request to its response)
            self._access.log(Handshake(address, opening), Answer(head), took)  # type: ignore[arg-type]
        if hooks:
            welcome = asyncio.get_running_loop().create_task(self.sessions.welcome(conn))
            self.welcoming.add(welcome)  # (the loop keeps only a weak reference to a task)
            welcome.add_done_callback(self.welcoming.discard)
        if len(data) > opening.length:  # frames sent with the handshake (held, while welcomed, as the view's)
            conn.data_received(data[opening.length :])
        return True

    def hand_over(self, transport: asyncio.Transport, data: bytes, address: str, deadline: float | None) -> None:
        """Give the socket, and `data` read from it, to a new aiohttp request handler, which closes it at loop
        time `deadline` (None: `request_timeout` from now) unless a complete request has come by then."""
        handler = self.server()
        self.hub.claimed[handler] = address  # (released with the handler: `_lost`)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if deadline is not None:
            close_unfinished_at(handler, deadline)
        if data:
            handler.data_received(data)

    def refuse(self, transport: asyncio.Transport) -> None:
        """The 429 for a socket over its address's limit, then FIN; closed when its peer closes or resets it (what
        it sends is read and dropped, so that its end is seen), at the latest after `REFUSAL_LINGER`. Called by
        the event loop: nothing may escape (a peer that reset first is aborted at once)."""
        self.metrics.error("address_limit")  # counted, not logged: a storm must not flood the log too
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)
        body = b'{"error": "%s"}' % TOO_MANY_FROM_ADDRESS.encode()
        try:
            transport.write(_REFUSAL % (len(body), body))
            if transport.can_write_eof():
                transport.write_eof()  # the answer, then FIN: closing at once would reset it away
        except (OSError, RuntimeError):  # the peer reset it first (ENOTCONN from shutdown()): nobody to answer
            transport.abort()

    def _lost(self, handler: RequestHandler) -> None:
        address = self.hub.claimed.pop(handler, None)  # (an upgraded socket's claim went with it to its connection)
        if address is not None:
            self.hub.release_address(address)


def _cors(prepare: Any) -> bool:
    """Whether an `on_response_prepare` handler is aiohttp-cors's (wsgate's CORS for its HTTP endpoints, which
    leaves `/ws`, not a CORS resource, alone)."""
    return type(getattr(prepare, "__self__", None)).__module__.startswith("aiohttp_cors.")


class AccessLog(NamedTuple):
    """The runner's access log: aiohttp's `access_log` logger (None: off), its `access_log_format`, and whether
    its `access_log_class` is aiohttp's own `AccessLogger` (the only one the front door may call)."""

    logger: logging.Logger | None
    format: str
    own_class: bool


class Handshake:
    """What aiohttp's `AccessLogger` reads of a request (`%a`, `%r`, `%{Name}i`), for a handshake answered at
    the front door: its line is then the one aiohttp writes for the same request."""

    __slots__ = ("remote", "path_qs", "headers")
    method = "GET"
    version = HttpVersion11

    def __init__(self, address: str, opening: Opening) -> None:
        self.remote = address
        self.path_qs = opening.target
        self.headers = CIMultiDict(opening.headers)


class Answer:
    """What aiohttp's `AccessLogger` reads of a response (`%s`, `%b`, `%{Name}o`): the 101 written (`head`)."""

    __slots__ = ("headers",)
    status = 101
    body_length = 0

    def __init__(self, head: bytes) -> None:
        lines = head.decode("ascii").split("\r\n")[1:-2]
        self.headers = CIMultiDict(line.partition(": ")[::2] for line in lines)


class Abandoned(asyncio.Protocol):
    """The protocol of a socket the front door failed on, aborted: what it still reports goes nowhere."""


class FrontDoor(asyncio.Protocol):
    """One accepted socket until its first bytes: claimed against its address, then upgraded here or handed to
    aiohttp (`FrontDoors`). `due` is the request timeout (the shared schedule's callback)."""

    __slots__ = ("_doors", "_transport", "_address", "_tick", "_deadline")

    def __init__(self, doors: FrontDoors) -> None:
        self._doors = doors
        self._transport: asyncio.Transport | None = None
        self._address: str | None = None  # claimed (`Hub.claim_address`) while this protocol holds the socket
        self._tick: int | None = None
        self._deadline = 0.0  # loop time: `security.request_timeout` after accept()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        doors = self._doors
        transport = self._transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass of it)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else ""
        if not doors.hub.claim_address(address):
            doors.refuse(transport)
            return
        if not doors.answers:  # nothing to decide here: aiohttp's handler from the start (its timeouts too)
            doors.hand_over(transport, b"", address, None)
            return
        self._address = address
        self._deadline = asyncio.get_running_loop().time() + doors.request_timeout
        self._tick = doors.schedule.at(self._deadline, self)
        doors.pending.add(self)

    def data_received(self, data: bytes) -> None:
        transport, address = self._transport, self._address
        if transport is None or address is None:
            return  # refused: its bytes are dropped
        self._leave()
        doors = self._doors
        try:
            if not doors.upgrade(transport, data, address):
                doors.hand_over(transport, data, address, self._deadline)  # (its deadline runs from accept())
        except Exception:  # a defect: this client is closed (its claim released), the server goes on
            log.exception("the front door failed on a handshake from %s", address)
            if transport.get_protocol() is self:  # (else `upgrade` or the handler released it already)
                doors.hub.release_address(address)
            transport.abort()

    def eof_received(self) -> bool | None:
        return None  # closed before a request: the transport closes, connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        address = self._address
        self._leave()
        if address is not None:
            self._doors.hub.release_address(address)

    def due(self) -> None:
        """`security.request_timeout` passed without a byte: closed, as aiohttp closes such a socket (its claim
        is released when the socket is gone: `connection_lost`)."""
        self._tick = None
        self.close()

    def close(self) -> None:
        """Close the socket before its first bytes (`due`, or the server stopping)."""
        if self._tick is not None:
            self._doors.schedule.cancel(self._tick, self)
            self._tick = None
        self._doors.pending.discard(self)
        if self._transport is not None:
            self._transport.close()

    def _leave(self) -> None:
        """This protocol no longer holds the socket (upgraded, handed over, or gone): its claim moves on."""
        if self._tick is not None:
            self._doors.schedule.cancel(self._tick, self)
            self._tick = None
        self._doors.pending.discard(self)
        self._address = None
