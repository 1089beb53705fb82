"""The chaos run, short (chaos/run.py: about 50 s, 60 clients): nothing stored is lost, repeated or reordered."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .processes import ROOT, spawn

pytestmark = pytest.mark.slow  # the chaos run, short (about 40 s)


async def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    process = await spawn(
        sys.executable,
        str(ROOT / "chaos" / "run.py"),
        "--clients",
        "60",
        "--duration",
        "40",
        "--cut-every",
        "5",
        "--output",
        str(results),
    )
    code = await process.finish(240)
    report = results.read_text() if results.exists() else "".join(process.lines)
    assert code == 0, report
    assert "Result: PASS" in report and "slow consumers dropped by node-a: 3 of 3" in report, report
