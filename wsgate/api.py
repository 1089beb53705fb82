"""The HTTP API (`/api/...`): services in any language push to clients over HTTP.

`POST /api/publish {"room": R, "data": ANY, "type"?: T, "idempotency_key"?: K}` and `POST /api/broadcast
{"data": ANY, "type"?: T}`, with `Authorization: Bearer <api.key>`. Delivered
cluster-wide by the one route (`wsgate.routing`); the answer `{"local_clients": n, "delivered": n}` says how many
clients of the answering node it was queued for (`delivered`: the same count under its old name, deprecated).
A retry with an `idempotency_key` the API used in the room within `publish.idempotency_window` is delivered
nowhere and answered `{"local_clients": 0, "delivered": 0, "duplicate": true}` (the API's keys are one scope).
503 `history is unavailable`: the message cannot be kept (or its key claimed) now (nobody got it).
504 `publish outcome unknown`: Redis took the message and did not answer within `broker.connect_timeout`;
if it kept it, every member gets it once; publishing it again may deliver it twice, unless with the same
`idempotency_key` (then at most once).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web

from . import errors, protocol
from .errors import ClientError
from .idempotency import API_SCOPE, Duplicate
from .keys import DECODER, GATEWAY, SETTINGS

INVALID_KEY = "invalid API key"
BODY_TOO_LARGE = "request body too large"
_STATUS = {
    errors.HISTORY_UNAVAILABLE: 503,  # not sent (nobody got it): try again later
    errors.PUBLISH_OUTCOME_UNKNOWN: 504,  # the broker did not answer in time: kept once, or not at all
}


async def publish_view(request: web.Request) -> web.Response:
    return await _send(request, to_room=True)


async def broadcast_view(request: web.Request) -> web.Response:
    return await _send(request, to_room=False)


async def _send(request: web.Request, to_room: bool) -> web.Response:
    gateway, api = request.app[GATEWAY], request.app[SETTINGS].api
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api.key.encode()):
        return _error(401, INVALID_KEY, headers={"WWW-Authenticate": 'Bearer realm="wsgate-api"'})
    if (request.content_length or 0) > api.max_body_size:
        return _error(413, BODY_TOO_LARGE)
    body = bytearray()
    try:
        async with asyncio.timeout(request.app[SETTINGS].security.request_timeout):  # a dribbled body: bounded
            async for chunk in request.content.iter_any():  # the whole body, however it arrives (segments, chunks)
                body += chunk
                if len(body) > api.max_body_size:
                    return _error(413, BODY_TOO_LARGE)
    except TimeoutError:
        return _error(408, "request body too slow")
    try:
        obj = request.app[DECODER].loads(bytes(body))
        if not isinstance(obj, dict):
            raise ClientError(errors.INVALID_JSON, "the body must be a JSON object")
        kind = obj.get("type", protocol.MESSAGE)
        if not isinstance(kind, str) or not kind:
            raise ClientError(errors.INVALID_JSON, "field 'type' must be a non-empty string")
        data: Any = obj.get("data")
        client_id = api.server_id or None
        if not to_room:
            delivered = await gateway.broadcast(data, type=kind, client_id=client_id)
        else:
            room = obj.get("room")
            if room is not None and not isinstance(room, str):
                raise ClientError(errors.INVALID_JSON, "field 'room' must be a string")
            if not room:
                raise ClientError(errors.ROOM_REQUIRED)
            request.app[DECODER].check_room(room)
            idempotency_key = obj.get("idempotency_key")
            if idempotency_key is None:  # absent or null
                delivered = await gateway.publish(room, data, type=kind, client_id=client_id)
            else:
                delivered = await gateway.publish(
                    room,
                    data,
                    type=kind,
                    client_id=client_id,
                    idempotency_key=idempotency_key,
                    publisher=API_SCOPE.name,
                )
    except ClientError as err:
        return _error(_STATUS.get(err.kind, 400), err.text, detail=err.detail)
    answer: dict[str, Any] = {"local_clients": delivered, "delivered": delivered}  # delivered: deprecated alias
    if isinstance(delivered, Duplicate):
        answer["duplicate"] = True
    return web.json_response(answer)


def _error(status: int, text: str, *, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": text} if detail is None else {"error": text, "detail": detail}
    return web.json_response(body, status=status, headers=headers)
