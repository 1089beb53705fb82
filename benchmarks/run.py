"""Run every benchmark scenario against wsgate and the naive baseline (and the floor); print and record the table.

    make bench              # or: .venv/bin/python benchmarks/run.py [--runs 3] [--only fanout-1000-w32]

The server under test is pinned to core 0 (`taskset -c 0`), the load generator
(benchmarks/loadgen.py) to core 1. Every figure is the median of `--runs` runs
(min and max beside it), and every wsgate figure is also given as a ratio to the
naive baseline measured in the same run. Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from loadgen import Fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
REDIS_URL = os.environ.get("WSGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379")

SCALING_STEPS = (2500, 5000, 10000, 19000)
"""connect-scaling's levels (clients connected): under the 20,000 descriptors each process may have here."""
SCALING_DEADLINE_S = 300
"""connect-scaling's whole run, in seconds: past it the load generator is killed and the run fails."""

# name: (loadgen arguments, servers it runs on, figures to report)
SCENARIOS: dict[str, tuple[list[str], tuple[str, ...], tuple[str, ...]]] = {
    "fanout-100-w32": (
        ["fanout", "--subscribers", "100", "--window", "32"],
        ("naive", "wsgate"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "fanout-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("naive", "wsgate"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "fanout-1000-w128": (
        ["fanout", "--subscribers", "1000", "--window", "128"],
        ("naive", "wsgate"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "fanout-5000-w32": (
        ["fanout", "--subscribers", "5000", "--window", "32"],
        ("naive", "wsgate"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "many-rooms-2000x2": (
        ["many_rooms", "--rooms", "2000", "--window", "4"],
        ("naive", "wsgate", "floor"),
        ("deliveries_per_s",),
    ),
    "idle-10000": (
        ["idle", "--connections", "10000"],
        ("naive", "wsgate", "floor"),
        ("rss_kb_per_connection", "connect_s", "server_cpu_ms_per_connect", "broadcast_s"),
    ),
    "connect-scaling": (
        ["hold"],  # run by connect_scaling() below
        ("naive", "wsgate"),
        tuple(
            figure
            for level in SCALING_STEPS
            for figure in (
                f"connect_ms_per_client_at_{level}",
                f"server_cpu_ms_per_client_at_{level}",
                f"rss_kb_per_connection_at_{level}",
            )
        ),
    ),
    "latency-100-at-100/s": (
        ["latency", "--subscribers", "100", "--rate", "100", "--duration", "5"],
        ("naive", "wsgate"),
        ("p50_ms", "p99_ms", "loss"),
    ),
    "cross-node-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("wsgate", "wsgate-2-nodes"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "echo-plugin-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("wsgate", "wsgate-plugins"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "limits-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("wsgate", "wsgate-limits"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "history-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("wsgate", "wsgate-history"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "history-2-nodes-1000-w32": (
        ["fanout", "--subscribers", "1000", "--window", "32"],
        ("wsgate-2-nodes", "wsgate-2-nodes-history"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
    "history-2-nodes-1000-w128": (
        ["fanout", "--subscribers", "1000", "--window", "128"],
        ("wsgate-2-nodes", "wsgate-2-nodes-history"),
        ("deliveries_per_s", "p50_ms", "p99_ms", "loss"),
    ),
}
# wsgate-limits: every per-message check on, none of them refusing the benchmark's traffic.
LIMITS = {
    "WEBSOCKET_LIMITS_MESSAGES_PER_SECOND": "1000000",
    "WEBSOCKET_LIMITS_BYTES_PER_SECOND": "1000000000",
    "WEBSOCKET_LIMITS_MAX_ROOMS_PER_CLIENT": "100",
    "WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_IP": "100000",
    "WEBSOCKET_LIMITS_ROOM_NAME_PATTERN": "[a-z0-9:-]+",
    "WSGATE_AUTH__ROOMS": '["private-* = identity", "user:{sub} = identity", "ops:* = claim:admin"]',
}
HIGHER_IS_BETTER = {"deliveries_per_s"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_server(kind: str, prefix: str) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Start the server(s) of `kind` pinned to core 0; returns the processes and their /ws URLs."""
    env = {
        **os.environ,
        "WSGATE_LOGGING__LEVEL": "WARNING",
        "WSGATE_LOGGING__ACCESS_LOG": "false",
        "WEBSOCKET_ENABLED": "true",
        "WEBSOCKET_LIMITS_MAX_CONNECTIONS": "0",
        "WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_ROOM": "0",
    }
    if kind == "wsgate-plugins":  # the example plugins (echo, users, token_auth): make test installs them apart
        plugins = ROOT / ".venv" / "test-plugins"
        if not plugins.is_dir():
            sys.exit(f"{plugins} is missing: `make bench` installs the example plugins there")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), env.get("PYTHONPATH")]))
    if kind == "wsgate-limits":
        env.update(LIMITS)
    if kind.endswith("-history"):
        env["WSGATE_HISTORY__ROOMS"] = '["bench"]'
    nodes = 2 if kind.startswith("wsgate-2-nodes") else 1
    if nodes == 2:
        env.update(WSGATE_BROKER__URL=REDIS_URL, WSGATE_BROKER__PREFIX=prefix)
    procs, urls = [], []
    for _ in range(nodes):
        port = free_port()
        if kind in ("naive", "floor"):
            command = [PYTHON, str(HERE / "baselines" / f"{kind}_hub.py"), "--port", str(port)]
        else:
            command = [PYTHON, "-m", "wsgate", "--host", "127.0.0.1", "--port", str(port)]
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", "0", *command],
                env=env,
                cwd=ROOT,
                preexec_fn=raise_fd_limit,
                stdout=subprocess.DEVNULL,
            )
        )
        urls.append(f"ws://127.0.0.1:{port}/ws")
        wait_listening(port)
    return procs, urls


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def rss_kb(pid: int) -> int:
    """The resident set of process `pid`, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """The CPU time `pid` has used (user + system), in seconds: the server's own cost of what the load generator
    did meanwhile, whatever the generator's speed (a connect figure in seconds measures the slower of the two)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_rss_kb(pids: list[int], timeout: float = 5.0) -> int:
    """The summed RSS (KB) of `pids` once it has settled: two reads 0.5 s apart within 0.5% of each other, or the
    last read after `timeout` seconds (memory is polled: no event says a server is done allocating)."""
    deadline = time.monotonic() + timeout
    last = sum(rss_kb(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(rss_kb(pid) for pid in pids)
        if abs(now - last) <= 0.005 * last:
            return now
        last = now
    return last


SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
"""Loopback addresses the load generator connects from, in turn: with one address, connect() searches an ever
fuller range of ephemeral ports (the kernel's cost, not the server's, grew past 15,000 clients)."""


def connect_scaling(server: subprocess.Popen[bytes], url: str) -> dict[str, float]:
    """One server run: clients (each subscribed to a room of its own) connected in steps up to each of
    SCALING_STEPS, by one `loadgen.py hold` process on core 1 (19,000 sockets and a few descriptors of its own
    fit under its 20,000). Per step: the connect time per client of the clients that step added (ms: the
    marginal cost), the server's CPU time per client of that step (ms: its own cost, whatever the generator's speed),
    and the server's RSS per connected client at that level (KB, over its RSS before any)."""
    before = steady_rss_kb([server.pid])
    result: dict[str, float] = {}
    cpu = []
    with Fleet(url, [SOURCES], pin="1", deadline_s=SCALING_DEADLINE_S) as fleet:
        done = 0
        for level in SCALING_STEPS:
            spent = cpu_s(server.pid)
            try:
                _, (answer,) = fleet.connect(level - done)
            except RuntimeError as error:
                raise RuntimeError(f"connect-scaling: the step from {done} to {level} clients: {error}") from None
            result[f"connect_ms_per_client_at_{level}"] = answer["seconds"] * 1000 / (level - done)
            result[f"server_cpu_ms_per_client_at_{level}"] = (cpu_s(server.pid) - spent) * 1000 / (level - done)
            result[f"rss_kb_per_connection_at_{level}"] = (steady_rss_kb([server.pid]) - before) / level
            cpu.append(answer["cpu"])
            done = level
    result["loadgen_cpu"] = max(cpu)
    return result


def run_once(scenario: str, kind: str) -> dict[str, float]:
    args, _, _ = SCENARIOS[scenario]
    procs, urls = start_server(kind, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        command = ["taskset", "-c", "1", PYTHON, str(HERE / "loadgen.py"), *args]
        for url in urls:
            command += ["--url", url]
        if args[0] == "hold":
            return connect_scaling(procs[0], urls[0])
        if args[0] == "idle":
            before = rss_kb(procs[0].pid)
            cpu_before = cpu_s(procs[0].pid)
            gen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert gen.stdout and gen.stdin
            connected = json.loads(gen.stdout.readline())["connected"]
            connect_cpu = cpu_s(procs[0].pid) - cpu_before
            time.sleep(1.0)  # let the server settle before reading its memory
            after = rss_kb(procs[0].pid)
            gen.stdin.write("go\n")
            gen.stdin.flush()
            result: dict[str, float] = json.loads(gen.stdout.readline())
            gen.wait(60)
            result["rss_kb_per_connection"] = (after - before) / connected
            result["server_cpu_ms_per_connect"] = connect_cpu * 1000 / connected
        else:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{scenario} on {kind} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(value: float, metric: str) -> str:
    if metric == "deliveries_per_s":
        return f"{value:,.0f}"
    if metric == "loss":
        return f"{value:.0f}"
    if metric.startswith("rss_kb_per_connection"):
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run just these scenarios")
    parser.add_argument(
        "--output", help="where the table goes (default: RESULTS.md for a whole run; with --only, printed only)"
    )
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        sys.exit("benchmarks need taskset (util-linux)")
    rows = []
    for scenario in args.only or SCENARIOS:
        _, kinds, metrics = SCENARIOS[scenario]
        results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for run in range(args.runs):
            for kind in kinds:  # alternate servers within each run: drift hits both alike
                try:
                    result = run_once(scenario, kind)
                except (RuntimeError, subprocess.TimeoutExpired) as error:  # left out, said; the others still run
                    print(f"{scenario} run {run + 1} {kind}: FAILED: {error}", file=sys.stderr, flush=True)
                    continue
                results[kind].append(result)
                print(f"{scenario} run {run + 1} {kind}: {json.dumps(result)}", flush=True)
        baseline = kinds[0]
        for kind in kinds:
            if not results[kind] or not results[baseline]:
                rows.append((scenario, kind, "every run failed", "", "", "", "", ""))
                continue
            for metric in metrics:
                stats = summary([r[metric] for r in results[kind]])
                base = statistics.median(r[metric] for r in results[baseline])
                ratio = ""
                if kind != baseline and base and metric != "loss":
                    ratio = (
                        f"{stats['median'] / base:.2f}x"
                        if metric in HIGHER_IS_BETTER
                        else f"{base / stats['median']:.2f}x"
                    )
                cpu = statistics.median(r["loadgen_cpu"] for r in results[kind])
                rows.append(
                    (
                        scenario,
                        kind,
                        metric,
                        fmt(stats["median"], metric),
                        fmt(stats["min"], metric),
                        fmt(stats["max"], metric),
                        ratio,
                        f"{cpu:.0%}",
                    )
                )
    write_results(rows, args)


def write_results(rows: list[tuple[str, ...]], args: argparse.Namespace) -> None:
    header = ("scenario", "server", "figure", "median", "min", "max", "vs first server", "loadgen CPU")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    if args.output is None and args.only:  # a few scenarios never replace the whole run's table
        print("(not recorded: --only without --output)")
        return
    output = Path(args.output or HERE / "RESULTS.md")
    old = output.read_text() if output.exists() else ""
    kept = old[old.index("\n## ") :] if "\n## " in old else ""  # sections of other scripts (bench_100k.py)
    output.write_text(f"""# Benchmark results

Measured {datetime.date.today().isoformat()} on {os.cpu_count()} cores ({cpu}), Python {platform.python_version()},
with `make bench` ({"benchmarks/run.py --runs " + str(args.runs)}). The server under test runs pinned to core 0,
the load generator (on uvloop: raw asyncio clients for idle and connect-scaling, picows for the rest) to core 1.
Each figure is the median of {args.runs} runs (min and max beside it). "vs first server" is the ratio to the first
server of the scenario, measured in the same run (higher is better: deliveries divide, latencies and seconds are
inverted). A load-generator CPU near 100% would make a figure void.

- naive: benchmarks/baselines/naive_hub.py, json.dumps + `await send_str` per recipient.
- floor: benchmarks/baselines/floor_hub.py, the benchmark's work alone in the fewest Python steps asyncio allows
  (a bare protocol per socket, the upgrade parsed by hand, no checks, no `timestamp`): a lower bound, not a server.
- wsgate: `python -m wsgate`, in-memory broker, example plugins disabled.
- wsgate-2-nodes: two wsgate processes sharing Redis (both on core 0); subscribers split over both, the publisher
  on the first.
- wsgate-plugins: wsgate with the example plugins enabled (echo, users, token-auth, from .venv/test-plugins).
- wsgate-history, wsgate-2-nodes-history: the same servers with history kept for the benchmark's room
  (`history.rooms = ["bench"]`, 100 messages): every message gets an offset (in Redis: one Lua script per message).
- wsgate-limits: wsgate with rate limits, rooms-per-client, address limit, a room-name pattern and three room rules
  on (set high enough that nothing is refused): the cost of the per-message checks.

{table}
{kept}""")


if __name__ == "__main__":
    main()
