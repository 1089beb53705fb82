"""The README's Python examples, run as written."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wsgate.testing import Server, StartServer

from .processes import ROOT


def readme_block(first_line: str) -> str:
    """The fenced python block of README.md whose first line is `first_line`."""
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no python block starting with {first_line!r}")


def write_module(directory: Path, name: str, source: str) -> Any:
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_service_example(tmp_path: Path, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.toml").write_text("[websocket]\nenabled = true\n")  # the cwd of every test
    monkeypatch.setenv("NOTIFY_KEY", "k-notify")
    myservice = write_module(tmp_path, "myservice", readme_block("# myservice.py"))
    server = Server(await aiohttp_server(await myservice.make_app()), aiohttp.ClientSession())
    try:
        client = await server.connect()
        await client.subscribe("clock")
        tick = await client.recv()  # the background task publishes every second
        assert (tick["type"], tick["room"]) == ("room_update", "clock")
        for headers in ({}, {"Authorization": "Bearer wrong"}):  # the example's route is not open to anyone
            async with server.session.post(server.url("/notify"), json={"event": "leak"}, headers=headers) as resp:
                assert resp.status == 401
        async with server.session.post(
            server.url("/notify"), json={"event": "deploy"}, headers={"Authorization": "Bearer k-notify"}
        ) as resp:
            assert await resp.json() == {"queued": 1}
        while (msg := await client.recv())["type"] != "notification":
            assert msg["type"] == "room_update"
        assert msg["data"] == {"event": "deploy"}
    finally:
        await server.session.close()


async def test_echo_plugin_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wsgate_server: StartServer) -> None:
    # the README's module, "installed" under another name: the real wsgate-echo may be installed too
    (tmp_path / "readme_echo.py").write_text(readme_block("# wsgate_echo.py"))
    info = tmp_path / "readme_echo-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-echo\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[wsgate]\nreadme_echo = readme_echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importlib.metadata now finds the entry point
    monkeypatch.delitem(sys.modules, "readme_echo", raising=False)
    server = await wsgate_server(plugins={"disabled": ["echo"]})
    client = await server.connect()
    reply = await client.request({"type": "echo", "data": [1, 2]})
    assert (reply["type"], reply["data"]) == ("echo", [1, 2])
    assert (await client.request({"type": "echo"}))["error"] == "nothing to echo"
    assert server.registry.owners()["echo"] == "readme_echo"


def test_hook_reference_lists_every_hook_specification() -> None:
    from wsgate import hookspecs

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^#### `(wsgate_[a-z_]+)\(", readme, flags=re.M))
    specified = {name for name in dir(hookspecs) if name.startswith("wsgate_")}
    assert documented == specified


def test_every_toml_example_is_valid_settings(tmp_path: Path) -> None:
    """Each TOML block of the README that holds wsgate tables loads (plugin tables aside) without error."""
    from wsgate.config import load_settings

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    checked = 0
    for n, block in enumerate(blocks):
        if "[project" in block or "[build-system]" in block:
            continue  # a plugin's pyproject.toml
        path = tmp_path / f"example{n}.toml"
        path.write_text(block)
        load_settings(path)
        checked += 1
    assert checked >= 3


async def test_resume_example(tmp_path: Path, wsgate_server: StartServer, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    server = await wsgate_server(history={"rooms": ["chat:*"]})
    resume = write_module(tmp_path, "resume", readme_block("# resume.py"))
    running = asyncio.create_task(resume.main(server.url("/ws")))
    try:
        async with asyncio.timeout(5):
            while "{'text': 'hi'}" not in capsys.readouterr().out:
                await asyncio.sleep(0.01)  # polling printed output: there is no event to wait on
    finally:
        running.cancel()
