"""An asyncio client for wsgate that stays connected and loses nothing it can recover.

    async with GatewayClient("ws://localhost:8081/ws") as client:
        await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for message in client:
            print(message["data"])

It reconnects after any disconnection (exponential backoff with full jitter, so
a fleet of clients does not return in one storm), subscribes again to its rooms
and, for rooms that keep history, asks for what it missed (`since` its last
offset). A re-subscription that could not recover is passed on as the
`subscribed` message itself, with `"recovered": false`: the application must
reload that room's state.

With `get_token` (a function, sync or async, returning a JWT), every connection
asks it for a token, and the client refreshes the token by itself before it
expires (`connected` says when): the gateway would otherwise close the
connection with 4001 "token expired". Rooms the new token no longer allows are
left by the gateway; their `unsubscribed` messages are passed on.

The server may subscribe the client to rooms, or take it out of them (docs/protocol.md, "Server-side
subscriptions"): those `subscribed` and `unsubscribed` messages (`"server": true`) are passed on. The client does
not subscribe again by itself to rooms the server subscribed it to: after a reconnection, the token's `subs`
subscribe it again, and a service that used the HTTP API sends its command again.

Every request (`subscribe`, `unsubscribe`, `history`, `ping`, the token's `refresh`) carries an `id` (a
counter) and is answered by the reply with the same `id` (docs/protocol.md, "Request ids"); several may wait
at once. A request not answered within `request_timeout` seconds raises `RequestTimeout`. `publish` and
`broadcast` wait for nothing and carry no id: an `error` they cause is passed on to the application (it
answers no request), never to another request. A reply whose id no request waits for (it came after its
request timed out) is dropped, logged at debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final

import aiohttp
from yarl import URL

from ..history import Position, later_epoch

log = logging.getLogger(__name__)

TRANSIENT = frozenset({"history is unavailable", "presence is unavailable"})
"""Errors a re-subscription answers while the gateway's store is away, by text (a gateway that speaks only the
guide's protocol sends no `temporary`): tried again with backoff, not given up."""
PROTOCOL = 2
"""The protocol version the client asks for (`/ws?protocol=2`, docs/protocol.md "Protocol versions"); a gateway
that predates versions ignores the parameter and speaks the guide's."""
RECONNECT_BY_CODE = {1000: "backoff", 1001: "backoff", 1002: "backoff", 1007: "backoff", 1008: "backoff",
                     1009: "backoff", 1011: "backoff", 1012: "now", 1013: "backoff", 4001: "now"}  # fmt: skip
"""What to do after a close whose reason gives no advice (`wsgate.errors.CLOSE_CODES`, the registry; a test
keeps the two equal). A code not listed: backoff."""
_ADVICE = re.compile(r" \[reconnect=(no|backoff|now)\]$")
MAX_DOUBLINGS = 60
"""The backoff doubles at most this often (2**1024 overflows a float: an outage of hours would end the loop)."""
_REFUSED_FOR_GOOD = frozenset({400, 401, 403, 404, 405, 426})
"""Handshake refusals the same request would get again (a bad token, a bad URL, the endpoint off)."""


def reconnect_advice(code: int | None, reason: str) -> str:
    """`no`, `backoff` or `now`: the advice at the end of a protocol 2 close reason, else the registry's for
    `code` (None: the connection was lost without a close frame, 1006: backoff)."""
    advised = _ADVICE.search(reason)
    if advised is not None:
        return advised.group(1)
    return RECONNECT_BY_CODE.get(code or 1006, "backoff")


REFRESH_MARGIN = 0.2  # refresh when this share of a token's remaining life is left (at least 1 s before, at most 60 s)
TokenSource = Callable[[], "str | Awaitable[str]"]


class GatewayError(Exception):
    """The gateway answered a request with an `error` message; `text` is its `error`, `detail` its detail,
    `code` its stable number and `temporary` whether trying again can help (None from a gateway that does not
    send them: docs/protocol.md, "Error codes")."""

    def __init__(
        self, text: str, detail: str | None = None, code: int | None = None, temporary: bool | None = None
    ) -> None:
        super().__init__(text if detail is None else f"{text}: {detail}")
        self.text = text
        self.detail = detail
        self.code = code
        self.temporary = temporary

    @classmethod
    def of(cls, message: dict[str, Any]) -> GatewayError:
        """The GatewayError an `error` message says."""
        return cls(message["error"], message.get("detail"), message.get("code"), message.get("temporary"))

    @property
    def transient(self) -> bool:
        """Whether trying the same request again later can succeed (`temporary`, or a known transient text)."""
        return self.temporary if self.temporary is not None else self.text in TRANSIENT


_STOPPED: Final[dict[str, Any]] = {"type": "stopped"}
"""Put in the inbox once the client stopped for good: `receive` raises GatewayClosed from then on."""


def _room_error(room: str, exc: GatewayError) -> dict[str, Any]:
    """The `error` passed on for a room a re-subscription could not join (with the room it concerns)."""
    message: dict[str, Any] = {"type": "error", "room": room, "error": exc.text, "detail": exc.detail}
    if exc.code is not None:
        message.update(code=exc.code, temporary=exc.temporary)
    return message


class GatewayClosed(ConnectionError):
    """The gateway closed the connection and said not to come back (`[reconnect=no]`, or a code whose advice is
    `no`: an operator's or the server's disconnect), or refused the handshake for good (a bad token with no
    `get_token`, HTTP 4xx): the client stopped. `code` is the close code (or HTTP status), `reason` its reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the gateway closed the connection ({code} {reason}) and said not to reconnect")
        self.code = code
        self.reason = reason


class RequestTimeout(TimeoutError):
    """No reply to a request within the client's `request_timeout` (seconds)."""


class GatewayClient:
    """See the module docstring. Not thread-safe; one per event loop."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        backoff: tuple[float, float] = (0.1, 10.0),
        request_timeout: float = 10.0,
        queue_size: int = 10_000,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        """Tried in turn: after a disconnection the client moves on to the next (another node)."""
        self.url = self.urls[0]
        self.client_id: str | None = None
        self.user_id: str | None = None
        self.positions: dict[str, Position] = {}
        """The last offset seen in each room that keeps history: where a reconnect resumes. It only moves forward
        (`_advance`): a copy of an earlier message never takes it back, so nothing is replayed twice."""
        self.connects = 0
        """How many times a connection was established (1 + the reconnections)."""
        self._token = token
        self._get_token = get_token
        self.expires_at: float | None = None
        """When the connection's token expires (Unix seconds), from `connected` or `refreshed`."""
        self.refreshes = 0
        """How many times the token was refreshed on an open connection."""
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._session = session
        self._own_session = session is None
        self._rooms: set[str] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._ids = itertools.count(1)  # request ids: each reply names its request
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}  # requests waiting for a reply, by id
        self._last_reason = ""  # the reason of the close frame that ended the connection
        self.stopped: GatewayClosed | None = None
        """Why the client stopped for good (the gateway said not to come back); None while it goes on."""
        self.protocol: int = 1
        """The protocol version the gateway speaks on this connection (`connected.data.protocol`; 1 when absent)."""

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start the connection loop and wait (at most `request_timeout`) for the first connection."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="wsgate-client")
        await self.connected()

    async def connected(self) -> None:
        """Wait until the client is connected and subscribed again to its rooms; GatewayClosed once it stopped."""
        if self.stopped is not None:
            raise self.stopped
        async with asyncio.timeout(self._request_timeout):
            await self._connected.wait()
        if self.stopped is not None:
            raise self.stopped

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._own_session and self._session is not None:
            await self._session.close()

    # --- requests ---------------------------------------------------------------------

    async def subscribe(self, room: str) -> dict[str, Any]:
        """Join `room` (and again after every reconnect); returns the `subscribed` data."""
        self._rooms.add(room)
        await self.connected()
        return await self._subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)
        self.positions.pop(room, None)
        await self._request({"type": "unsubscribe", "room": room})

    async def publish(self, room: str, data: Any, *, idempotency_key: str | None = None) -> None:
        """Send to `room` (the client must be subscribed to it); its own copy arrives like any other.

        `idempotency_key` (1 to 64 characters): publishing again with the same key (after `publish outcome
        unknown`, or a lost connection) within the gateway's `publish.idempotency_window` delivers it to the
        room once; a retry whose key was used is answered with nothing (the first's delivery is this client's
        copy). The keys are the user's (the token's `sub`), or this connection's when anonymous
        (docs/protocol.md, "idempotency_key")."""
        message: dict[str, Any] = {"type": "publish", "room": room, "data": data}
        if idempotency_key is not None:
            message["idempotency_key"] = idempotency_key
        await self._send(message)

    async def broadcast(self, data: Any) -> None:
        await self._send({"type": "broadcast", "data": data})

    async def history(self, room: str, limit: int | None = None, *, before: int | None = None) -> dict[str, Any]:
        """The last `limit` kept messages of `room` (below offset `before`, when given) and its position (the
        `history` answer's data); at most `history.max_answer_bytes` of them: page back with `before`."""
        request: dict[str, Any] = {"type": "history", "room": room}
        if limit is not None:
            request["limit"] = limit
        if before is not None:
            request["before"] = before
        answer = await self._request(request)
        data: dict[str, Any] = answer["data"]
        return data

    async def ping(self) -> float:
        """Round-trip time of a `ping`, in milliseconds (as the JavaScript client's and every `timestamp`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request({"type": "ping"})
        return (loop.time() - started) * 1000

    # --- receiving --------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """The next message for the application (room messages, broadcasts, failed recoveries, extensions);
        GatewayClosed once the client stopped for good and everything before was taken."""
        message = await self._inbox.get()
        if message is _STOPPED:
            self._inbox.put_nowait(message)  # (for the next reader too)
            assert self.stopped is not None
            raise self.stopped
        return message

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        """Every message, until the client stops for good (the iteration then ends; `stopped` says why)."""
        while True:
            try:
                yield await self.receive()
            except GatewayClosed:
                return

    # --- internals --------------------------------------------------------------------

    async def _subscribe(self, room: str) -> dict[str, Any]:
        request: dict[str, Any] = {"type": "subscribe", "room": room}
        since = self.positions.get(room)
        if since is not None:
            request["since"] = {"offset": since.offset, "epoch": since.epoch}
        answer = await self._request(request)
        data: dict[str, Any] = answer["data"]
        if "epoch" in data and since is not None and not data.get("recovered"):  # (its history lost a tail, say)
            self.positions[room] = Position(data["offset"], data["epoch"])  # where the room stands, even if back
        elif "epoch" in data and since is None:
            self._advance(room, data["offset"], data["epoch"], announced=True)  # from here on, nothing missed
        if since is not None and not data.get("recovered"):
            await self._inbox.put(answer)  # the application must reload this room
        return data

    def _advance(self, room: str, offset: int, epoch: str, *, announced: bool = False) -> None:
        """Move `room`'s position to (`offset`, `epoch`) if that is forward: a room without one takes it; else the
        same epoch with a higher offset, or a later epoch (`history.later_epoch`: the room's history began
        again), or, `announced` (a `subscribed` answer: where the room stands now), any other epoch. A copy of an
        earlier message, or a `subscribed` answer racing live messages, never moves it back."""
        current = self.positions.get(room)
        if (
            current is None
            or (epoch == current.epoch and offset > current.offset)
            or (epoch != current.epoch and (announced or later_epoch(epoch, current.epoch)))
        ):
            self.positions[room] = Position(offset, epoch)

    async def _send(self, obj: dict[str, Any]) -> None:
        await self.connected()
        assert self._ws is not None
        await self._ws.send_str(json.dumps(obj))

    async def _request(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Send `obj` with the next request id and return the reply with that id; GatewayError when it is an
        `error`, RequestTimeout after `request_timeout` seconds, ConnectionResetError when the connection goes."""
        request_id = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            if self._ws is None:
                raise ConnectionResetError("not connected")
            await self._ws.send_str(json.dumps({**obj, "id": request_id}))
            try:
                async with asyncio.timeout(self._request_timeout):
                    reply = await answer
            except TimeoutError:
                raise RequestTimeout(
                    f"no reply to {obj['type']!r} (id {request_id}) within {self._request_timeout:g} s"
                ) from None
        finally:
            del self._pending[request_id]
        if reply["type"] == "error":
            raise GatewayError.of(reply)
        return reply

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Route one message; False when the application should see it."""
        kind, room = message.get("type"), message.get("room")
        offset, epoch = message.get("offset"), message.get("epoch")
        if isinstance(room, str) and isinstance(offset, int) and isinstance(epoch, str):  # a published message
            self._advance(room, offset, epoch)  # (of any type: the HTTP API's may name its own)
        if "id" in message:  # a reply: to the request with its id, if one still waits
            request_id = message["id"]
            answer = self._pending.get(request_id) if isinstance(request_id, int) else None
            if answer is not None and not answer.done():
                answer.set_result(message)
                return True
            # a plugin's push with an id of its own, a handler's second reply, a reply after its timeout: the
            # application sees it like any other message
            log.debug("wsgate client: no request waits for this id, passed on: %r", message)
        if kind == "unsubscribed" and room is not None:  # not asked for: the gateway took it out (a refresh)
            self._rooms.discard(room)
            self.positions.pop(room, None)
            return False
        if message.get("server") is True:  # the server's own subscribed (docs/protocol.md): the application's news
            return False
        return kind in ("pong", "subscribed", "history", "connected", "refreshed")

    async def _run(self) -> None:
        attempt = 0
        refused: set[str] = set()  # the URLs that refused the handshake for good since the last connection
        loop = asyncio.get_running_loop()
        came_back_at_once = -math.inf  # when the client last reconnected without waiting (loop time)
        for turn in itertools.count():
            if self._closing:
                return
            self.url = self.urls[turn % len(self.urls)]
            self._last_reason = ""
            socket: aiohttp.ClientWebSocketResponse | None = None
            opened_at: float | None = None  # when `connected` came (loop time)
            try:
                assert self._session is not None
                try:
                    token = await self._token_now()
                except Exception:  # the application's get_token failed: try again after the backoff
                    log.exception("wsgate client: get_token failed")
                    raise ConnectionError("no token") from None
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                url = URL(self.url).update_query(protocol=PROTOCOL)
                async with self._session.ws_connect(url, headers=headers) as ws:
                    socket = ws
                    first = await ws.receive(timeout=self._request_timeout)
                    if first.type is not aiohttp.WSMsgType.TEXT:  # closed before `connected` (a full node, a plugin)
                        self._last_reason = first.extra or "" if first.type is aiohttp.WSMsgType.CLOSE else ""
                        raise ConnectionError(f"closed before connected ({ws.close_code} {self._last_reason})")
                    hello = json.loads(first.data)
                    self.client_id = hello["data"]["client_id"]
                    self.user_id = hello["data"].get("user_id")
                    self.protocol = hello["data"].get("protocol", 1)
                    expires_at = hello["data"].get("expires_at")
                    self.expires_at = expires_at / 1000 if expires_at is not None else None
                    self._ws = ws
                    self.connects += 1
                    opened_at = loop.time()
                    refused.clear()
                    reader = asyncio.create_task(self._read(ws))
                    refresher = asyncio.create_task(self._refresh_loop()) if self._get_token else None
                    retrier = None
                    try:
                        later = []
                        for room in sorted(self._rooms):
                            try:
                                await self._subscribe(room)
                            except GatewayError as exc:  # one room failing must not keep the others out
                                log.warning("wsgate client: subscribing again to %r failed: %s", room, exc)
                                if exc.transient:
                                    later.append(room)  # (Redis away: the gateway will keep it again soon)
                                else:
                                    await self._inbox.put(_room_error(room, exc))
                        self._connected.set()
                        if later:
                            retrier = asyncio.create_task(self._subscribe_later(later))
                        await reader
                    finally:
                        for task in (reader, refresher, retrier):
                            if task is not None:
                                task.cancel()
                                with contextlib.suppress(asyncio.CancelledError, Exception):
                                    await task
            except aiohttp.WSServerHandshakeError as exc:
                log.info("wsgate client: %s refused the connection: %s %s", self.url, exc.status, exc.message)
                if exc.status in _REFUSED_FOR_GOOD and not (exc.status in (401, 403) and self._get_token):
                    refused.add(self.url)  # the same request would be refused again: stop once every URL did
                    if refused >= set(self.urls):
                        self.stopped = GatewayClosed(exc.status, exc.message)
            except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                log.info("wsgate client: connection to %s failed or ended: %r", self.url, exc)  # (a garbled hello too)
            finally:
                self._ws = None
                self._connected.clear()
                self._fail_pending()
            advice = "backoff"
            if opened_at is not None and loop.time() - opened_at >= self._backoff[1]:
                attempt = 0  # it lasted: the next attempt starts from the shortest delay again
            if socket is not None:  # (however the connection ended: a close during the re-subscription too)
                code, reason = socket.close_code, self._last_reason
                advice = reconnect_advice(code, reason)
                log.info("wsgate client: %s closed the connection (%s %s): %s", self.url, code, reason, advice)
                if advice == "no":
                    self.stopped = GatewayClosed(code or 1006, reason)
            if self._closing:
                return
            if self.stopped is not None:
                log.warning("wsgate client: not reconnecting: %s", self.stopped)
                self._connected.set()  # (callers of connected() wake, and raise GatewayClosed)
                await self._inbox.put(_STOPPED)
                return
            low, high = self._backoff
            # A restart, an expired token: back at once, but at most once per backoff ceiling, so that a server
            # closing with 1012 at every connect is not hammered.
            if advice == "now" and loop.time() - came_back_at_once >= high:
                came_back_at_once = loop.time()
                attempt = 1
                continue
            await asyncio.sleep(random.uniform(0, min(high, low * 2.0 ** min(attempt, MAX_DOUBLINGS))))  # full jitter
            attempt += 1

    def _fail_pending(self) -> None:
        """The connection is gone: every request waiting for a reply fails with ConnectionResetError."""
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ConnectionResetError("connection lost"))

    async def _subscribe_later(self, rooms: list[str]) -> None:
        """Subscribe again, with backoff, to rooms the gateway could not recover just now (history away)."""
        delay = 0.5
        while rooms:
            await asyncio.sleep(delay)
            for room in list(rooms):
                if room not in self._rooms:
                    rooms.remove(room)  # unsubscribed meanwhile
                    continue
                try:
                    await self._subscribe(room)
                    rooms.remove(room)
                except GatewayError as exc:
                    if not exc.transient:
                        rooms.remove(room)
                        await self._inbox.put(_room_error(room, exc))
                except (ConnectionError, TimeoutError):
                    return  # the connection went: the next one subscribes everything again
            delay = min(delay * 2, 10.0)

    async def _token_now(self) -> str | None:
        if self._get_token is None:
            return self._token
        token = self._get_token()
        return await token if inspect.isawaitable(token) else token

    async def _refresh_loop(self) -> None:
        """Send a fresh token (`refresh`) before the current one expires, for as long as the connection lasts."""
        while self.expires_at is not None:
            remaining = self.expires_at - time.time()
            await asyncio.sleep(max(0.0, remaining - min(60.0, max(1.0, remaining * REFRESH_MARGIN))))
            try:
                answer = await self._request({"type": "refresh", "token": await self._token_now()})
            except Exception as exc:  # (get_token itself may fail) the loop goes on: the client must not die
                log.warning("wsgate client: refreshing the token failed: %r", exc)
                await asyncio.sleep(1.0)  # try again; at the expiry the gateway closes and the client reconnects
                continue
            self.expires_at = answer["data"]["expires_at"] / 1000
            self.refreshes += 1

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Route every message until the connection ends; the close frame's reason is kept (`_last_reason`), and
        the requests still waiting fail at once (ConnectionResetError), not at their timeout."""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                self._last_reason = msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self._fail_pending()
                return
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            if not self._dispatch(message):
                await self._inbox.put(message)
