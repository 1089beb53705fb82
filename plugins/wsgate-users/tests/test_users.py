"""The users plugin end to end: service life cycle, get_user, create_user and its room notification, and
who may do what (signed-in clients only, each reaching its own user alone)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import wsgate_users

from wsgate.testing import Peer, Server, StartServer

SECRET = "a-test-secret-for-the-users-plugin-" + "x" * 32


async def users_server(wsgate_server: StartServer, **users: Any) -> Server:
    """A gateway with this plugin and the JWT authenticator (the token-auth example, if installed, is off)."""
    return await wsgate_server(
        wsgate_users, auth={"jwt": {"secret": SECRET}}, plugins={"disabled": ["token_auth"], "users": users}
    )


async def signed_in(server: Server, sub: str) -> Peer:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    return await server.connect(headers={"Authorization": f"Bearer {token}"})


async def test_create_then_get_a_user(wsgate_server: StartServer) -> None:
    server = await users_server(wsgate_server)
    client = await signed_in(server, "ada")
    created = await client.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Ada"}})
    assert created["type"] == "user_created"
    user = created["data"]["user"]
    assert (user["email"], user["name"]) == ("ada@example.com", "Ada")
    reply = await client.request({"type": "get_user", "data": {"email": "ada@example.com"}})
    assert reply["type"] == "user_response"
    assert reply["data"] == {"email": "ada@example.com", "user": user}
    assert (await client.request({"type": "get_user"}))["data"] == {"email": "ada@example.com", "user": user}


async def test_anonymous_clients_can_neither_create_nor_look_up(wsgate_server: StartServer) -> None:
    """Issue 20, item 10: anonymous clients created users and looked anyone up by e-mail."""
    server = await users_server(wsgate_server)
    owner = await signed_in(server, "ada")
    await owner.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Ada"}})
    anonymous = await server.connect()
    for request in (
        {"type": "get_user", "data": {"email": "ada@example.com"}},
        {"type": "get_user"},
        {"type": "create_user", "data": {"email": "eve@example.com", "name": "Eve"}},
    ):
        reply = await anonymous.request(request)
        assert (reply["type"], reply["error"]) == ("error", "not allowed"), request
        assert "sign in" in reply["detail"]
    assert await server.gateway.services["users"].get_user_by_email("eve@example.com") is None


async def test_a_user_reaches_only_its_own_user(wsgate_server: StartServer) -> None:
    server = await users_server(wsgate_server)
    ada, bob = await signed_in(server, "ada"), await signed_in(server, "bob")
    await ada.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Ada"}})
    # bob asks for ada's address, and for one nobody has: the same answer, so no address is confirmed
    for email in ("ada@example.com", "nobody@example.com"):
        reply = await bob.request({"type": "get_user", "data": {"email": email}})
        assert (reply["type"], reply["error"]) == ("error", "user not found")
    created = await bob.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Bob"}})
    assert created["data"]["user"]["name"] == "Bob"  # an unverified address is not a key: taking it tells nothing
    mine = await bob.request({"type": "get_user"})
    assert mine["data"]["user"] == created["data"]["user"]
    assert (await ada.request({"type": "get_user"}))["data"]["user"]["name"] == "Ada"


async def test_one_user_per_identity(wsgate_server: StartServer) -> None:
    """A client cannot grow the table: a second create_user, whatever its address, is refused."""
    server = await users_server(wsgate_server)
    client = await signed_in(server, "ada")
    await client.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Ada"}})
    for n in range(3):
        again = await client.request({"type": "create_user", "data": {"email": f"ada{n}@example.com", "name": "A"}})
        assert (again["type"], again["error"]) == ("error", "user already exists")
    long = await client.request({"type": "create_user", "data": {"email": "a@" + "x" * 300, "name": "A"}})
    assert long["error"] == "invalid request"


async def test_create_user_notifies_the_room(wsgate_server: StartServer) -> None:
    server = await users_server(wsgate_server, notify_room="staff")
    creator, watcher = await signed_in(server, "bob"), await server.connect()
    await watcher.subscribe("staff")
    await creator.request({"type": "create_user", "data": {"email": "bob@example.com", "name": "Bob"}})
    note = await watcher.recv()
    assert (note["type"], note["room"]) == ("user_created", "staff")
    assert note["data"]["user"] == {"id": note["data"]["user"]["id"], "name": "Bob"}  # never the e-mail address
    assert "client_id" not in note  # a server message, not a client's publish


async def test_errors(wsgate_server: StartServer) -> None:
    server = await users_server(wsgate_server)
    client = await signed_in(server, "ada")
    cases = [
        ({"type": "get_user", "data": {"email": "nobody@example.com"}}, "user not found"),
        ({"type": "get_user"}, "user not found"),
        ({"type": "get_user", "data": {"email": ""}}, "invalid request"),
        ({"type": "get_user", "data": "ada@example.com"}, "invalid request"),
        ({"type": "get_user", "data": {"email": 5}}, "invalid request"),
        ({"type": "create_user", "data": {"email": "not-an-email", "name": "X"}}, "invalid request"),
        ({"type": "create_user", "data": {"email": "x@example.com"}}, "invalid request"),
    ]
    for request, error in cases:
        reply = await client.request(request)
        assert (reply["type"], reply["error"]) == ("error", error), request
    first = {"type": "create_user", "data": {"email": "dup@example.com", "name": "One"}}
    assert (await client.request(first))["type"] == "user_created"
    assert (await client.request(first))["error"] == "user already exists"
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_the_database_setting_and_the_service_life_cycle(wsgate_server: StartServer, tmp_path: Path) -> None:
    database = tmp_path / "users.sqlite3"
    server = await users_server(wsgate_server, database=str(database))
    service = server.gateway.services["users"]
    assert isinstance(service, wsgate_users.UsersService)
    client = await signed_in(server, "c")
    await client.request({"type": "create_user", "data": {"email": "c@example.com", "name": "C"}})
    assert database.is_file()
    await server.test_server.close()  # shutdown closes the service
    assert service._db is None
