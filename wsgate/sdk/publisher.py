"""Push messages to wsgate clients from another process (any service, not only the gateway's own code).

Two ways, one interface (`publish(room, data)`, `broadcast(data)`, `close()`):

- `HttpPublisher("http://gateway:8081", key)`: through `POST /api/publish` and
  `/api/broadcast` (needs `api.key`); returns how many clients the answering node reached.
- `RedisPublisher("redis://redis:6379/0")`: straight onto the Redis broker's channels,
  the way gateway nodes talk to each other (needs `broker.url` on the gateways and the
  same `prefix`), keeping history exactly as the gateways do; returns how many gateway
  nodes received it.

Code inside the gateway process uses `app[wsgate.keys.GATEWAY].publish(...)` instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from .. import protocol
from ..broker.redis_schema import PUBLISH_SCRIPT, RedisNames, describe, new_sender_id, publish_args
from ..rooms import RoomPatterns


class PublishError(Exception):
    """The gateway refused the message; `status` is the HTTP status, the message its `error` text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class HttpPublisher:
    """Publishes through a gateway's HTTP API."""

    def __init__(self, base_url: str, key: str, session: aiohttp.ClientSession | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"}
        self._session = session
        self._own_session = session is None

    async def publish(self, room: str, data: Any, *, type: str = protocol.MESSAGE) -> int:
        return await self._post("/api/publish", {"room": room, "data": data, "type": type})

    async def broadcast(self, data: Any, *, type: str = protocol.MESSAGE) -> int:
        return await self._post("/api/broadcast", {"data": data, "type": type})

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    async def _post(self, path: str, body: dict[str, Any]) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self._base + path, data=protocol.dumps(body), headers={
            **self._headers, "Content-Type": "application/json",
        }) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                raise PublishError(resp.status, str(answer.get("error", answer)))
            return int(answer["delivered"])


class RedisPublisher:
    """Publishes onto the Redis broker's channels; every gateway node delivers it to its clients.

    Rooms the gateways keep history for (their `[history]` settings, which they announce
    in Redis, the last node to start winning) get their offsets here exactly as a gateway
    gives them: a resuming client misses nothing published this way. Raises PublishError
    (status 503) when Redis cannot be reached or refuses.
    """

    SETTINGS_TTL = 5.0  # seconds the gateways' history settings are used before they are read again

    def __init__(self, url: str, *, prefix: str = "wsgate", server_id: str | None = None) -> None:
        import redis.asyncio as aioredis  # pip install 'wsgate[redis]'

        self._failures: tuple[type[Exception], ...] = (OSError, aioredis.RedisError)
        self._redis = aioredis.from_url(url)
        self._names = RedisNames(prefix)
        self._server_id = server_id
        self._sender = new_sender_id()  # not any node's id: every node delivers it
        self._history: tuple[float, RoomPatterns, dict[str, Any]] | None = None
        self._script = self._redis.register_script(PUBLISH_SCRIPT)

    async def publish(self, room: str, data: Any, *, type: str = protocol.MESSAGE) -> int:
        """Returns how many gateway nodes received it."""
        message = protocol.encode(type, room=room, data=data, client_id=self._server_id)
        rooms, history = await self._history_settings()
        try:
            if rooms.match(room):
                channel = self._names.channel(room)
                _, _, receivers = await self._script(
                    keys=self._names.history_keys(room),
                    args=publish_args(message[:-1], history["size"], history["ttl"], channel, self._sender),
                )
                return int(receivers)
            return int(await self._redis.publish(self._names.channel(room), self._sender + message))
        except self._failures as exc:
            raise PublishError(503, f"Redis did not take the message: {describe(exc)}") from None

    async def broadcast(self, data: Any, *, type: str = protocol.MESSAGE) -> int:
        """Returns how many gateway nodes received it."""
        message = protocol.encode(type, data=data, client_id=self._server_id)
        try:
            return int(await self._redis.publish(self._names.broadcast, self._sender + message))
        except self._failures as exc:
            raise PublishError(503, f"Redis did not take the message: {describe(exc)}") from None

    async def close(self) -> None:
        await self._redis.aclose()

    async def _history_settings(self) -> tuple[RoomPatterns, dict[str, Any]]:
        """The gateways' `[history]` settings, as they announce them in Redis (read at most every SETTINGS_TTL)."""
        now = time.monotonic()
        if self._history is None or now - self._history[0] > self.SETTINGS_TTL:
            try:
                raw = await self._redis.get(self._names.history_config)
            except self._failures as exc:
                raise PublishError(503, f"cannot read the gateways' settings from Redis: {describe(exc)}") from None
            if raw is None:  # no gateway has run under this prefix yet: no room keeps history, and no client
                return RoomPatterns(()), {}  # waits (read again next time: a gateway may be starting)
            history: dict[str, Any] = json.loads(raw)
            self._history = (now, RoomPatterns(tuple(history["rooms"])), history)
        return self._history[1], self._history[2]
