"""Start wsgate as a real process (python -m wsgate, gunicorn) and find the port it bound."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


class Process:
    """A running server process; its stderr is collected while it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        """Read stderr until a line matches `pattern` (bounded by START_TIMEOUT)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError("process exited early:\n" + "".join(self.lines))
                line = raw.decode()
                self.lines.append(line)
                match = re.search(pattern, line)
                if match:
                    return match

    async def finish(self, timeout: float) -> int:
        """Wait for exit (bounded), collecting the rest of stderr; returns the exit code."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            rest = await self.proc.stderr.read()
            self.lines.append(rest.decode())
            return await self.proc.wait()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "WSGATE_"))}
    env.update(extra)
    return env


async def spawn(*args: str, env: dict[str, str] | None = None, stdout: bool = False) -> Process:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env or environment(),
        cwd=ROOT,
    )
    return Process(proc)


async def start_wsgate(*args: str, env: dict[str, str] | None = None) -> Process:
    """`python -m wsgate --host 127.0.0.1 --port 0 ARGS`, waiting until it listens."""
    process = await spawn(sys.executable, "-m", "wsgate", "--host", "127.0.0.1", "--port", "0", *args, env=env)
    match = await process.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)")
    process.port = int(match.group(1))
    return process


async def run_wsgate(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `python -m wsgate ARGS` to completion; returns (exit code, stderr)."""
    process = await spawn(sys.executable, "-m", "wsgate", *args, env=env)
    code = await process.finish(START_TIMEOUT)
    return code, "".join(process.lines)


async def publish_then_sigterm(
    server: Process, sockets: Sequence[aiohttp.ClientWebSocketResponse], room: str, timeout: float
) -> None:
    """`sockets[0]` publishes "hi" to `room` and every socket (each subscribed to it) gets it; then SIGTERM
    closes each with 1001, and the process exits 0 within `timeout` seconds, without a traceback."""
    await sockets[0].send_json({"type": "publish", "room": room, "data": "hi"})
    for ws in sockets:
        assert (await ws.receive_json())["data"] == "hi"
    server.proc.send_signal(signal.SIGTERM)
    for ws in sockets:
        closing = await ws.receive(timeout=timeout)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert await server.finish(timeout=timeout) == 0
    assert "Traceback" not in "".join(server.lines)


def require_tool(found: bool, tests: str, missing: str) -> None:
    """The machine tool `tests` need (Chromium, nginx, npm, systemd-analyze) is there, or they stop here, loudly:
    a failure under CI (`.ci/run` and `make test` install each one; a missing tool is a broken machine), a skip
    naming the missing package on a developer's machine without root. Never a silent pass."""
    if found:
        return
    import pytest

    message = f"{tests} DID NOT RUN: {missing}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
