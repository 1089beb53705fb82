"""The fault model: every scenario of the catalogue against real processes, every promise checked after each.

    make faults      # the whole catalogue (under 15 minutes), results in faults/RESULTS.md
    .venv/bin/python -m faults.run --quick         # the part `make test` runs (tests/test_faults.py)
    .venv/bin/python -m faults.run redis-stall-long node-sigkill   # some scenarios, by name

Loopback only; each scenario is bounded (SCENARIO_LIMIT) and stops every process it started. Exits 1 unless
every promise held in every scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .harness import World, until
from .invariants import PROMISES, Verdicts, no_tracebacks
from .scenarios import CATALOGUE, Scenario

SCENARIO_LIMIT = 90.0  # seconds one scenario may take, its checks included
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Outcome:
    scenario: Scenario
    verdicts: Verdicts = field(default_factory=Verdicts)
    seconds: float = 0.0
    log_tail: str = ""


async def run_scenario(scenario: Scenario) -> Outcome:
    """Run one scenario, then check what every scenario must leave behind on each node still running."""
    outcome = Outcome(scenario)
    verdicts = outcome.verdicts
    world = World()
    started = time.monotonic()
    try:
        async with asyncio.timeout(SCENARIO_LIMIT):
            await scenario.run(world, verdicts)
            for member in world.members:
                await member.close()
            for node in world.nodes:
                if node.proc is None or node.proc.returncode is not None:
                    continue
                await until(lambda n=node: n.client_sockets() == 0, f"{node.name} to release its clients' sockets")
                verdicts.add("bounded", [])
                status, health = await node.get("/health")
                verdicts.that("bounded", not health.get("tasks", {}).get("down"), f"{node.name}: tasks down {health}")
                verdicts.that("bounded", status == 200, f"{node.name}: /health answered {status}")
    except Exception as exc:  # the scenario could not finish: a promise broke on the way
        detail = "".join(traceback.format_exception_only(exc)).strip()
        verdicts.add(scenario.promises[0], [f"the scenario did not finish: {detail}"])
    finally:
        for node in world.nodes:
            verdicts.add("logged", no_tracebacks(node.text(), node.name))
        outcome.log_tail = world.logs() if verdicts.violations else ""
        outcome.seconds = time.monotonic() - started
        await world.close()
    return outcome


def table(outcomes: list[Outcome]) -> str:
    lines = ["| scenario | fault | promises checked | result | seconds |", "|---|---|---|---|---|"]
    for o in outcomes:
        result = "pass" if o.verdicts.passed else "FAIL: " + "; ".join(f"{p}: {v}" for p, v in o.verdicts.violations)
        lines.append(
            f"| `{o.scenario.name}` | {o.scenario.fault} | {', '.join(sorted(o.verdicts.checked))} | "
            f"{result.replace('|', '/')} | {o.seconds:.1f} |"
        )
    return "\n".join(lines)


def report(outcomes: list[Outcome], command: str) -> str:
    passed = sum(o.verdicts.passed for o in outcomes)
    return "\n".join(
        [
            "# Fault model results",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}  ",
            f"Result: {'PASS' if passed == len(outcomes) else 'FAIL'} ({passed} of {len(outcomes)} scenarios)",
            "",
            "## Promises",
            "",
            *[f"- **{name}**: {text}" for name, text in PROMISES.items()],
            "",
            "## Scenarios",
            "",
            table(outcomes),
            "",
        ]
    )


async def main(names: list[str], quick: bool, output: Path | None) -> int:
    chosen = [s for s in CATALOGUE if (not names or s.name in names) and (not quick or s.quick)]
    unknown = set(names) - {s.name for s in CATALOGUE}
    if unknown:
        print(f"faults: no scenario named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    outcomes = []
    for scenario in chosen:
        outcome = await run_scenario(scenario)
        outcomes.append(outcome)
        print(f"{'pass' if outcome.verdicts.passed else 'FAIL'} {scenario.name} ({outcome.seconds:.1f}s)", flush=True)
        for promise, violation in outcome.verdicts.violations:
            print(f"    {promise}: {violation}", flush=True)
        if outcome.log_tail:
            print(outcome.log_tail[-3000:], flush=True)
    if output is not None:
        output.write_text(report(outcomes, "make faults" if not names and not quick else " ".join(sys.argv)))
    return 0 if all(o.verdicts.passed for o in outcomes) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the scenarios make test runs")
    parser.add_argument("--output", type=Path, default=None, help=f"write the results there (make faults: {RESULTS})")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.names, args.quick, args.output)))
