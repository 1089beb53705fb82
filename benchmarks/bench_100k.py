"""100,000 idle clients on one machine: wsgate under gunicorn, several workers behind one port, sharing Redis.

    make bench-100k    # or: .venv/bin/python benchmarks/bench_100k.py [--clients 100000] [--workers 8]

Every process here may hold at most 20,000 descriptors, so the gateway runs as gunicorn workers on one port
(`gunicorn -c python:wsgate.gunicorn_conf wsgate.app:create_app`, each worker a node on the Redis broker), each
refusing clients past `--max-per-worker` with 1013 (a refused client tries again), and the load generator as
several `loadgen.py hold` processes, each connecting from a loopback address of its own (127.0.0.2, 127.0.0.3,
...), so that ephemeral ports suffice. Each client connects, reads `connected` and subscribes to a room of its own.

Figures: the RSS per connection (the workers' summed RSS after minus before, over the clients), the time to
connect them all, the workers' CPU while the clients sit idle over a window longer than one ping interval
(default keepalive: a ping every 54 s, which the generator's clients answer), as a fraction of one core for all
workers together, and the time for one broadcast from one client to reach every client (across workers, through Redis).
They are printed, and written as a section of benchmarks/RESULTS.md (replacing this script's earlier one).

Loopback only; everything it starts is killed on the way out, on failure too; past `--deadline` it fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis
from loadgen import Fleet
from run import PYTHON, REDIS_URL, ROOT, free_port, raise_fd_limit, rss_kb, steady_rss_kb

HERE = Path(__file__).resolve().parent
SECTION = "## 100,000 idle clients on one machine (make bench-100k)"
CLIENTS_PER_WORKER = 12_500
"""Default workers: one per this many clients (each may take up to --max-per-worker, for an uneven accept)."""
CLIENTS_PER_GENERATOR = 12_500
"""Clients per load-generator process, each from one loopback address of its own (under its ~28,000 ports)."""
PING_INTERVAL_S = 54.0
"""settings.toml's default `websocket.ping_interval`: the idle window covers at least one."""


def worker_pids(arbiter: int) -> list[int]:
    """The pids of the processes whose parent is `arbiter` (gunicorn's workers)."""
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockets(pid: int) -> int:
    """How many sockets process `pid` holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt ListenOverflows; for the
    whole network namespace: other users' overflows count too)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt")]
    return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])


def listeners(port: int) -> int:
    """TCP sockets listening on `port` (with reuse_port, one per worker)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


def start_gunicorn(args: argparse.Namespace, port: int, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    """gunicorn with `args.workers` wsgate workers on 127.0.0.1:`port`, in a process group of its own."""
    env = {
        **os.environ,
        "WEBSOCKET_ENABLED": "true",
        "WSGATE_BROKER__URL": REDIS_URL,
        "WSGATE_BROKER__PREFIX": prefix,
        "WSGATE_LOGGING__LEVEL": "WARNING",
        "WSGATE_LOGGING__ACCESS_LOG": "false",
        "WEBSOCKET_LIMITS_MAX_CONNECTIONS": str(args.max_per_worker),
        "WEBSOCKET_LIMITS_MAX_CONNECTIONS_PER_ROOM": "0",
    }
    command = [PYTHON, "-m", "gunicorn", "-c", "python:wsgate.gunicorn_conf", "--workers", str(args.workers)]
    command += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    command += ["--reuse-port"] if args.reuse_port else []
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "wsgate.app:create_app"],
            env=env,
            cwd=ROOT,
            preexec_fn=raise_fd_limit,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(arbiter: subprocess.Popen[bytes], port: int, workers: int, reuse_port: bool, timeout: float) -> None:
    """Until `workers` workers run, /health answers and (with reuse_port) every worker listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if arbiter.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {arbiter.returncode}")
        try:
            ready = len(worker_pids(arbiter.pid)) == workers and (not reuse_port or listeners(port) == workers)
            if ready:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
        except OSError:
            pass
        time.sleep(0.2)  # polling processes and a port: nothing to wait on
    raise RuntimeError(f"gunicorn's {workers} workers were not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """gunicorn's quick shutdown (SIGQUIT), then SIGKILL to its whole process group after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers too, whatever became of the arbiter
    except ProcessLookupError:
        pass
    proc.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, measure, stop everything; the figures (units in their names) and per-worker details."""
    started = time.monotonic()
    deadline = started + args.deadline
    prefix = f"bench100k-{uuid.uuid4().hex[:8]}"
    store = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    store.ping()  # fails clearly when Redis is not there
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="wsgate-bench-100k-", suffix=".log")[1])
    arbiter = start_gunicorn(args, port, prefix, log)
    fleet: Fleet | None = None
    try:
        wait_ready(arbiter, port, args.workers, args.reuse_port, timeout=60)
        pids = worker_pids(arbiter.pid)
        rss_before = steady_rss_kb(pids)
        sockets_before = [sockets(pid) for pid in pids]
        generators = math.ceil(args.clients / CLIENTS_PER_GENERATOR)
        sources = [[f"127.0.0.{2 + k}"] for k in range(generators)]
        fleet = Fleet(
            f"ws://127.0.0.1:{port}/ws",
            sources,
            pin=None,
            deadline_s=deadline - time.monotonic(),
            retries=args.retries,
        )
        overflows = listen_overflows()
        connect_s, answers = fleet.connect(args.clients)
        overflows = listen_overflows() - overflows
        retries = sum(a["retries"] for a in answers)
        causes = {k[len("retries_") :]: sum(a.get(k, 0) for a in answers) for a0 in answers for k in a0 if "_" in k}
        rss_after = steady_rss_kb(pids, timeout=10)
        per_worker = [sockets(pid) - before for pid, before in zip(pids, sockets_before, strict=True)]
        print(f"connected {args.clients} in {connect_s:.1f} s, {retries} retries; per worker {per_worker}", flush=True)

        window = args.idle_window
        if window <= PING_INTERVAL_S:
            print(f"the idle window ({window:.0f} s) covers no ping interval ({PING_INTERVAL_S:.0f} s)", flush=True)
        if time.monotonic() + window + 60 > deadline:
            raise RuntimeError(f"no time left for the {window:.0f} s idle window within --deadline {args.deadline} s")
        cpu_before = sum(cpu_s(pid) for pid in pids)
        idle_started = time.monotonic()
        time.sleep(window)  # the window itself: the workers' CPU is read at both ends
        idle_cpu = (sum(cpu_s(pid) for pid in pids) - cpu_before) / (time.monotonic() - idle_started)
        closed = sum(a["closed"] for a in fleet.ask_all({"do": "status"}))
        if closed:
            raise RuntimeError(f"{closed} idle clients were closed by the server during the idle window")
        if worker_pids(arbiter.pid) != pids:
            raise RuntimeError(f"gunicorn's workers changed (one died?): see {log}")

        broadcast_s = fleet.broadcast_s(timeout=min(120.0, deadline - time.monotonic()))
        return {
            "clients": args.clients,
            "workers": args.workers,
            "generators": generators,
            "reuse_port": args.reuse_port,
            "rss_kb_per_connection": (rss_after - rss_before) / args.clients,
            "connect_s": connect_s,
            "idle_cpu_of_one_core": idle_cpu,
            "idle_window_s": window,
            "broadcast_s": broadcast_s,
            "connect_retries": retries,
            "connect_retries_by_cause": causes,
            "listen_overflows": overflows,
            "connections_per_worker": per_worker,
            "rss_mb_per_worker": [round(rss_kb(pid) / 1024) for pid in pids],
            "loadgen_cpu_while_connecting": [round(a["cpu"], 2) for a in answers],
            "total_s": time.monotonic() - started,
        }
    except RuntimeError:
        print(f"gunicorn's log ({log}), last lines:\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if fleet is not None:
            fleet.close()
        stop(arbiter)
        for key in store.scan_iter(f"{prefix}*", count=1000):
            store.delete(key)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def write_section(output: Path, figures: dict[str, Any], command: str) -> None:
    """Replace this script's section of `output` (from its heading to the next `## ` or the end), or append it."""
    f = figures
    covers = "one ping interval and more" if float(f["idle_window_s"]) > PING_INTERVAL_S else "NO ping interval"
    body = f"""{SECTION}

Measured {datetime.date.today().isoformat()} on {machine()}, with `{command}`: wsgate under gunicorn,
{f["workers"]} workers on one port (reuse_port: {f["reuse_port"]}), sharing Redis; load generator: {f["generators"]}
process(es) (raw clients on uvloop), each from a loopback address of its own. Each client connects, reads
`connected` and subscribes to a room of its own. Nothing is pinned: the workers and the generators share every core.

| figure | value |
|---|---|
| clients | {f["clients"]:,} |
| RSS per connection (workers' sum, after minus before) | {f["rss_kb_per_connection"]:.1f} KB |
| time to connect them all | {f["connect_s"]:.1f} s |
| idle CPU of all workers, over {f["idle_window_s"]:.0f} s ({covers}) | {f["idle_cpu_of_one_core"]:.1%} of one core |
| one broadcast reaching every client | {f["broadcast_s"]:.2f} s |
| connects refused (1013) or failed, then tried again | {f["connect_retries"]:,} {f["connect_retries_by_cause"] or ""} |
| listen-queue overflows while connecting (whole machine) | {f["listen_overflows"]:,} |
| connections per worker | {", ".join(f"{n:,}" for n in f["connections_per_worker"])} |
| RSS per worker | {", ".join(f"{n:,} MB" for n in f["rss_mb_per_worker"])} |
| the whole run | {f["total_s"]:.0f} s |
"""
    text = output.read_text() if output.exists() else ""
    start = text.find(SECTION)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + ("\n" + text[end + 1 :] if end != -1 else "")
    output.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, help=f"gunicorn workers (default: one per {CLIENTS_PER_WORKER:,})")
    parser.add_argument("--max-per-worker", type=int, default=18_000, help="each worker's max_connections")
    parser.add_argument("--reuse-port", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds (at least one ping interval)")
    parser.add_argument("--retries", type=int, default=100, help="tries again a refused connect this many times")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for the whole run; then it fails")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    args.workers = args.workers or max(2, math.ceil(args.clients / CLIENTS_PER_WORKER))
    if args.workers * args.max_per_worker < args.clients:
        sys.exit(f"{args.workers} workers of at most {args.max_per_worker} clients cannot hold {args.clients}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up as on Ctrl-C
    try:
        figures = measure(args)
    except (RuntimeError, redis.RedisError) as error:
        sys.exit(f"bench-100k failed: {error}")
    print(json.dumps(figures, indent=1))
    command = "make bench-100k" if args.clients == 100_000 else f"benchmarks/bench_100k.py --clients {args.clients}"
    write_section(args.output, figures, command)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
