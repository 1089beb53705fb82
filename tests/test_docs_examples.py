"""The docs pages' examples, run as written: each block is read from its page (docs/*.md)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wsgate.testing import Server, StartServer

from .processes import ROOT, require_tool


def page_block(page: str, first_line: str, lang: str = "python") -> str:
    """The fenced `lang` block of docs/`page` whose first line is `first_line` (any first line when empty)."""
    for block in re.findall(rf"```{lang}\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"docs/{page} has no {lang} block starting with {first_line!r}")


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
    myservice = write_module(tmp_path, "myservice", page_block("clients.md", "# myservice.py"))
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
    # the page's module, "installed" under another name: the real wsgate-echo may be installed too
    (tmp_path / "readme_echo.py").write_text(page_block("plugins.md", "# wsgate_echo.py"))
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


def test_every_toml_example_is_valid_settings(tmp_path: Path) -> None:
    """Each TOML block of the docs that holds wsgate tables loads (plugin tables aside) without error."""
    from wsgate.config import load_settings

    pages = "".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
    blocks = re.findall(r"```toml\n(.*?)```", pages, flags=re.S)
    checked = 0
    for n, block in enumerate(blocks):
        if "[project" in block or "[build-system]" in block:
            continue  # a plugin's pyproject.toml
        path = tmp_path / f"example{n}.toml"
        path.write_text(block)
        load_settings(path)
        checked += 1
    assert checked >= 3


async def test_resume_example(tmp_path: Path, wsgate_server: StartServer) -> None:
    import asyncio

    server = await wsgate_server(history={"rooms": ["chat:*"]})
    resume = write_module(tmp_path, "resume", page_block("clients.md", "# resume.py"))
    printed: asyncio.Queue[tuple[object, ...]] = asyncio.Queue()
    resume.print = lambda *args: printed.put_nowait(args)  # (the module's own print: each line is an event)
    running = asyncio.create_task(resume.main(server.url("/ws")))
    try:
        async with asyncio.timeout(5):
            while await printed.get() != ({"text": "hi"},):
                pass
    finally:
        running.cancel()


async def test_plugin_test_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wsgate_server: StartServer) -> None:
    """plugins.md's `tests/test_echo.py`, run against plugins.md's `wsgate_echo.py` (the installed echo disabled)."""
    echo = write_module(tmp_path, "wsgate_echo", page_block("plugins.md", "# wsgate_echo.py"))
    monkeypatch.setitem(sys.modules, "wsgate_echo", echo)  # what the example's `import wsgate_echo` finds
    example = write_module(tmp_path, "test_echo_example", page_block("plugins.md", "# tests/test_echo.py"))

    async def without_installed_echo(*plugins: object, **tables: Any) -> Server:
        return await wsgate_server(*plugins, plugins={"disabled": ["echo"]}, **tables)

    await example.test_echo(without_installed_echo)


@pytest.mark.slow  # Chromium
async def test_tutorial_chat(tmp_path: Path, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """tutorial.md's chat.html and chat.py: two browser pages chat, and the backend's greeting reaches the first."""
    from .test_browser import CHROMIUM

    require_tool(
        Path(CHROMIUM).exists(),
        "THE TUTORIAL'S BROWSER TEST",
        "Debian's chromium is not installed (apt-get install chromium)",
    )
    from playwright.async_api import async_playwright, expect

    (tmp_path / "chat.html").write_text(page_block("tutorial.md", "", lang="html"))
    chat = write_module(tmp_path, "chat", page_block("tutorial.md", "# chat.py"))
    server = await aiohttp_server(await chat.make_app())
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            first, second = await browser.new_page(), await browser.new_page()
            await first.goto(str(server.make_url("/")))
            await expect(first.locator("button")).to_be_enabled()  # the page is in the room
            await second.goto(str(server.make_url("/")))
            await expect(second.locator("button")).to_be_enabled()
            await expect(first.locator("#messages li")).to_contain_text(["joined"])  # the backend's greeting
            await second.locator("#text").fill("hello")
            await second.locator("#text").press("Enter")
            await expect(first.locator("#messages li").last).to_have_text("you: hello")
            await expect(second.locator("#messages li").last).to_have_text("you: hello")
        finally:
            await browser.close()
