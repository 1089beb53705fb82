"""wsgate plugin: static bearer tokens checked before the WebSocket upgrade, and private rooms.

Settings (`[plugins.token_auth]`, all optional; with none set the plugin lets everyone in):
    tokens = { "s3cret-token" = "alice" }   # token -> user id
    required = false                         # true: no token, no WebSocket (401)
    private_rooms = ["private-*"]            # rooms (glob patterns) only authenticated clients may use

Tokens are compared in constant time and never logged or echoed; private-room patterns are matched in time
linear in the room name (`wsgate.rooms.glob_match`, never a regular expression built from them).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from wsgate import Client, eager, hookimpl
from wsgate.keys import GATEWAY
from wsgate.rooms import glob_match

NAME = "token_auth"


def _refuse(reason: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=f'{{"error": "{reason}"}}',
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="wsgate"'},
    )


@hookimpl
def wsgate_authenticate(request: web.Request) -> Mapping[str, Any] | None:
    """`Authorization: Bearer <token>` -> identity `{"user": ...}`; a wrong token is refused with 401."""
    options = request.app[GATEWAY].plugin_settings(NAME)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        if options.get("required", False):
            raise _refuse("missing token")
        return None  # anonymous, as the spec has it
    user = _user_of(options.get("tokens", {}), token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise _refuse("invalid token")
    return {"user": user}


def _user_of(tokens: Mapping[str, Any], given: str) -> Any:
    """The user of the token `given`, or None: every token is compared, each in constant time (a dict lookup
    or `==` stops at the first differing character, which a client can time)."""
    found = None
    for token, user in tokens.items():
        if hmac.compare_digest(token.encode(), given.encode()):
            found = user
    return found


@hookimpl
@eager  # (nothing here needs a current task: the gateway may start eager handlers outside one)
def wsgate_authorize(client: Client, action: str, room: str | None) -> bool | None:
    """Anonymous clients may not subscribe or publish to a private room."""
    if room is None or client.identity is not None:
        return None
    patterns = client.gateway.plugin_settings(NAME).get("private_rooms", ())
    return False if any(glob_match(room, p) for p in patterns) else None


@hookimpl
async def wsgate_client_connected(client: Client) -> None:
    """Tell an authenticated client who the gateway thinks it is."""
    if isinstance(client.identity, Mapping):
        await client.send({"type": "authenticated", "data": {"user": client.identity["user"]}})
