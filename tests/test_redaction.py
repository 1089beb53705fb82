"""No secret in any output: errors, logs, the exit line, `wsgate config`; no token in any log."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import jwt as pyjwt
import pytest

from wsgate.config import describe_settings, load_settings, secrets_of
from wsgate.redaction import Redactor, redact, redact_url

from .processes import environment, run_wsgate, spawn, start_wsgate


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cretpw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://admin:s3cretpw@host", "rediss://admin:***@host"),
        ("unix://:s3cretpw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("redis://host:6379/0?password=s3cretpw&db=1", "redis://host:6379/0?password=***&db=1"),
        ("see redis://u:p%40ss@h and rediss://:x@y", "see redis://u:***@h and rediss://:***@y"),
        # the user information runs to the LAST `@` before the host (issue 20: `user:***@ss-Hunter2-Redis-Pass@...`)
        ("redis://user:p@ss-Hunter2-Redis-Pass@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://:p@ss@host", "redis://:***@host"),
        ("rediss://u:a@b:c@d@host:6380/0?db=1", "rediss://u:***@host:6380/0?db=1"),
        ("unix://:p@ss@/run/redis.sock", "unix://:***@/run/redis.sock"),
        ("'redis://:p@ss@h' and redis://h/0?x=a@b", "'redis://:***@h' and redis://h/0?x=a@b"),  # an @ past the host
        ("https://ghp_0123456789@github.com/o/r", "https://***@github.com/o/r"),  # a user name alone: a token
        ("mail a@b.example or user@host", "mail a@b.example or user@host"),  # no URL, nothing to mask
        # secret-named query parameters, with or without a URL around them (an access log's request line)
        ("GET /ws?access_token=abc123&room=x HTTP/1.1", "GET /ws?access_token=***&room=x HTTP/1.1"),
        (
            "/x?a=1&api_key=k3y&X-Api-Key=z&auth=u&monkey=banana",
            "/x?a=1&api_key=***&X-Api-Key=***&auth=***&monkey=banana",
        ),
    ],
)
def test_every_form_of_url_password_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
        ("authorization: bearer 0123456789abcdef", "authorization: bearer ***"),
        ("header Bearer abc.def-ghi_jkl~", "header Bearer ***"),
        ("GET /ws?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl HTTP/1.1", "GET /ws?token=*** HTTP/1.1"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl here", "jwt *** here"),
        ("Basic settings and Bearer tokens", "Basic settings and Bearer tokens"),  # prose: no base64 of user:password
    ],
)
def test_credentials_are_masked_by_their_shape(text: str, shown: str) -> None:
    assert redact(text) == shown == Redactor().redact(text)


def test_the_redactor_masks_secret_values_tokens_and_tracebacks() -> None:
    token = pyjwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")
    redactor = Redactor(["the-api-key-123", "hunter22hunter22"])
    try:
        raise ValueError("bad key the-api-key-123")
    except ValueError:
        record = logging.LogRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "token %s, password %s",
            (token, "hunter22hunter22"),
            exc_info=__import__("sys").exc_info(),
        )
    redactor.filter(record)
    assert record.getMessage() == "token ***, password ***"
    assert record.exc_text is not None and "the-api-key-123" not in record.exc_text and "***" in record.exc_text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("redis://:s3cretpw@127.0.0.1:1/0", "s3cretpw", "redis://:***@127.0.0.1:1/0"),
        ("redis://user:p@ss-Hunter2-Redis-Pass@127.0.0.1:1/0", "Hunter2", "redis://user:***@127.0.0.1:1/0"),
        ("rediss://:p@ss@Hunter3@127.0.0.1:1/0", "Hunter3", "rediss://:***@127.0.0.1:1/0"),
    ],
)
async def test_a_broker_password_never_reaches_the_exit_line_the_log_or_config(
    url: str, password: str, shown: str
) -> None:
    code, stderr = await run_wsgate(
        env=environment(WSGATE_BROKER__URL=url, WSGATE_BROKER__CONNECT_TIMEOUT="1s", WEBSOCKET_ENABLED="true")
    )
    assert code == 2 and password not in stderr and shown in stderr, stderr
    config = await spawn(
        __import__("sys").executable, "-m", "wsgate", "config", env=environment(WSGATE_BROKER__URL=url), stdout=True
    )
    out, _ = await config.proc.communicate()
    assert f'broker.url = "{shown}"  # environment WSGATE_BROKER__URL' in out.decode().splitlines(), out.decode()
    process = await start_wsgate(
        env=environment(
            WSGATE_BROKER__URL=url,
            WSGATE_BROKER__REQUIRED="false",
            WSGATE_BROKER__CONNECT_TIMEOUT="1s",
            WEBSOCKET_ENABLED="true",
        )
    )
    try:
        process.proc.terminate()
        await process.finish(20)
    finally:
        await process.kill()
    log = "".join(process.lines)
    assert f"cannot reach Redis at {shown}" in log and password not in log, log


async def test_numeric_secrets_from_the_environment_are_text_and_masked() -> None:
    """The security review: WSGATE_API__KEY=1234567890123456789012345 stopped start-up ('expected a string')."""
    env = environment(
        WSGATE_API__KEY="1234567890123456789012345",
        WSGATE_DASHBOARD__PASSWORD="123456789012345",
        WSGATE_DASHBOARD__ENABLED="true",
        WEBSOCKET_ENABLED="true",
    )
    code, stderr = await run_wsgate("config", env=env)
    process = await spawn(__import__("sys").executable, "-m", "wsgate", "config", env=env, stdout=True)
    assert process.proc.stdout is not None
    shown = (await process.proc.stdout.read()).decode()
    await process.finish(20)
    assert code == 0, stderr
    assert "api.key = ***  # environment WSGATE_API__KEY" in shown
    assert "dashboard.password = ***" in shown and "1234567890" not in shown


async def test_a_token_offered_as_a_subprotocol_never_reaches_the_log() -> None:
    secret = "s" * 40
    token = pyjwt.encode({"sub": "alice", "exp": 4_000_000_000}, secret, algorithm="HS256")
    process = await start_wsgate(
        env=environment(WSGATE_AUTH__JWT__SECRET=secret, WEBSOCKET_ENABLED="true", WSGATE_LOGGING__LEVEL="DEBUG")
    )
    try:
        async with aiohttp.ClientSession() as session:
            for protocols in (("x-other", token), (token,), ("x", "opaque-secret-value-42")):  # no "bearer" pair
                async with session.ws_connect(process.url("/ws"), protocols=protocols) as ws:
                    await ws.receive_json()
        process.proc.terminate()
        await process.finish(20)
    finally:
        await process.kill()
    log = "".join(process.lines)
    assert "subprotocols" in log and token not in log and token.split(".")[1] not in log, log
    assert "opaque-secret-value-42" not in log


PLUGIN_OPTIONS = """
[plugins.upstream]
auth = "Basic dXNlcjpIdW50ZXI0LXBhc3M="
header = "Bearer Hunter5-0123456789"
forward = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJIdW50ZXI2In0.c2lnbmF0dXJl"
mirrors = ["redis://u:p@ss-Hunter7@h1:6379/0", "rediss://:Hunter8@h2"]
target = "https://api.example/x?access_token=Hunter9-token&page=2"
[plugins.upstream.nested]
dsn = "postgres://app:Hunter10@db/app"
"""


async def test_credential_shaped_plugin_options_are_masked_whatever_their_name(tmp_path: Path) -> None:
    """Issue 20: a plugin option named `auth` holding `Basic ...` was shown by `wsgate config`; its siblings
    of the same kind (Bearer, a JWT, URLs with user information in a list and a nested table, a token in a
    query) under names that do not look secret."""
    file = tmp_path / "options.toml"
    file.write_text(PLUGIN_OPTIONS)
    process = await spawn(__import__("sys").executable, "-m", "wsgate", "config", "--settings", str(file), stdout=True)
    out, err = await process.proc.communicate()
    shown = out.decode()
    assert process.proc.returncode == 0, err.decode()
    for secret in (
        "dXNlcjpIdW50ZXI0",
        "Hunter4",
        "Hunter5",
        "Hunter6",
        "eyJ",
        "Hunter7",
        "Hunter8",
        "Hunter9",
        "Hunter10",
    ):
        assert secret not in shown, (secret, shown)
    lines = shown.splitlines()
    assert f"plugins.upstream.auth = ***  # file {file}" in lines
    assert f"plugins.upstream.header = ***  # file {file}" in lines
    assert f'plugins.upstream.mirrors = ["redis://u:***@h1:6379/0", "rediss://:***@h2"]  # file {file}' in lines
    assert f'plugins.upstream.target = "https://api.example/x?access_token=***&page=2"  # file {file}' in lines
    assert f'plugins.upstream.nested = {{dsn = "postgres://app:***@db/app"}}  # file {file}' in lines


def test_credential_shaped_values_are_masked_in_logs_in_any_form(tmp_path: Path) -> None:
    """A plugin that logs its option in another form (the decoded password, the bare token) is masked too."""
    file = tmp_path / "options.toml"
    file.write_text(PLUGIN_OPTIONS)
    redactor = Redactor(secrets_of(load_settings(file)))
    for text in (
        "p@ss-Hunter7",
        "Hunter5-0123456789",
        "Hunter8",
        "Hunter9-token",
        "Hunter10",
        "dXNlcjpIdW50ZXI0LXBhc3M=",
    ):
        assert redactor.redact(f"upstream said {text}!") == "upstream said ***!", text
    assert describe_settings(load_settings(file), file)  # (the same values, through the listing)
