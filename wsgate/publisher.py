"""Push messages to wsgate clients from another process (any service, not only the gateway's own code).

Two ways, one interface (`publish(room, data)`, `broadcast(data)`, `close()`):

- `HttpPublisher("http://gateway:8081", key)`: through `POST /api/publish` and
  `/api/broadcast` (needs `api.key`); returns how many clients the answering node reached.
- `RedisPublisher("redis://redis:6379/0")`: straight onto the Redis broker's channels,
  the way gateway nodes talk to each other (needs `broker.url` on the gateways and the
  same `prefix`); returns how many gateway nodes received it.

Code inside the gateway process uses `app[wsgate.keys.GATEWAY].publish(...)` instead.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from . import protocol


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
    """Publishes onto the Redis broker's channels; every gateway node delivers it to its clients."""

    def __init__(self, url: str, *, prefix: str = "wsgate", server_id: str | None = None) -> None:
        import redis.asyncio as aioredis  # pip install 'wsgate[redis]'

        self._redis = aioredis.from_url(url)
        self._prefix = prefix
        self._server_id = server_id
        self._sender = uuid.uuid4().hex.encode()  # not any node's id: every node delivers it

    async def publish(self, room: str, data: Any, *, type: str = protocol.MESSAGE) -> int:
        frame = protocol.encode(type, room=room, data=data, client_id=self._server_id)
        return int(await self._redis.publish(f"{self._prefix}:room:{room}", self._sender + frame))

    async def broadcast(self, data: Any, *, type: str = protocol.MESSAGE) -> int:
        frame = protocol.encode(type, data=data, client_id=self._server_id)
        return int(await self._redis.publish(f"{self._prefix}:broadcast", self._sender + frame))

    async def close(self) -> None:
        await self._redis.aclose()
