"""Settings come from exactly the file the user means, whatever the entry point (issue 20, item 5).

The input: in a directory with its own settings.toml, the `wsgate` command and gunicorn from the checkout's
.venv read the checkout's settings.toml (dynaconf looked for the relative name in the script's directory and
its parents first). Every entry point runs here from another directory, and must read that directory's file.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from .processes import ROOT, Process, environment

BIN = Path(sys.executable).parent  # the checkout's .venv/bin: its scripts are what `make run` users run
ENTRY_POINTS = {
    "python -m wsgate": (sys.executable, "-m", "wsgate"),
    "the wsgate command": (str(BIN / "wsgate"),),
}
GUNICORN = {
    "gunicorn with wsgate.gunicorn_conf": (str(BIN / "gunicorn"), "-c", "python:wsgate.gunicorn_conf"),
    "gunicorn with wsgate's worker": (str(BIN / "gunicorn"), "--worker-class", "wsgate.worker.GatewayWorker"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def spawn_in(cwd: Path, *args: str, env: dict[str, str] | None = None, stdout: bool = False) -> Process:
    """Like `processes.spawn`, in the directory `cwd` (never the checkout)."""
    assert cwd.resolve() != ROOT and (ROOT / "settings.toml").is_file()
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env or environment(),
        cwd=cwd,
    )
    return Process(proc)


OWN_PLUGIN = "from wsgate import hookimpl\n\n@hookimpl\ndef wsgate_message_handlers():\n    return {}\n"


def own_settings(directory: Path, port: int, name: str = "settings.toml", cwd: Path | None = None) -> Path:
    """A settings file unlike the checkout's: its own port and metrics path, and a plugin module that lives in
    the working directory `cwd` (each entry point must find it there: the `wsgate` command's sys.path lacks it)."""
    file = directory / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(
        f'[websocket]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
        '[metrics]\npath = "/own-metrics"\n[plugins]\nmodules = ["wsgate_own_plugin"]\n'
    )
    (cwd or directory).joinpath("wsgate_own_plugin.py").write_text(OWN_PLUGIN)
    return file


async def answers(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status


@pytest.mark.parametrize("variable", [False, True], ids=["./settings.toml", "relative WSGATE_SETTINGS"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
async def test_the_cli_entry_points_serve_the_settings_of_their_working_directory(
    tmp_path: Path, entry: str, variable: bool
) -> None:
    port = free_port()
    file = own_settings(
        tmp_path / "conf" if variable else tmp_path, port, "wsgate.toml" if variable else "settings.toml", tmp_path
    )
    env = environment(WSGATE_SETTINGS="conf/wsgate.toml") if variable else environment()
    process = await spawn_in(tmp_path, *ENTRY_POINTS[entry], env=env)
    try:
        await process.wait_for_line(rf"wsgate: settings: {file}$")  # the absolute path, before listening
        await process.wait_for_line(r"plugins: .*wsgate_own_plugin \(settings: plugins\.modules\)")
        await process.wait_for_line(rf"listening on 127\.0\.0\.1:{port}\b")
        process.port = port
        assert await answers(process.url("/own-metrics")) == 200
    finally:
        await process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(GUNICORN))
async def test_gunicorn_serves_the_settings_of_its_working_directory(tmp_path: Path, entry: str) -> None:
    file = own_settings(tmp_path, free_port())  # (gunicorn binds its own --bind, not websocket.port)
    process = await spawn_in(
        tmp_path, *GUNICORN[entry], "wsgate.app:create_app", "--bind", "127.0.0.1:0", "--workers", "1"
    )
    try:
        process.port = int((await process.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)")).group(1))
        await process.wait_for_line(rf"wsgate\.app: settings: {file}$")
        assert await answers(process.url("/own-metrics")) == 200
    finally:
        await process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
async def test_config_and_check_read_the_settings_of_their_working_directory(tmp_path: Path, entry: str) -> None:
    port = free_port()
    file = own_settings(tmp_path, port)
    process = await spawn_in(tmp_path, *ENTRY_POINTS[entry], "config", stdout=True)
    out, err = await process.proc.communicate()
    assert process.proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == f"# settings: {file}"
    assert f"websocket.port = {port}  # file {file}" in lines
    assert f'metrics.path = "/own-metrics"  # file {file}' in lines

    process = await spawn_in(tmp_path, *ENTRY_POINTS[entry], "check", stdout=True)
    out, err = await process.proc.communicate()
    assert process.proc.returncode == 0 and out.decode().rstrip().endswith(f"; settings: {file}"), err.decode()

    file.write_text("[websocket]\nport = 99999\n")  # a file `python -m wsgate` rejects: `wsgate check` rejects it too
    process = await spawn_in(tmp_path, *ENTRY_POINTS[entry], "check")
    assert await process.finish(20) == 2
    assert "".join(process.lines).strip() == (
        "wsgate: invalid setting websocket.port = 99999: expected a value from 0 to 65535"
    )
