"""The JWT authenticator (`[auth.jwt]`), `auth.required`, room rules and the broadcast restriction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wsgate import Client, hookimpl
from wsgate.config import ConfigError
from wsgate.testing import Peer, Server, StartServer

SECRET = "a-test-secret-long-enough-for-hs512-too-" + "x" * 24


def token(sub: str = "alice", key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + 60, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, dict[str, str]]:
    return {"headers": {"Authorization": f"Bearer {value}"}}


NO_EXAMPLE_AUTH = {"disabled": ["token_auth"]}  # the example plugin (installed by `make test`) checks bearer tokens too


async def jwt_server(wsgate_server: StartServer, *plugins: object, jwt_settings: Any = None, **auth: Any) -> Server:
    return await wsgate_server(
        *plugins, auth={"jwt": {"secret": SECRET, **(jwt_settings or {})}, **auth}, plugins=NO_EXAMPLE_AUTH
    )


async def refusal(server: Server, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Status and body of a refused upgrade (and proof that no WebSocket was opened)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.raw(**kwargs)
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **kwargs.get("headers", {}),
    }
    async with server.session.get(server.url("/ws"), headers=headers) as resp:
        assert resp.status == refused.value.status
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="wsgate"'
        return resp.status, await resp.json()


async def test_a_valid_token_identifies_the_client(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server)
    ws = await server.raw(**bearer(token("alice", role="ops")))
    hello = await ws.receive_json()
    assert hello["data"]["user_id"] == "alice"
    assert set(hello["data"]) == {"client_id", "message", "user_id", "expires_at"}  # expires_at: when to refresh
    conn = server.hub.connections[hello["data"]["client_id"]]
    assert (conn.identity.user_id, conn.identity.claims["role"]) == ("alice", "ops")  # type: ignore[attr-defined]


async def test_anonymous_clients_still_connect_unless_auth_is_required(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server)
    client = await server.connect()
    assert server.hub.connections[client.id].identity is None
    strict = await jwt_server(wsgate_server, required=True)
    assert await refusal(strict) == (
        401,
        {"error": "authentication required", "detail": "connect with a token (auth.required is on)"},
    )
    assert strict.metrics.error_count("auth_required") == 2  # refusal() asks twice


async def test_browsers_send_the_token_as_a_subprotocol(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server, required=True)
    ws = await server.raw(protocols=("bearer", token("bob")))
    assert ws.protocol == "bearer"  # chosen back, as browsers require
    assert (await ws.receive_json())["data"]["user_id"] == "bob"


async def test_the_query_parameter_is_off_by_default(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server, required=True)
    assert (await refusal(server, params={"token": token()}))[0] == 401
    allowing = await jwt_server(wsgate_server, required=True, jwt_settings={"query_param": True})
    ws = await allowing.raw(params={"token": token("carol")})
    assert (await ws.receive_json())["data"]["user_id"] == "carol"


def valid(**claims: Any) -> str:
    """A token the server of test_bad_tokens accepts, but for `claims`."""
    return token(**{"aud": "wsgate", "iss": "auth", **claims})


def forged_hs256(key: bytes) -> str:
    """An HS256 token "signed" with a public key: the algorithm-confusion attack (PyJWT refuses to make one)."""

    def part(obj: Any) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    signed = part({"alg": "HS256", "typ": "JWT"}) + b"." + part({"sub": "eve", "exp": int(time.time()) + 60})
    signature = base64.urlsafe_b64encode(hmac.new(key, signed, hashlib.sha256).digest()).rstrip(b"=")
    return (signed + b"." + signature).decode()


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: valid(exp=int(time.time()) - 120), "the token has expired"),
        (lambda: valid(nbf=int(time.time()) + 120), "the token is not valid yet"),
        (lambda: valid(key="another-secret-" + "y" * 50), "the token's signature does not verify"),
        (lambda: "not.a.jwt", "the token is malformed"),
        (lambda: valid(exp=None), "the token lacks the 'exp' claim"),
        (lambda: token(iss="auth"), "the token lacks the 'aud' claim"),
        (lambda: valid(aud="someone-else"), "the token is for another audience"),
        (lambda: valid(iss="evil"), "the token is from another issuer"),
        (lambda: valid(algorithm="HS512"), "the token's algorithm is not accepted"),
        (
            lambda: jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"),
            "the token's algorithm is not accepted",
        ),
        (lambda: valid(sub=""), "the token's sub claim must be a non-empty string"),
    ],
)
async def test_bad_tokens_get_401_and_no_websocket(wsgate_server: StartServer, make: Any, detail: str) -> None:
    server = await jwt_server(wsgate_server, jwt_settings={"audience": "wsgate", "issuer": "auth"})
    status, body = await refusal(server, **bearer(make()))
    assert (status, body) == (401, {"error": "invalid token", "detail": detail})
    assert server.metrics.error_count("auth_failed") == 2
    assert not server.hub.connections


async def test_leeway_tolerates_clock_difference(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server, jwt_settings={"leeway": "30s"})
    ws = await server.raw(**bearer(token(exp=int(time.time()) - 10)))
    assert (await ws.receive_json())["type"] == "connected"


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_tokens(wsgate_server: StartServer, tmp_path: Path, kind: str) -> None:
    private = rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (tmp_path / "key.pem").write_text(pem)
    for public_key in (pem, str(tmp_path / "key.pem")):  # the PEM itself, or a file holding it
        server = await wsgate_server(auth={"jwt": {"public_key": public_key}}, plugins=NO_EXAMPLE_AUTH)
        ws = await server.raw(**bearer(token("dave", key=private, algorithm=kind)))
        assert (await ws.receive_json())["data"]["user_id"] == "dave"
        # a token signed with the shared-secret algorithm is refused: no algorithm confusion
        status, body = await refusal(server, **bearer(forged_hs256(pem.encode())))
        assert (status, body["detail"]) == (401, "the token's algorithm is not accepted")


@pytest.mark.parametrize(
    ("jwt_settings", "message"),
    [
        ({"public_key": "/nowhere/key.pem"}, "invalid setting auth.jwt.public_key: cannot read '/nowhere/key.pem'"),
        (
            {"public_key": "-----BEGIN PUBLIC KEY-----\nxx\n"},
            "invalid setting auth.jwt.public_key: expected a PEM public key",
        ),
        (
            {"secret": "s", "public_key": "k"},
            "invalid setting auth.jwt.secret and auth.jwt.public_key: expected one of them, not both",
        ),
        (
            {"secret": "s", "algorithms": ["RS256"]},
            "invalid setting auth.jwt.algorithms = ['RS256']: 'RS256' cannot verify with auth.jwt.secret",
        ),
        (
            {"secret": "s", "algorithms": ["none"]},
            "invalid setting auth.jwt.algorithms = ['none']: 'none' cannot verify",
        ),
        ({"secret": "too-short"}, "invalid setting auth.jwt.secret: expected at least 32 bytes (RFC 7518, 3.2)"),
    ],
)
async def test_bad_jwt_settings_stop_start_up_with_one_line(
    wsgate_server: StartServer, jwt_settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await wsgate_server(auth={"jwt": jwt_settings})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


async def test_the_rooms_claim_limits_where_a_token_may_go(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server)
    client = Peer(await server.raw(**bearer(token(rooms=["chat:*", "news"]))))
    await client.recv()
    await client.subscribe("chat:lobby")
    await client.subscribe("news")
    reply = await client.request({"type": "subscribe", "room": "ops"})
    assert (reply["error"], reply["detail"]) == ("not allowed", "the token's 'rooms' claim does not include 'ops'")
    assert server.metrics.error_count("not_allowed") == 1


RULES = [
    "private-* = identity",
    "user:{sub} = identity",
    "ops:* = claim:admin",
    "vip-* = plugin",
    "closed-* = nobody",
]


async def connect_as(server: Server, sub: str | None, **claims: Any) -> Peer:
    client = Peer(await server.raw(**(bearer(token(sub, **claims)) if sub else {})))
    await client.recv()
    return client


async def denied(client: Peer, room: str, action: str = "subscribe") -> str:
    reply = await client.request({"type": action, "room": room, "data": 1})
    assert reply["error"] == "not allowed", reply
    detail: str = reply["detail"]
    return detail


async def test_room_rules(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server, rooms=RULES)
    anonymous, alice, admin = (
        await connect_as(server, None),
        await connect_as(server, "alice"),
        await connect_as(server, "root", admin=True),
    )
    assert await denied(anonymous, "private-1") == "room 'private-1' requires authentication"
    await alice.subscribe("private-1")
    await alice.subscribe("user:alice")
    assert await denied(alice, "user:bob") == "room 'user:bob' belongs to another sub"
    assert await denied(anonymous, "user:alice") == "room 'user:alice' belongs to another sub"
    assert await denied(alice, "ops:deploys") == "room 'ops:deploys' requires the 'admin' claim"
    await admin.subscribe("ops:deploys")
    assert await denied(admin, "vip-lounge") == "no plugin approved this"
    assert await denied(admin, "closed-archive") == "room 'closed-archive' is closed to clients"
    await anonymous.subscribe("lobby")  # no rule: open, as the spec has it
    assert server.metrics.error_count("not_allowed") == 6


async def test_a_placeholder_matches_exactly_the_claims_own_string(wsgate_server: StartServer) -> None:
    """The security review: with `dm.{sub}.*`, bob could join dm.bob.smith.inbox and bob.smith could not."""
    server = await jwt_server(wsgate_server, rooms=["dm.{sub}.inbox = identity", "org:{org} = identity"])
    bob, bob_smith = await connect_as(server, "bob"), await connect_as(server, "bob.smith")
    assert await denied(bob, "dm.bob.smith.inbox") == "room 'dm.bob.smith.inbox' belongs to another sub"
    await bob_smith.subscribe("dm.bob.smith.inbox")
    await bob.subscribe("dm.bob.inbox")
    for org in (None, 7, True, ["x"]):  # placeholders take strings only: never 'org:None' or 'org:7'
        member = await connect_as(server, "carol", org=org)
        assert await denied(member, f"org:{org}") == f"room {f'org:{org}'!r} belongs to another org"
    await (await connect_as(server, "dave", org="acme")).subscribe("org:acme")


@pytest.mark.parametrize(
    "rule",
    [
        "dm.{sub}.* = identity",
        "inbox:{sub}:* = identity",
        "*:{sub} = identity",
        "{org}.{sub} = identity",
        "x{sub}? = identity",
    ],
)
def test_an_ambiguous_rule_is_refused_at_start_up(rule: str) -> None:
    from wsgate.config import load_settings

    with pytest.raises(ConfigError, match=r"ambiguous: a placeholder beside a wildcard or another placeholder"):
        load_settings(overrides={"auth": {"rooms": [rule]}})


@pytest.mark.parametrize("value", ["false", "0", "no", "true", 1, [0], {"a": 1}, None])
async def test_a_claim_requirement_needs_exactly_true(wsgate_server: StartServer, value: Any) -> None:
    server = await jwt_server(wsgate_server, rooms=RULES)
    client = await connect_as(server, "eve", admin=value)
    assert await denied(client, "ops:deploys") == "room 'ops:deploys' requires the 'admin' claim"


async def test_rules_are_a_floor_plugins_cannot_lower(wsgate_server: StartServer) -> None:
    class AllowEverything:
        @hookimpl
        def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool:
            return True

    server = await jwt_server(wsgate_server, AllowEverything(), rooms=RULES)
    anonymous = await connect_as(server, None)
    assert await denied(anonymous, "private-1") == "room 'private-1' requires authentication"
    await anonymous.subscribe("vip-lounge")  # `plugin` rooms: the plugin's yes decides


async def test_publish_is_checked_like_subscribe(wsgate_server: StartServer) -> None:
    class DenyPublish:
        @hookimpl
        def wsgate_authorize(self, client: Client, action: str, room: str | None) -> bool | None:
            return action != "publish" if room == "vip-lounge" else None

    server = await jwt_server(wsgate_server, DenyPublish(), rooms=RULES)
    admin = await connect_as(server, "root", admin=True)
    await admin.subscribe("vip-lounge")
    reply = await admin.request({"type": "publish", "room": "vip-lounge", "data": 1})
    assert reply == {"type": "error", "error": "not allowed", "timestamp": reply["timestamp"]}
    anonymous = await connect_as(server, None)
    await anonymous.subscribe("lobby")
    assert (await anonymous.request({"type": "publish", "room": "lobby", "data": 1}))["type"] == "message"


async def test_broadcast_can_be_restricted_to_a_claim(wsgate_server: StartServer) -> None:
    server = await jwt_server(wsgate_server, broadcast="claim:admin")
    anonymous, alice, admin = (
        await connect_as(server, None),
        await connect_as(server, "alice"),
        await connect_as(server, "root", admin=True),
    )
    for client, detail in (
        (anonymous, "broadcast requires authentication"),
        (alice, "broadcast requires the 'admin' claim"),
    ):
        reply = await client.request({"type": "broadcast", "data": "hi"})
        assert (reply["error"], reply["detail"]) == ("not allowed", detail)
    assert (await admin.request({"type": "broadcast", "data": "hi"}))["data"] == "hi"
    assert (await anonymous.recv())["data"] == "hi"  # everyone still receives broadcasts


@pytest.mark.parametrize(
    ("rooms", "broadcast", "message"),
    [
        (
            ["private-*"],
            "anyone",
            "invalid setting auth.rooms entry 'private-*': expected \"<room pattern> = <requirement>\"",
        ),
        (["a = everyone"], "anyone", "invalid setting auth.rooms entry 'a = everyone'"),
        (
            [],
            "admins",
            "invalid setting auth.broadcast = 'admins': expected anyone, identity, claim:<name>, plugin or nobody",
        ),
    ],
)
async def test_bad_rules_stop_start_up(
    wsgate_server: StartServer, rooms: list[str], broadcast: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await wsgate_server(auth={"rooms": rooms, "broadcast": broadcast})
    assert str(caught.value).startswith(message)


async def test_the_secret_comes_from_the_environment_and_is_masked(
    wsgate_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsgate.config import describe_settings, load_settings

    monkeypatch.setenv("WSGATE_AUTH__JWT__SECRET", SECRET)
    settings = load_settings()
    assert settings.auth.jwt.secret == SECRET
    row = next(row for row in describe_settings(settings) if row[0] == "auth.jwt.secret")
    assert row == ("auth.jwt.secret", "***", "environment WSGATE_AUTH__JWT__SECRET")


async def test_a_refused_token_is_logged_naming_the_plugin_never_the_token(
    wsgate_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line names the refusing plugin (`jwt`, the built-in) and the reason; the token is not in it."""
    caplog.set_level(logging.INFO, logger="wsgate")
    server = await jwt_server(wsgate_server)
    forged = token(key="another-secret-long-enough-for-hs256-" + "y" * 8)
    assert (await refusal(server, **bearer(forged)))[0] == 401  # (two requests: the handshake, then a GET)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    reason = "401 Unauthorized: invalid token (the token's signature does not verify)"
    assert lines == [f"plugin 'jwt' refused a WebSocket from 127.0.0.1: {reason}"] * 2
    assert not [line for line in lines if forged.split(".")[2] in line]
