"""The JavaScript client's TypeScript declarations (`wsgate/static/client.d.ts`) describe `client.js` as it is.

- `tsc --noEmit` (strict, TypeScript pinned in `tests/ts/package.json` and its lock file, installed by `npm ci`
  into `tests/ts/node_modules` when missing) passes on `tests/ts/example.ts`, the API used as the docs use it, and on
  the TypeScript example of `docs/install.md` (read from the page);
- it fails on `tests/ts/wrong.ts` with one error on each line marked `// error:`, so a declaration that accepted
  anything would fail this test;
- the declarations name every public method, constructor option and event of `client.js` (read from its source),
  so a method added to the client without its declaration fails here.

Without npm the tsc tests are skipped on a workstation and fail under `CI=true` (`.ci/run` installs npm).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .processes import require_tool

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "tests" / "ts"
CLIENT_JS = ROOT / "wsgate" / "static" / "client.js"
CLIENT_D_TS = ROOT / "wsgate" / "static" / "client.d.ts"
INSTALL_PAGE = ROOT / "docs" / "install.md"
TSC = TS / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="module")
def tsc() -> Path:
    """The pinned `tsc`, installed with `npm ci` (from package-lock.json) when missing or of another version."""
    pinned = json.loads((TS / "package.json").read_text())["devDependencies"]["typescript"]
    if TSC.exists() and _run([str(TSC), "--version"], TS).stdout.strip() == f"Version {pinned}":
        return TSC
    npm = shutil.which("npm")
    require_tool(npm is not None, "TYPESCRIPT TESTS", "npm is not installed (apt-get install npm)")
    assert npm is not None
    installed = _run([npm, "ci", "--no-audit", "--no-fund"], TS, timeout=600)
    assert installed.returncode == 0, f"npm ci in {TS} failed:\n{installed.stdout}{installed.stderr}"
    return TSC


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_typed_example_passes_tsc_strict(tsc: Path) -> None:
    result = _run([str(tsc), "--project", "tsconfig.json"], TS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_wrong_uses_fail_tsc_on_exactly_the_marked_lines(tsc: Path) -> None:
    result = _run([str(tsc), "--project", "tsconfig.wrong.json"], TS)
    assert result.returncode != 0, "tsc accepted wrong.ts: the declarations let wrong calls through"
    reported = {int(line) for line in re.findall(r"^wrong\.ts\((\d+),\d+\): error TS", result.stdout, re.M)}
    lines = (TS / "wrong.ts").read_text().splitlines()
    marked = {number for number, line in enumerate(lines, 1) if "// error:" in line}
    assert reported == marked, result.stdout + result.stderr


@pytest.mark.slow
def test_the_install_page_typescript_example_passes_tsc(tsc: Path, tmp_path: Path) -> None:
    """docs/install.md's tsconfig.json and TypeScript blocks, with client.d.ts where the page says to put it."""
    page = INSTALL_PAGE.read_text()
    blocks = re.findall(r"<!-- tested by tests/test_typescript\.py -->\n```(\w+)\n(.*?)```", page, re.S)
    by_language = dict(blocks)
    assert set(by_language) == {"json", "typescript"}, f"expected a tsconfig and a TypeScript block: {blocks}"
    (tmp_path / "tsconfig.json").write_text(by_language["json"])
    (tmp_path / "types").mkdir()
    shutil.copy(CLIENT_D_TS, tmp_path / "types" / "wsgate-client.d.ts")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "chat.ts").write_text(by_language["typescript"])
    result = _run([str(tsc), "--project", "tsconfig.json"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = _run([str(tsc), "--project", "tsconfig.json", "--listFilesOnly"], tmp_path).stdout
    assert "wsgate-client.d.ts" in listed, f"the page's import did not resolve to the declarations:\n{listed}"


def _declared_block(name: str) -> str:
    pattern = rf"^export (?:interface|class) {name}\b[^{{]*\{{\n(.*?)^\}}"
    match = re.search(pattern, CLIENT_D_TS.read_text(), re.M | re.S)
    assert match, f"client.d.ts declares no {name}"
    return match.group(1)


def test_every_public_method_of_the_client_is_declared() -> None:
    source = CLIENT_JS.read_text()
    public = source[source.index("export class WsgateClient") : source.index("// --- internals")]
    methods = set(re.findall(r"^  (?:async )?(\w+)\(", public, re.M)) - {"constructor", "emit"}
    declared = set(re.findall(r"^  (\w+)(?:<[^>]*>)?\(", _declared_block("WsgateClient"), re.M)) - {"constructor"}
    assert methods, "no method found in client.js"
    assert methods == declared, f"client.js: {sorted(methods)}; client.d.ts: {sorted(declared)}"


def test_every_constructor_option_is_declared() -> None:
    typedef = CLIENT_JS.read_text().split("@typedef {Object} ClientOptions", 1)[1].split("*/", 1)[0]
    options = set(re.findall(r"@property \{.*?\} \[(\w+)", typedef))
    declared = set(re.findall(r"^  (\w+)\?:", _declared_block("ClientOptions"), re.M))
    assert options == declared, f"client.js: {sorted(options)}; client.d.ts: {sorted(declared)}"


def test_every_event_the_client_emits_is_declared() -> None:
    emitted = set()
    for line in CLIENT_JS.read_text().splitlines():
        if "this.emit(" in line:
            emitted |= set(re.findall(r'"(\w+)"', line.split("this.emit(", 1)[1]))
    declared = set(re.findall(r"^  (\w+):", _declared_block("WsgateClientEvents"), re.M))
    # message, presence_diff and unsubscribed arrive through this.emit(message.type, message)
    assert emitted | {"message", "presence_diff", "unsubscribed"} == declared, sorted(emitted)
