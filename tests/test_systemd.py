"""The systemd unit of the deployment page (`deploy/wsgate.service`) passes `systemd-analyze verify`.

`systemd-analyze` comes with Debian's systemd package (`.ci/run` installs it when missing). Without it this test is
skipped with a loud reason, except under CI=true, where it fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from wsgate.config.schema import WebSocketSettings

from .processes import ROOT, require_tool

UNIT = ROOT / "deploy" / "wsgate.service"
PAGE = ROOT / "docs" / "deployment.md"
EXEC_START = "/opt/wsgate/bin/wsgate"  # the unit's example path; the test points it at this venv's script
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def systemd_analyze() -> str:
    require_tool(
        os.path.exists(SYSTEMD_ANALYZE), "SYSTEMD TEST", "systemd-analyze is not installed (apt-get install systemd)"
    )
    return SYSTEMD_ANALYZE


def directives(text: str) -> dict[str, str]:
    """`Key=value` lines of a unit (the last one wins, as in systemd); comments and sections left out."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z]+)=(.*)", line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks every key and that ExecStart's binary exists: it runs on a copy whose ExecStart names the
    `wsgate` script of the environment running the tests (the only change)."""
    analyze = systemd_analyze()
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1, f"ExecStart should name {EXEC_START}"
    script = Path(sys.executable).parent / "wsgate"
    assert script.exists(), script
    copy = tmp_path / "wsgate.service"
    copy.write_text(text.replace(EXEC_START, str(script)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", f"systemd-analyze warned about the unit:\n{output}"  # unknown keys are warnings only


def test_the_unit_is_hardened_and_outlasts_the_drain() -> None:
    unit = directives(UNIT.read_text())
    assert unit["DynamicUser"] == "yes"
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict"
    assert unit["Restart"] == "on-failure"
    assert unit["KillSignal"] == "SIGTERM"
    assert int(unit["LimitNOFILE"]) >= 65536
    stop = re.fullmatch(r"(\d+)s", unit["TimeoutStopSec"])
    assert stop, unit["TimeoutStopSec"]
    drain = WebSocketSettings().timeout  # the process exits within websocket.timeout after SIGTERM
    assert int(stop.group(1)) > drain


def test_the_page_shows_the_unit_file() -> None:
    """The deployment page includes the file itself (one source), marked as tested here."""
    page = PAGE.read_text()
    assert "<!-- tested by tests/test_systemd.py -->\n```{literalinclude} ../deploy/wsgate.service\n" in page
