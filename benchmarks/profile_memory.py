"""Where an idle connection's bytes go: tracemalloc and object counts in a running gateway, per connection.

    .venv/bin/python benchmarks/profile_memory.py [--connections 2000]

Starts `python -m wsgate` (in-memory broker, defaults) under tracemalloc, connects `--connections` clients with
benchmarks/loadgen.py (each subscribed to a room of its own), and prints the heap growth per connection by
allocation site, then the objects per connection by type. The figures go to benchmarks/RESULTS.md
("Memory per connection"). tracemalloc counts Python's heap only: RSS adds the allocator's overhead.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER = """
import collections, gc, os, pickle, signal, sys, tracemalloc
tracemalloc.start(8)
state = {}
def count():
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())
def before(*_):
    gc.collect(); state["heap"], state["objects"] = tracemalloc.take_snapshot(), count()
def after(*_):
    gc.collect()
    with open(os.environ["PROFILE_OUT"] + ".part", "wb") as out:
        pickle.dump((state["heap"], tracemalloc.take_snapshot(), state["objects"], count()), out)
    os.replace(os.environ["PROFILE_OUT"] + ".part", os.environ["PROFILE_OUT"])
signal.signal(signal.SIGUSR1, before)
signal.signal(signal.SIGUSR2, after)
from wsgate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp()) / "profile.pickle"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "WSGATE_LOGGING__LEVEL": "WARNING",
        "WEBSOCKET_ENABLED": "true",
        "WEBSOCKET_LIMITS_MAX_CONNECTIONS": "0",
        "PROFILE_OUT": str(out),
    }
    command = [sys.executable, "-c", SERVER, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=env)
    url = f"ws://127.0.0.1:{port}/ws"
    generators: list[subprocess.Popen[str]] = []
    try:
        for _ in range(600):  # the server imports under tracemalloc: slow to listen
            probe = subprocess.run(
                ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            time.sleep(0.1)

        def clients(count: int) -> None:
            gen = subprocess.Popen(
                [sys.executable, str(HERE / "loadgen.py"), "idle", "--url", url, "--connections", str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            generators.append(gen)
            assert gen.stdout is not None
            gen.stdout.readline()  # {"connected": N}

        clients(100)  # warm up: first-use allocations are not per connection
        server.send_signal(signal.SIGUSR1)
        time.sleep(5)
        clients(args.connections)
        time.sleep(2)
        server.send_signal(signal.SIGUSR2)
        while not out.exists():
            time.sleep(0.5)
        heap_before, heap_after, objects_before, objects_after = pickle.loads(out.read_bytes())
    finally:
        for process in (*generators, server):
            process.kill()
    n = args.connections
    diff = [d for d in heap_after.compare_to(heap_before, "traceback") if d.size_diff > 0]
    print(f"heap per connection (tracemalloc): {sum(d.size_diff for d in diff) / n:.0f} bytes")
    for stat in sorted(diff, key=lambda d: -d.size_diff)[:25]:
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback))
        print(f"{stat.size_diff / n:7.0f} B {stat.count_diff / n:5.2f} objects  {where[:160]}")
    print("objects per connection, by type:")
    for kind, total in sorted(objects_after.items(), key=lambda item: -(item[1] - objects_before.get(item[0], 0))):
        per = (total - objects_before.get(kind, 0)) / n
        if per >= 0.5:
            print(f"  {kind}: {per:.2f}")


if __name__ == "__main__":
    main()
