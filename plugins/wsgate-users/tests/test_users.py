"""The users plugin end to end: service life cycle, get_user, create_user and its room notification."""

from __future__ import annotations

from pathlib import Path

import wsgate_users
from wsgate.testing import StartServer


async def test_create_then_get_a_user(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_users)
    client = await server.connect()
    created = await client.request({"type": "create_user", "data": {"email": "ada@example.com", "name": "Ada"}})
    assert created["type"] == "user_created"
    user = created["data"]["user"]
    assert (user["email"], user["name"]) == ("ada@example.com", "Ada")
    reply = await client.request({"type": "get_user", "data": {"email": "ada@example.com"}})
    assert reply["type"] == "user_response"
    assert reply["data"] == {"email": "ada@example.com", "user": user}


async def test_create_user_notifies_the_room(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_users, plugins={"users": {"notify_room": "staff"}})
    creator, watcher = await server.connect(), await server.connect()
    await watcher.subscribe("staff")
    await creator.request({"type": "create_user", "data": {"email": "bob@example.com", "name": "Bob"}})
    note = await watcher.recv()
    assert (note["type"], note["room"]) == ("user_created", "staff")
    assert note["data"]["user"]["email"] == "bob@example.com"
    assert "client_id" not in note  # a server message, not a client's publish


async def test_errors(wsgate_server: StartServer) -> None:
    server = await wsgate_server(wsgate_users)
    client = await server.connect()
    cases = [
        ({"type": "get_user", "data": {"email": "nobody@example.com"}}, "user not found"),
        ({"type": "get_user"}, "invalid request"),
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
    server = await wsgate_server(wsgate_users, plugins={"users": {"database": str(database)}})
    service = server.gateway.services["users"]
    assert isinstance(service, wsgate_users.UsersService)
    client = await server.connect()
    await client.request({"type": "create_user", "data": {"email": "c@example.com", "name": "C"}})
    assert database.is_file()
    await server.test_server.close()  # shutdown closes the service
    assert service._db is None
