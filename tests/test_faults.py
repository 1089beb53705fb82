"""The fault model's quick scenarios (faults/scenarios.py, `quick=True`): each fault against real processes and
a private Redis, every promise (faults/invariants.py) checked after it. `make faults` runs the whole catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faults.invariants import PROMISES
from faults.run import run_scenario
from faults.scenarios import CATALOGUE, Scenario

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # each scenario starts real nodes and a private Redis
@pytest.mark.parametrize("scenario", [s for s in CATALOGUE if s.quick], ids=lambda s: s.name)
async def test_promises_hold_under(scenario: Scenario) -> None:
    outcome = await run_scenario(scenario)
    assert outcome.verdicts.passed, "\n".join(f"{p}: {v}" for p, v in outcome.verdicts.violations) + outcome.log_tail
    assert set(scenario.promises) <= outcome.verdicts.checked  # each promise it names was really checked


def test_the_docs_state_each_promise_once_and_list_every_scenario() -> None:
    page = (ROOT / "docs" / "faults.md").read_text()
    for name, text in PROMISES.items():
        assert page.count(text) == 1, name
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", page, flags=re.M))
    assert {s.name for s in CATALOGUE} <= rows


def test_the_quick_subset_covers_every_kind_of_fault() -> None:
    kinds = {s.name.split("-")[0] for s in CATALOGUE if s.quick}
    assert kinds == {"redis", "link", "node", "client", "plugin", "earlier"}
