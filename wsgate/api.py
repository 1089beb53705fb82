"""The HTTP API (`/api/...`): services in any language push to clients, and subscribe or disconnect them.

Every endpoint is a POST with `Authorization: Bearer <api.key>` and a JSON object body of at most
`api.max_body_size` bytes (`_endpoint`: the key, the body and the error answers, shared).

- `POST /api/publish {"room": R, "data": ANY, "type"?: T, "idempotency_key"?: K}` and `POST /api/broadcast
  {"data": ANY, "type"?: T}` (a key there is refused: 400 `invalid JSON format`, detail
  `protocol.KEY_ONLY_ON_PUBLISH`): delivered cluster-wide by the one route (`wsgate.routing`); the answer
  `{"local_clients": n, "delivered": n}` says how many clients of the answering node it was queued for
  (`delivered`: the same count under its old name, deprecated). A retry with an `idempotency_key` the API used
  in the room within `publish.idempotency_window` is delivered nowhere and answered
  `{"local_clients": 0, "delivered": 0, "duplicate": true}` (the API's keys are one scope).
  503 `history is unavailable`: the message cannot be kept (or its key claimed) now (nobody got it).
  504 `publish outcome unknown`: Redis took the message and did not answer within `broker.connect_timeout`;
  if it kept it, every member gets it once; publishing it again may deliver it twice, unless with the same
  `idempotency_key` (then at most once).
- `POST /api/subscribe` and `/api/unsubscribe {"room": R, "client_id": C | "user_id": U}`, `POST /api/disconnect
  {"client_id": C | "user_id": U}`: server-side commands, carried out on every node (`wsgate.commands`). The
  answer, once this node has carried the command out in its turn: `{"local_clients": n, "refused": [...],
  "nodes": k}`; 503 `other nodes unreachable` (with the same fields) when it was carried out on this node only;
  503 `command dropped` / 504 `command outcome unknown` (`{"error", "detail", "nodes"}`) when this node has no
  outcome (too many commands waiting / Redis or this node's turn not within `broker.connect_timeout` +
  `plugins.hook_timeout` after it was handed over).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import errors, protocol
from .commands import DISCONNECT, DROPPED, PENDING, QUEUE_SIZE, SUBSCRIBE, UNSUBSCRIBE, parse
from .errors import ClientError
from .idempotency import API_SCOPE, Duplicate
from .keys import COMMANDS, DECODER, GATEWAY, SETTINGS

INVALID_KEY = "invalid API key"
BODY_TOO_LARGE = "request body too large"
BODY_TOO_SLOW = "request body too slow"
OTHER_NODES_UNREACHABLE = "other nodes unreachable"
COMMAND_DROPPED = "command dropped"
COMMAND_OUTCOME_UNKNOWN = "command outcome unknown"
_MISSED = {  # a command's answer when this node has no outcome of its own (`commands.Reach.missed`)
    DROPPED: (
        503,
        COMMAND_DROPPED,
        f"this node had {QUEUE_SIZE} commands waiting: not carried out here (the other nodes got it); send it again",
    ),
    PENDING: (
        504,
        COMMAND_OUTCOME_UNKNOWN,
        "this node did not carry it out within the answer's wait (commands before it are slow, or this node's "
        "Redis subscription was lost): it may still be; send it again to be sure (commands are idempotent)",
    ),
}
_STATUS = {
    errors.HISTORY_UNAVAILABLE: 503,  # not sent (nobody got it): try again later
    errors.PUBLISH_OUTCOME_UNKNOWN: 504,  # the broker did not answer in time: kept once, or not at all
    errors.MESSAGE_TOO_LARGE: 413,  # encoded for delivery, over what may wait for a client: nobody got it
}

View = Callable[[web.Request], Awaitable[web.Response]]
Handle = Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]]
"""What an endpoint does with a request whose key and body were accepted: the body is a JSON object."""


def _endpoint(handle: Handle) -> View:
    """The view of one API endpoint: 401 without the key, 413 for a body over `api.max_body_size`, 408 for one
    slower than `security.request_timeout`, 400 for a body that is not a JSON object; then `handle(request,
    body)`, whose ClientError is answered as JSON (400, or `_STATUS`'s)."""

    async def view(request: web.Request) -> web.Response:
        settings = request.app[SETTINGS]
        api = settings.api
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api.key.encode()):
            return _error(401, INVALID_KEY, headers={"WWW-Authenticate": 'Bearer realm="wsgate-api"'})
        if (request.content_length or 0) > api.max_body_size:
            return _error(413, BODY_TOO_LARGE)
        body = bytearray()
        try:
            async with asyncio.timeout(settings.security.request_timeout):  # a dribbled body: bounded
                async for chunk in request.content.iter_any():  # the whole body, however it arrives (segments, chunks)
                    body += chunk
                    if len(body) > api.max_body_size:
                        return _error(413, BODY_TOO_LARGE)
        except TimeoutError:
            return _error(408, BODY_TOO_SLOW)
        try:
            obj = request.app[DECODER].loads(bytes(body))
            if not isinstance(obj, dict):
                raise ClientError(errors.INVALID_JSON, "the body must be a JSON object")
            return await handle(request, obj)
        except ClientError as err:
            return _error(_STATUS.get(err.kind, 400), err.text, detail=err.detail)

    return view


def _kind(obj: dict[str, Any]) -> str:
    kind = obj.get("type", protocol.MESSAGE)
    if not isinstance(kind, str) or not kind:
        raise ClientError(errors.INVALID_JSON, "field 'type' must be a non-empty string")
    return kind


async def _publish(request: web.Request, obj: dict[str, Any]) -> web.Response:
    kind = _kind(obj)
    room = request.app[DECODER].required_room(obj)
    client_id = request.app[SETTINGS].api.server_id or None
    gateway, data, idempotency_key = request.app[GATEWAY], obj.get("data"), obj.get("idempotency_key")
    if idempotency_key is None:  # absent or null
        delivered = await gateway.publish(room, data, type=kind, client_id=client_id)
    else:
        delivered = await gateway.publish(
            room, data, type=kind, client_id=client_id, idempotency_key=idempotency_key, publisher=API_SCOPE.name
        )
    return _delivered(delivered)


async def _broadcast(request: web.Request, obj: dict[str, Any]) -> web.Response:
    kind = _kind(obj)
    protocol.refuse_idempotency_key(obj)  # a publish's field only: never ignored
    client_id = request.app[SETTINGS].api.server_id or None
    return _delivered(await request.app[GATEWAY].broadcast(obj.get("data"), type=kind, client_id=client_id))


def _delivered(count: int) -> web.Response:
    """A publish's answer: how many clients of this node it was queued for (`delivered`: a deprecated alias);
    a retry with a key already used says `duplicate`."""
    answer: dict[str, Any] = {"local_clients": count, "delivered": count}
    if isinstance(count, Duplicate):
        answer["duplicate"] = True
    return web.json_response(answer)


def _command(op: str) -> Handle:
    """The handler of one server-side command (`wsgate.commands.parse` reads the body)."""

    async def handle(request: web.Request, obj: dict[str, Any]) -> web.Response:
        command = parse(op, obj, request.app[DECODER])
        reach = await request.app[COMMANDS].run(command)
        if reach.outcome is None:
            status, error, detail = _MISSED[reach.missed or PENDING]
            if reach.unreached is not None:
                detail = f"{reach.unreached}; no other node got it either: {detail}"
            return web.json_response({"error": error, "detail": detail, "nodes": reach.nodes}, status=status)
        answer = {"local_clients": reach.outcome.local_clients, "refused": reach.outcome.refused, "nodes": reach.nodes}
        if reach.unreached is not None:
            detail = f"{reach.unreached}; carried out on this node only: send it again (commands are idempotent)"
            return web.json_response({"error": OTHER_NODES_UNREACHABLE, "detail": detail, **answer}, status=503)
        return web.json_response(answer)

    return handle


publish_view = _endpoint(_publish)
broadcast_view = _endpoint(_broadcast)
subscribe_view = _endpoint(_command(SUBSCRIBE))
unsubscribe_view = _endpoint(_command(UNSUBSCRIBE))
disconnect_view = _endpoint(_command(DISCONNECT))


def _error(status: int, text: str, *, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": text} if detail is None else {"error": text, "detail": detail}
    return web.json_response(body, status=status, headers=headers)
