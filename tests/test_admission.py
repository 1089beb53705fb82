"""Slow and unfinished HTTP requests cannot starve the server (the security review's slowloris).

Sockets count against their address from accept() on, whatever their stage; a connection without a
complete request within `security.request_timeout` is closed; running out of file descriptors is
logged once per interval, and the server recovers by itself.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import aiohttp
import pytest

from wsgate.testing import StartServer

from .processes import spawn

pytestmark = pytest.mark.slow  # slow sockets and descriptor exhaustion

SLOW_START = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"


STILL_OPEN = b"still open"


async def slow_client(port: int, source: str, stop: asyncio.Event) -> bytes:
    """Connect from `source`, start a request and send one more header line every 200 ms until told to stop;
    returns what the server answered before it closed (or reset) the socket, or STILL_OPEN."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    answer = b""
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, SLOW_START)
        n = 0
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.2)
            except TimeoutError:
                n += 1
                await loop.sock_sendall(sock, b"X-Slow-%d: 1\r\n" % n)  # never the blank line that ends headers
                continue
            if not chunk:
                return answer  # closed by the server
            answer += chunk
        return STILL_OPEN
    except OSError:  # reset by the server (a refused socket is aborted 1 s after its answer, read or not)
        return answer
    finally:
        sock.close()


async def test_slow_requests_from_one_address_do_not_starve_the_server(wsgate_server: StartServer) -> None:
    """300 sockets from one address, each sending a header line now and then (max_connections_per_ip = 5)."""
    server = await wsgate_server(
        websocket={"limits": {"max_connections_per_ip": 5}}, security={"request_timeout": "1s"}
    )
    port = server.test_server.port
    assert port is not None
    stop = asyncio.Event()
    slow = [asyncio.create_task(slow_client(port, "127.0.0.2", stop)) for _ in range(300)]
    try:
        status, body = await server.health()  # from 127.0.0.1, meanwhile
        assert (status, body["status"]) == (200, "healthy")
        newcomer = await server.connect()
        assert (await newcomer.request({"type": "ping"}))["type"] == "pong"
        async with asyncio.timeout(10):  # every one is answered or closed, none is kept open
            answers = await asyncio.gather(*slow)
    finally:
        stop.set()
    assert STILL_OPEN not in answers  # every socket was answered, timed out or reset: none is held
    read_429 = [a for a in answers if a.startswith(b"HTTP/1.1 429")]  # (under load, a reset can come first)
    assert read_429 and b'"too many connections from this address"' in read_429[0]
    refused = server.metrics.error_count("address_limit")
    assert len(read_429) <= refused and 5 <= 300 - refused <= 30  # the rest got in, five at a time, and timed out
    assert set(answers) <= {b"", *read_429}
    assert "127.0.0.2" not in server.hub.addresses


async def test_out_of_file_descriptors_is_logged_once_and_the_server_recovers() -> None:
    """A server limited to 256 file descriptors; 300 slow sockets, each from its own address, held until the server
    has run out (its request_timeout is longer than the test: how fast the sockets connect does not matter); then
    they leave, and the server accepts again."""
    process = await spawn(
        "sh",
        "-c",
        f"ulimit -n 256 && exec {sys.executable} -m wsgate --host 127.0.0.1 --port 0",
        env={**_env(), "WSGATE_SECURITY__REQUEST_TIMEOUT": "60s"},
    )
    try:
        match = await process.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)")
        port = int(match.group(1))
        stop = asyncio.Event()
        sources = [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(300)]
        slow = [asyncio.create_task(slow_client(port, source, stop)) for source in sources]
        await process.wait_for_line("cannot accept connections")  # it ran out, and said so
        stop.set()  # the slow sockets close: descriptors are freed, accepting resumes
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with session.get(
                            f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=2)
                        ) as resp:
                            if resp.status == 200:
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.1)  # the server is out of descriptors: nothing to wait on but time
        await asyncio.gather(*slow)
        process.proc.terminate()
        await process.finish(20)
        log = "".join(process.lines)
        assert 1 <= log.count("cannot accept connections") <= 3, log[-3000:]  # it ran out, and said so once
        assert "Traceback" not in log and "out of system resource" not in log, log[-3000:]
    finally:
        await process.kill()


def _env() -> dict[str, str]:
    from .processes import environment

    return environment(WEBSOCKET_ENABLED="true", WSGATE_SECURITY__REQUEST_TIMEOUT="1s")


def test_after_shutdown_a_late_accept_retry_is_quiet_and_everything_else_goes_to_the_previous_handler() -> None:
    """Found under load: asyncio's accept() retry, due a second after the server ran out of descriptors, fired
    after shutdown had put the previous handler back, and logged a traceback (`AfterShutdown`)."""
    from wsgate.admission import AfterShutdown

    class Retry:
        def __repr__(self) -> str:
            return "<TimerHandle BaseSelectorEventLoop._start_serving(...)>"

    seen: list[dict[str, Any]] = []
    handler = AfterShutdown(lambda loop, context: seen.append(context))
    loop = asyncio.new_event_loop()
    try:
        handler(loop, {"message": "late", "exception": ValueError("Invalid file descriptor: -1"), "handle": Retry()})
        other = {"message": "something else", "exception": RuntimeError("boom")}
        handler(loop, other)
    finally:
        loop.close()
    assert seen == [other]
