"""wsgate's types reach a plugin author's mypy: the wheel ships `wsgate/py.typed` (PEP 561).

wsgate is built into a wheel from this checkout and unpacked into a directory of its own, as pip would install it;
`python -m mypy --strict` then checks plugins against it. Without the marker, mypy treats wsgate as untyped
(`import-untyped`), so the example plugin fails and the mistakes below go unseen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # a wheel build and two mypy runs over wsgate and its dependencies


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding wsgate as installed from its wheel (the wheel built from a copy of the sources)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "wsgate", source / "wsgate", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    site = tmp_path_factory.mktemp("site")
    (wheel,) = wheels.glob("wsgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "wsgate/py.typed" in archive.namelist()
        archive.extractall(site)
    return site


def mypy(installed: Path, plugin: Path) -> subprocess.CompletedProcess[str]:
    """`python -m mypy --strict` on `plugin` (a module file), finding wsgate only where the wheel put it."""
    config = plugin.parent / "mypy.ini"
    config.write_text("[mypy]\n")  # nothing from the user's or this repository's configuration
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("MYPYPATH", None)
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(config), "--cache-dir"]
    command += [str(installed.parent / "mypy-cache"), plugin.name]
    return subprocess.run(command, cwd=plugin.parent, env=env, capture_output=True, text=True, timeout=300)


def test_the_example_echo_plugin_passes_mypy_strict_against_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    plugin = tmp_path / "wsgate_echo.py"
    shutil.copy(ROOT / "plugins" / "wsgate-echo" / "wsgate_echo.py", plugin)
    result = mypy(installed, plugin)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


WRONG = """
from __future__ import annotations

from collections.abc import Mapping

from wsgate import Client, Handler, Message, hookimpl


async def shout(client: Client, message: Message) -> None:
    await client.send(123)


async def one_argument(client: Client) -> None:
    return None


@hookimpl
def wsgate_message_handlers() -> Mapping[str, Handler]:
    return {"shout": shout, "one": one_argument}
"""


def test_mypy_reports_a_plugin_using_wsgate_wrongly(installed: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "wsgate_wrong.py"
    plugin.write_text(WRONG)
    result = mypy(installed, plugin)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 2, result.stdout
    send, handler = errors
    assert send.startswith('wsgate_wrong.py:10: error: Argument 1 to "send" of "Client" has incompatible type "int"')
    assert send.endswith("[arg-type]"), send
    assert handler.startswith("wsgate_wrong.py:19: error: Dict entry 1 has incompatible type"), handler
    assert handler.endswith('expected "str": "Callable[[Client, Message], Awaitable[Any]]"  [dict-item]'), handler
