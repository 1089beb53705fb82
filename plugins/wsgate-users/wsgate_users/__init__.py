"""wsgate plugin: a users service (SQLite) and the `get_user` / `create_user` message types.

Settings (`[plugins.users]` in settings.toml, all optional):
    database = ":memory:"     # SQLite file
    notify_room = "users"     # room told about every user created
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsgate import Client, ClientError, Gateway, Handler, Message, hookimpl

from .service import User, UserExists, UsersService

__all__ = ["User", "UserExists", "UsersService"]

INVALID_REQUEST = "invalid request"
USER_NOT_FOUND = "user not found"
USER_EXISTS = "user already exists"


def _text_field(data: Any, name: str) -> str:
    """A non-empty string field of the request's `data`, or the `invalid request` error."""
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ClientError(INVALID_REQUEST, f"data.{name} must be a non-empty string")
    return value.strip()


def _service(client: Client) -> UsersService:
    service = client.gateway.services["users"]
    assert isinstance(service, UsersService)
    return service


async def get_user(client: Client, message: Message) -> None:
    """`{"type":"get_user","data":{"email":...}}` -> `user_response` with the user."""
    email = _text_field(message.data, "email")
    user = await _service(client).get_user_by_email(email)
    if user is None:
        raise ClientError(USER_NOT_FOUND)
    await client.send({"type": "user_response", "data": {"email": email, "user": user}})


async def create_user(client: Client, message: Message) -> None:
    """`{"type":"create_user","data":{"email":...,"name":...}}` -> `user_created`, also told to `notify_room`."""
    email = _text_field(message.data, "email")
    name = _text_field(message.data, "name")
    if "@" not in email:
        raise ClientError(INVALID_REQUEST, "data.email must be an email address")
    try:
        user = await _service(client).create_user(email, name)
    except UserExists:
        raise ClientError(USER_EXISTS) from None
    await client.send({"type": "user_created", "data": {"user": user}})
    room = str(client.gateway.plugin_settings("users").get("notify_room", "users"))
    await client.gateway.publish(room, {"user": user}, type="user_created")


@hookimpl
def wsgate_services(gateway: Gateway) -> Mapping[str, object]:
    database = str(gateway.plugin_settings("users").get("database", ":memory:"))
    return {"users": UsersService(database)}


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"get_user": get_user, "create_user": create_user}
