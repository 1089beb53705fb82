"""The documentation (docs/) is true: every code block runs or is marked, and nothing in the code is undocumented.

Every fenced block of `docs/*.md` is checked by its language, unless the line right before its fence is
`<!-- tested by tests/test_x.py -->` (that test reads the block from the page: checked here) or
`<!-- not runnable: <reason> -->`. A block with neither that this runner cannot check fails. In the spirit of
datasette's tests/test_docs.py, each setting, hook, metric, error and close code must appear in the generated
references (docs/_ext/wsgate_refs.py, which `make docs` renders), and each module-level feature the README listed
before the docs existed must be reachable from a page.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .processes import ROOT

DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import wsgate_refs  # noqa: E402

MARKER = re.compile(r"<!-- (tested by (tests/test_\w+\.py)|not runnable: .+) -->")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # "" when the line before the fence is no marker

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.lang or 'no language'})"


def blocks() -> list[Block]:
    """Every fenced block of every page (MyST directives, whose info string starts with "{", aside)."""
    found = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text().splitlines()
        n = 0
        while n < len(lines):
            fence = re.match(r"^(`{3,})(.*)$", lines[n])
            if not fence:
                n += 1
                continue
            end = next(k for k in range(n + 1, len(lines)) if lines[k].startswith(fence.group(1)))
            lang = fence.group(2).strip()
            before = lines[n - 1] if n else ""
            if not lang.startswith("{"):
                marker = before if MARKER.fullmatch(before.strip()) else ""
                found.append(Block(path.name, n + 1, lang, "\n".join(lines[n + 1 : end]) + "\n", marker))
            n = end + 1
    return found


BLOCKS = blocks()


def check_python(block: Block, tmp_path: Path) -> None:
    """Compiled (top-level await allowed) and, when it is a module (`# name.py` first), imported."""
    code = compile(block.text, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    name = re.match(r"# ([\w/]+)\.py\n", block.text)
    assert name, f"{block}: a runnable python block starts with `# <module>.py`, or is marked"
    module = name.group(1).replace("/", "_")
    namespace = {"__name__": f"docs_{module}", "__file__": str(tmp_path / f"{module}.py")}
    exec(code, namespace)  # definitions only: `if __name__ == "__main__"` blocks do not run


def check_toml(block: Block, tmp_path: Path) -> None:
    """A plugin's pyproject.toml is parsed; any other TOML block loads as wsgate settings."""
    from wsgate.config import load_settings

    if "[project" in block.text or "[build-system]" in block.text:
        tomllib.loads(block.text)
        return
    path = tmp_path / "settings.toml"
    path.write_text(block.text)
    load_settings(path)


def check_shell(block: Block, tmp_path: Path) -> None:
    """bash -n: the commands parse (console blocks: the lines after a `$ ` prompt)."""
    text = block.text
    if block.lang == "console":
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ ")) + "\n"
        assert text.strip(), f"{block}: a console block without a `$ ` command"
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, f"{block}: {result.stderr}"


def check_javascript(block: Block, tmp_path: Path) -> None:
    """node --check: the module parses (top-level await and imports included)."""
    node = shutil.which("node")
    assert node, "node is needed to check the docs' JavaScript (apt-get install nodejs; .ci/run installs it)"
    path = tmp_path / "example.mjs"
    path.write_text(block.text)
    result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{block}: {result.stderr}"


CHECKS = {
    "python": check_python,
    "toml": check_toml,
    "json": lambda block, _tmp: json.loads(block.text),
    "yaml": lambda block, _tmp: yaml.safe_load(block.text),
    "bash": check_shell,
    "console": check_shell,
    "javascript": check_javascript,
}


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_code_block_runs_or_is_marked(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tested = MARKER.fullmatch(block.marker.strip()) if block.marker else None
    if tested and tested.group(2):
        test_file = ROOT / tested.group(2)
        assert test_file.is_file(), f"{block}: {tested.group(2)} does not exist"
        assert block.page in test_file.read_text(), f"{block}: {tested.group(2)} never reads {block.page}"
        return
    if tested:
        return  # not runnable, with its reason
    check = CHECKS.get(block.lang)
    assert check, f"{block}: no way to run a {block.lang or 'plain'} block: mark it tested by or not runnable"
    monkeypatch.chdir(tmp_path)
    check(block, tmp_path)


def test_the_runner_found_the_pages_blocks() -> None:
    pages = {block.page for block in BLOCKS}
    assert {"quickstart.md", "protocol.md", "plugins.md", "clients.md", "tutorial.md"} <= pages
    assert len(BLOCKS) > 50


# --- nothing undocumented ------------------------------------------------------------------------------------


def reference_pages() -> str:
    return "".join(path.read_text() for path in DOCS.glob("*.md"))


def test_each_reference_is_rendered_on_a_page() -> None:
    pages = reference_pages()
    for directive in wsgate_refs.GENERATORS:
        assert f"```{{{directive}}}" in pages, f"no page renders {directive}"


def test_every_setting_is_in_the_configuration_reference() -> None:
    from wsgate.config import env_name, iter_settings

    table = wsgate_refs.settings_markdown()
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `([A-Z_]+)` \|", table, flags=re.M))
    assert rows == {key: env_name(key) for key, _info, _type in iter_settings()}
    for key, info, _type in iter_settings():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{key}` |"))
        assert info.doc and info.doc.replace("|", "\\|") in row, key


def test_every_hook_is_in_the_hook_reference() -> None:
    from wsgate import hookspecs

    specified = {name for name in dir(hookspecs) if name.startswith("wsgate_")}
    reference = wsgate_refs.hooks_markdown()
    assert set(re.findall(r"^\*\*`(wsgate_[a-z_]+)\(", reference, flags=re.M)) == specified
    for name in specified:
        assert " ".join((getattr(hookspecs, name).__doc__ or "").split()[:6]) in " ".join(reference.split()), name
    details = (DOCS / "plugins.md").read_text()  # the per-hook details, written by hand, cover each hook too
    assert set(re.findall(r"^#### `(wsgate_[a-z_]+)\(", details, flags=re.M)) == specified


def test_every_metric_is_in_the_metrics_list() -> None:
    from wsgate.metrics import Metrics

    families = list(Metrics().registry.collect())
    listed = wsgate_refs.metrics_markdown()
    assert len(families) == len(wsgate_refs.metrics_rows()) >= 15
    for family in families:
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"| `{exposed}` | {family.type} |" in listed, exposed


def test_every_error_and_close_code_is_in_the_tables() -> None:
    from wsgate import errors as errors_module
    from wsgate.errors import CLIENT_ERRORS, CLOSE_REASONS

    errors, closes = wsgate_refs.errors_markdown(), wsgate_refs.close_reasons_markdown()
    for kind in CLIENT_ERRORS:
        assert f"| `{kind.text}` | `{kind.label}` | {kind.code} |" in errors, kind.text
    for reason in CLOSE_REASONS:
        assert f"| {reason.code} | `{reason.text}` | `{reason.label}` | {reason.reconnect.value} |" in closes
    codes = wsgate_refs.close_codes_markdown()
    for close in errors_module.CLOSE_CODES:
        assert f"| {close.code} | {close.name} | {close.reconnect.value} | {close.when} |" in codes
    causes = [row[4] for row in wsgate_refs.error_rows() + wsgate_refs.close_rows()]
    assert all(causes), "a value of wsgate/errors.py has no docstring"


def test_constant_docstrings_are_read_from_the_source() -> None:
    docs = wsgate_refs.constant_docs()
    assert docs["SLOW_CONSUMER"].startswith("What waits for the client passed")
    assert docs["CLOSE_REASONS"] == "Every close the server sends itself."


def test_the_cli_help_is_the_parsers() -> None:
    from wsgate import cli

    help_text = wsgate_refs.cli_help()
    assert help_text.startswith("usage: wsgate")
    for action in cli._parser()._actions:
        for option in action.option_strings:
            assert option in help_text, option
    assert "{run,config,check,plugins}" in help_text


FEATURES = {  # what the README listed before the docs existed: each reachable from some page
    "wsgate.testing": "plugins.md",
    "wsgate.sdk.client.GatewayClient": "clients.md",
    "wsgate.sdk.publisher": "clients.md",
    "/client.js": "clients.md",
    "wsgate.gunicorn_conf": "operations.md",
    "wsgate.worker.GatewayWorker": "operations.md",
    "wsgate.conformance": "faults.md",
    "make chaos": "faults.md",
    "make faults": "faults.md",
    "make bench": "performance.md",
    "/dashboard": "operations.md",
    "/health": "operations.md",
    "/ready": "operations.md",
    "/api/publish": "clients.md",
    "wsgate.errors": "protocol.md",
    "wsgate/redaction.py": "security.md",
    "wsgate config": "quickstart.md",
    "wsgate check": "quickstart.md",
    "wsgate plugins": "plugins.md",
    "history.rooms": "protocol.md",
    "presence.rooms": "protocol.md",
    "shutdown.mode": "protocol.md",
    "security.allowed_origins": "clients.md",
    "auth.jwt": "security.md",
}


@pytest.mark.parametrize(("feature", "page"), FEATURES.items())
def test_every_feature_is_reachable_from_a_page(feature: str, page: str) -> None:
    assert feature in (DOCS / page).read_text()
    assert page.removesuffix(".md") in (DOCS / "index.md").read_text()  # the page is in the toctree


def test_the_readme_is_short_and_links_the_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for command in ("make run", "make test", "make docs", "Python 3.11"):
        assert command in readme, command
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in readme, page.name
    example = re.search(r"```python\n(.*?)```", readme, flags=re.S)
    assert example, "the README's example"
    plugin = (DOCS / "plugins.md").read_text()  # the plugin of plugins.md, which tests/test_docs_examples.py runs
    assert example.group(1) in plugin
