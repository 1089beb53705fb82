"""Push messages to wsgate clients from another process (any service, not only the gateway's own code).

Two ways, one interface (`publish(room, data)`, `broadcast(data)`, `close()`, and `async with`, which closes
on the way out):

- `HttpPublisher("http://gateway:8081", key)`: through `POST /api/publish` and
  `/api/broadcast` (needs `api.key`); returns `LocalClients`: how many clients of the
  answering node it was queued for (not the other nodes' clients).
- `RedisPublisher("redis://redis:6379/0")`: straight onto the Redis broker's channels,
  the way gateway nodes talk to each other (needs `broker.url` on the gateways and the
  same `prefix`), keeping history exactly as the gateways do; returns `Nodes`: how many
  gateway nodes received it.

Both results are ints (as before) that name what they count, and say `duplicate` (a retry whose
`idempotency_key` was used: delivered nowhere). Both raise PublishError when the message was certainly
not sent (nobody got it), and PublishOutcomeUnknown (a PublishError) when it was handed over and no answer
came: then it reached everyone once, or nobody, and publishing it again may deliver it twice, unless it
carries the same `idempotency_key` (then at most once; DESIGN "The fault model").

`publish(..., idempotency_key=K)` (1 to 64 characters): within the gateways' `publish.idempotency_window`
(5 minutes), a second publish with K to the same room is delivered nowhere and answered with `duplicate`
True. An HttpPublisher's keys are the HTTP API's (one scope for every caller holding `api.key`); a
RedisPublisher's are its own (another RedisPublisher, or the same service restarted, has other keys), unless
it is given a `scope` name: then they are shared by every RedisPublisher given that name (a service that restarts
after PublishOutcomeUnknown retries safely).

Code inside the gateway process uses `app[wsgate.keys.GATEWAY].publish(...)` instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self

import aiohttp

from .. import protocol
from ..broker.redis_schema import (
    ONCE_SCRIPT,
    ONCE_SHA,
    PUBLISH_SCRIPT,
    PUBLISH_SHA,
    Attempt,
    RedisNames,
    describe,
    exchange,
    new_message_id,
    new_sender_id,
    once_args,
    publish_args,
)
from ..errors import ClientError
from ..idempotency import WINDOW, check_key, claim_id, publisher_scope
from ..overhead import too_large
from ..rooms import RoomPatterns


class PublishError(Exception):
    """The message was not sent (nobody got it); `status` is the HTTP status, the message its `error` text,
    `detail` what the gateway or Redis said."""

    def __init__(self, status: int, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.detail = detail


class PublishOutcomeUnknown(PublishError):
    """The message was handed over and no answer came (`publish outcome unknown`, HTTP 504): it reached every
    member once, or nobody. Publishing it again may deliver it twice."""

    def __init__(self, detail: str, status: int = 504) -> None:
        super().__init__(status, protocol.PUBLISH_OUTCOME_UNKNOWN, detail)


class Delivered(int):
    """What a publish or broadcast was answered: an int, the count the publisher reports (its subclass says what
    it counts), and `duplicate`: the publish carried an `idempotency_key` already used (then it was delivered
    nowhere, and the count is 0)."""

    duplicate: bool

    def __new__(cls, count: int, *, duplicate: bool = False) -> Self:
        result = super().__new__(cls, count)
        result.duplicate = duplicate
        return result


class LocalClients(Delivered):
    """`HttpPublisher`'s result: how many clients of the gateway node that answered the message was queued for.
    Clients on other nodes are not counted: a publish that reached every member on other nodes may say 0."""

    @property
    def local_clients(self) -> int:
        return int(self)


class Nodes(Delivered):
    """`RedisPublisher`'s result: how many gateway nodes received the message (those with a member of the room,
    or every node for a broadcast); not how many clients."""

    @property
    def nodes(self) -> int:
        return int(self)


class _Closing(ABC):
    """`async with publisher:` returns the publisher and awaits its `close()` on the way out, whatever happened."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the publisher holds; idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class PublisherClosed(RuntimeError):
    """`publish` or `broadcast` after `close()`: a closed publisher opens no new connection (it would leak)."""


class HttpPublisher(_Closing):
    """Publishes through a gateway's HTTP API.

    Without a `session` of its own it opens an aiohttp session at the first message and closes it in `close()`
    (or on leaving `async with HttpPublisher(...) as publisher:`); a `session` given is the caller's to close.
    `close()` may be called any number of times; a message after it raises PublisherClosed.
    """

    def __init__(self, base_url: str, key: str, session: aiohttp.ClientSession | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"}
        self._session = session
        self._own_session = session is None
        self._closed = False

    async def publish(
        self, room: str, data: Any, *, type: str = protocol.MESSAGE, idempotency_key: str | None = None
    ) -> LocalClients:
        """`POST /api/publish`; returns the clients of the answering node it was queued for (see the module for
        `idempotency_key`; the HTTP API's keys are one scope). Raises as `_post` says."""
        body = {"room": room, "data": data, "type": type}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return await self._post("/api/publish", body)

    async def broadcast(self, data: Any, *, type: str = protocol.MESSAGE) -> LocalClients:
        """`POST /api/broadcast`; returns the clients of the answering node it was queued for."""
        return await self._post("/api/broadcast", {"data": data, "type": type})

    async def close(self) -> None:
        """Close the session it opened (not one the caller gave); idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if self._own_session and session is not None:
            await session.close()

    async def _post(self, path: str, body: dict[str, Any]) -> LocalClients:
        """Raises PublishError (not sent: an error answer, or no connection to the gateway), and
        PublishOutcomeUnknown (a 504 answer, or the request went out and no answer came back)."""
        if self._closed:
            raise PublisherClosed("this HttpPublisher is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._base + path,
                data=protocol.dumps(body),
                headers={
                    **self._headers,
                    "Content-Type": "application/json",
                },
            ) as resp:
                answer = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:  # no connection was made: nothing was sent
            raise PublishError(503, "the gateway cannot be reached", str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:  # sent, and the answer did not come back
            raise PublishOutcomeUnknown(f"the gateway did not answer: {describe(exc)}") from None
        if resp.status != 200:
            text, detail = str(answer.get("error", answer)), answer.get("detail")
            if text == protocol.PUBLISH_OUTCOME_UNKNOWN:
                raise PublishOutcomeUnknown(str(detail), resp.status)
            raise PublishError(resp.status, text, detail)
        count = answer.get("local_clients", answer.get("delivered"))  # (a gateway before local_clients)
        return LocalClients(int(count), duplicate=answer.get("duplicate") is True)


def _check_size(message: bytes, announced: dict[str, Any]) -> None:
    """PublishError (413, `message is too large`) for a message longer than the gateways can send a client (the
    `largest_message` they announce): it would close every member it went to, so it is not sent."""
    largest = announced.get("largest_message") or 0
    if largest and len(message) > largest:
        raise PublishError(413, protocol.MESSAGE_TOO_LARGE, too_large(len(message), largest))


class RedisPublisher(_Closing):
    """Publishes onto the Redis broker's channels; every gateway node delivers it to its clients.

    Rooms the gateways keep history for (their `[history]` settings, which they announce
    in Redis, the last node to start winning) get their offsets here exactly as a gateway
    gives them: a resuming client misses nothing published this way.

    Each command waits at most `timeout` seconds for Redis. Raises PublishError (status 503)
    when Redis cannot be reached or refuses (nothing was sent), PublishError (413, `message is too large`) for a
    message longer, encoded, than the gateways can send a client (nothing was sent), and PublishOutcomeUnknown
    (status 504) when the command was written and no answer came within `timeout`. Commands
    are never retried blindly: a message for a room with history carries a message id, and
    after a lost connection it is sent once more with that id (Redis runs an id once), which
    turns "unknown" into what happened.

    `scope` names whose `idempotency_key`s it uses: None (the default), this object's own (a random sender id:
    another RedisPublisher, or this service after a restart, has other keys); a name (a non-empty string, such as
    `"billing"`), the keys of every RedisPublisher given the same name, in any process: a service that restarts
    after PublishOutcomeUnknown retries with the same key and scope, and the message is published at most once.
    A named scope is a kind of its own (`wsgate.idempotency.publisher_scope`): it never shares keys with the HTTP
    API, a client, or a RedisPublisher without a scope, whatever the name. ValueError for a name that is not one.

    `close()` (or leaving `async with RedisPublisher(...) as publisher:`) closes its Redis connections; it may be
    called any number of times, and a message after it raises PublisherClosed.
    """

    SETTINGS_TTL = 5.0  # seconds the gateways' history settings are used before they are read again

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wsgate",
        server_id: str | None = None,
        timeout: float = 5.0,
        scope: str | None = None,
    ) -> None:
        import redis.asyncio as aioredis  # pip install 'wsgate[redis]'

        self._sender = new_sender_id()  # not any node's id: every node delivers it
        self._scope = publisher_scope(self._sender.decode(), scope)  # (checked before a client is made)
        self._failures: tuple[type[Exception], ...] = (OSError, aioredis.RedisError)
        self._redis = aioredis.from_url(url, socket_connect_timeout=timeout)
        self._timeout = timeout
        self._names = RedisNames(prefix)
        self._server_id = server_id
        self._history: tuple[float, RoomPatterns, dict[str, Any]] | None = None
        self._closed = False

    async def publish(
        self, room: str, data: Any, *, type: str = protocol.MESSAGE, idempotency_key: str | None = None
    ) -> Nodes:
        """Returns how many gateway nodes received it (see the class for what it raises).

        `idempotency_key` (1 to 64 characters, else ValueError): in this publisher's scope (see the class), taken
        in Redis in the step that keeps or publishes the message, as a gateway does (`redis_schema`); a key
        used in the scope and the room within the gateways' `publish.idempotency_window` returns `Nodes(0)`
        with `duplicate` True, and nothing is sent."""
        self._check_open()
        claim = None if idempotency_key is None else self._claim(room, idempotency_key)
        message = protocol.encode(type, room=room, data=data, client_id=self._server_id)
        rooms, history = await self._history_settings()
        _check_size(message, history)
        channel = self._names.channel(room)
        window = float(history.get("idempotency_window", WINDOW))
        if not rooms.match(room):
            if claim is None:
                return Nodes(int(await self._run([("PUBLISH", channel, self._sender + message)])))
            keys = self._names.once_keys(room, new_message_id(), claim)
            args = once_args(message, channel, self._sender, claim_window=window)
            again, receivers = await self._run_again([("EVALSHA", ONCE_SHA, len(keys), *keys, *args)], ONCE_SCRIPT)
            return Nodes(int(receivers), duplicate=again == 2)
        keys = self._names.publish_keys(room, new_message_id(), claim)
        run = (
            "EVALSHA",
            PUBLISH_SHA,
            len(keys),
            *keys,
            *publish_args(message[:-1], history["size"], history["ttl"], channel, self._sender, claim_window=window),
        )
        answer = await self._run_again([run], PUBLISH_SCRIPT)
        return Nodes(int(answer[2]), duplicate=answer[3] == 2)

    async def broadcast(self, data: Any, *, type: str = protocol.MESSAGE) -> Nodes:
        """Returns how many gateway nodes received it (see the class for what it raises)."""
        self._check_open()
        message = protocol.encode(type, data=data, client_id=self._server_id)
        _check_size(message, (await self._history_settings())[1])
        return Nodes(int(await self._run([("PUBLISH", self._names.broadcast, self._sender + message)])))

    def _claim(self, room: str, key: str) -> bytes:
        """The idempotency claim of `key` in `room`, in this publisher's scope; ValueError for a bad key."""
        try:
            return claim_id(self._scope, room, check_key(key))
        except ClientError as exc:
            raise ValueError(exc.detail) from None

    async def _run_again(self, commands: list[tuple[Any, ...]], script: str) -> Any:
        """`_run` of a script run with a message id: after a lost connection it is sent once more with the same id
        (Redis runs an id once), which turns "unknown" into what happened; a stall is not waited out twice."""
        try:
            return await self._run(commands, load=script)
        except PublishOutcomeUnknown as first:
            if first.detail is not None and first.detail.startswith("no answer within"):
                raise  # Redis is stalled: a second run would wait as long
            return await self._run(commands, load=script)  # the connection was lost: ask again, same id

    async def _run(self, commands: list[tuple[Any, ...]], *, load: str | None = None) -> Any:
        """The last command's answer (`exchange`, within `timeout`); with `load` (a script), a NOSCRIPT answer
        sends SCRIPT LOAD of it and the commands again (a NOSCRIPT run ran nothing)."""
        from redis.exceptions import NoScriptError

        attempt = Attempt()
        try:
            async with asyncio.timeout(self._timeout):
                answer = (await exchange(self._redis, commands, attempt))[-1]
                if load is not None and isinstance(answer, NoScriptError):
                    attempt = Attempt()
                    answer = (await exchange(self._redis, [("SCRIPT", "LOAD", load), *commands], attempt))[-1]
        except TimeoutError:
            if not attempt.written:
                raise PublishError(503, f"Redis could not be reached within {self._timeout:g}s") from None
            raise PublishOutcomeUnknown(f"no answer within {self._timeout:g}s") from None
        except self._failures as exc:
            if not attempt.written:
                raise PublishError(503, f"Redis did not take the message: {describe(exc)}") from None
            raise PublishOutcomeUnknown(
                f"the connection to Redis was lost before it answered: {describe(exc)}"
            ) from None
        if isinstance(answer, Exception):
            raise PublishError(503, f"Redis refused the message: {describe(answer)}")
        return answer

    async def close(self) -> None:
        """Close the connections to Redis; idempotent."""
        if not self._closed:
            self._closed = True
            await self._redis.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise PublisherClosed("this RedisPublisher is closed")

    async def _history_settings(self) -> tuple[RoomPatterns, dict[str, Any]]:
        """The gateways' `[history]` settings, as they announce them in Redis (read at most every SETTINGS_TTL)."""
        now = time.monotonic()
        if self._history is None or now - self._history[0] > self.SETTINGS_TTL:
            try:
                async with asyncio.timeout(self._timeout):
                    raw = await self._redis.get(self._names.history_config)
            except self._failures + (TimeoutError,) as exc:
                raise PublishError(503, f"cannot read the gateways' settings from Redis: {describe(exc)}") from None
            if raw is None:  # no gateway has run under this prefix yet: no room keeps history, and no client
                return RoomPatterns(()), {}  # waits (read again next time: a gateway may be starting)
            history: dict[str, Any] = json.loads(raw)
            self._history = (now, RoomPatterns(tuple(history["rooms"])), history)
        return self._history[1], self._history[2]
