"""No secret in any output: errors, logs, the exit line, `wsgate config`; no token in any log."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import jwt as pyjwt
import pytest

from wsgate.redaction import Redactor, redact_url

from .processes import environment, run_wsgate, spawn, start_wsgate


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cretpw@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://admin:s3cretpw@host", "rediss://admin:***@host"),
    ("unix://:s3cretpw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("redis://host:6379/0?password=s3cretpw&db=1", "redis://host:6379/0?password=***&db=1"),
    ("see redis://u:p%40ss@h and rediss://:x@y", "see redis://u:***@h and rediss://:***@y"),
])
def test_every_form_of_url_password_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_redactor_masks_secret_values_tokens_and_tracebacks() -> None:
    token = pyjwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")
    redactor = Redactor(["the-api-key-123", "hunter22hunter22"])
    try:
        raise ValueError("bad key the-api-key-123")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s, password %s", (token, "hunter22hunter22"),
                                   exc_info=__import__("sys").exc_info())
    redactor.filter(record)
    assert record.getMessage() == "token ***, password ***"
    assert record.exc_text is not None and "the-api-key-123" not in record.exc_text and "***" in record.exc_text


async def test_a_broker_password_never_reaches_the_exit_line_or_the_log() -> None:
    url = "redis://:s3cretpw@127.0.0.1:1/0"
    code, stderr = await run_wsgate(env=environment(WSGATE_BROKER__URL=url, WSGATE_BROKER__CONNECT_TIMEOUT="1s",
                                                    WEBSOCKET_ENABLED="true"))
    assert code == 2 and "s3cretpw" not in stderr and "redis://:***@127.0.0.1:1/0" in stderr, stderr
    process = await start_wsgate(env=environment(WSGATE_BROKER__URL=url, WSGATE_BROKER__REQUIRED="false",
                                                 WSGATE_BROKER__CONNECT_TIMEOUT="1s", WEBSOCKET_ENABLED="true"))
    try:
        process.proc.terminate()
        await process.finish(20)
    finally:
        await process.kill()
    log = "".join(process.lines)
    assert "cannot reach Redis at redis://:***@" in log and "s3cretpw" not in log, log


async def test_numeric_secrets_from_the_environment_are_text_and_masked() -> None:
    """The security review: WSGATE_API__KEY=1234567890123456789012345 stopped start-up ('expected a string')."""
    env = environment(WSGATE_API__KEY="1234567890123456789012345", WSGATE_DASHBOARD__PASSWORD="123456789012345",
                      WSGATE_DASHBOARD__ENABLED="true", WEBSOCKET_ENABLED="true")
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
    process = await start_wsgate(env=environment(WSGATE_AUTH__JWT__SECRET=secret, WEBSOCKET_ENABLED="true",
                                                 WSGATE_LOGGING__LEVEL="DEBUG"))
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
