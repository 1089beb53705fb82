"""wsgate plugin: a users service (SQLite) and the `get_user` / `create_user` message types.

Settings (`[plugins.users]` in settings.toml, all optional):
    database = ":memory:"     # SQLite file
    notify_room = "users"     # room told about every user created (its id and name, never its e-mail)

The safe pattern, for code copied from here: every handler decides itself who may do what (a handler runs for
any client, anonymous ones too), a client reaches only its own data, and nothing tells whether someone else's
e-mail address is known. A signed-in client (a token's `sub`) owns at most one user: its own profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsgate import Client, ClientError, Gateway, Handler, Message, hookimpl
from wsgate.auth import claims_of, user_id_of
from wsgate.protocol import NOT_ALLOWED

from .service import User, UserExists, UsersService

__all__ = ["User", "UserExists", "UsersService"]

INVALID_REQUEST = "invalid request"
USER_NOT_FOUND = "user not found"
USER_EXISTS = "user already exists"
MAX_FIELD = 254  # characters in an e-mail address (RFC 5321 path limit) or a name


def _text_field(data: Any, name: str, *, required: bool = True) -> str | None:
    """A non-empty string field of the request's `data` (at most MAX_FIELD characters), None when absent
    and not `required`, or the `invalid request` error."""
    value = data.get(name) if isinstance(data, dict) else None
    if value is None and not required and (data is None or isinstance(data, dict)):
        return None
    if not isinstance(value, str) or not value.strip():
        raise ClientError(INVALID_REQUEST, f"data.{name} must be a non-empty string")
    if len(value.strip()) > MAX_FIELD:
        raise ClientError(INVALID_REQUEST, f"data.{name} is longer than {MAX_FIELD} characters")
    return value.strip()


def _signed_in(client: Client) -> str:
    """The id of the signed-in user behind `client` (an Identity's `user_id`, else a `sub` or `user` claim
    that is a string), or `not allowed` for anonymous clients: handlers run for every client, so each one
    checks who asks before it touches data."""
    owner = user_id_of(client.identity)
    if owner is None:
        claims = claims_of(client.identity)
        found = claims.get("sub", claims.get("user"))
        owner = found if isinstance(found, str) else None
    if not owner:
        raise ClientError(NOT_ALLOWED, "users: sign in first (anonymous clients have no user)")
    return owner


def _service(client: Client) -> UsersService:
    service = client.gateway.services["users"]
    assert isinstance(service, UsersService)
    return service


async def get_user(client: Client, message: Message) -> None:
    """`{"type":"get_user"}` -> `user_response` with the caller's own user (`{"email":...,"user":...}`).

    Signed-in clients only (`not allowed` otherwise). A `data.email` that is not the caller's own answers
    `user not found`, as an unknown one does: no client learns whether another's address is registered."""
    owner = _signed_in(client)
    email = _text_field(message.data, "email", required=False)
    user = await _service(client).get_user_by_owner(owner)
    if user is None or (email is not None and email != user["email"]):
        raise ClientError(USER_NOT_FOUND)
    await client.send({"type": "user_response", "data": {"email": user["email"], "user": user}})


async def create_user(client: Client, message: Message) -> None:
    """`{"type":"create_user","data":{"email":...,"name":...}}` -> `user_created` with the caller's new user;
    the room `notify_room` is told its id and name only.

    Signed-in clients only (`not allowed` otherwise), one user each (`user already exists` for a second):
    the table grows by one row per identity, whatever a client sends."""
    owner = _signed_in(client)
    email = _text_field(message.data, "email")
    name = _text_field(message.data, "name")
    assert email is not None and name is not None
    if "@" not in email:
        raise ClientError(INVALID_REQUEST, "data.email must be an email address")
    try:
        user = await _service(client).create_user(email, name, owner=owner)
    except UserExists:
        raise ClientError(USER_EXISTS) from None
    await client.send({"type": "user_created", "data": {"user": user}})
    room = str(client.gateway.plugin_settings("users").get("notify_room", "users"))
    await client.gateway.publish(room, {"user": {"id": user["id"], "name": user["name"]}}, type="user_created")


@hookimpl
def wsgate_services(gateway: Gateway) -> Mapping[str, object]:
    database = str(gateway.plugin_settings("users").get("database", ":memory:"))
    return {"users": UsersService(database)}


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"get_user": get_user, "create_user": create_user}
