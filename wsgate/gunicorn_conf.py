"""gunicorn settings for wsgate: `gunicorn -c python:wsgate.gunicorn_conf wsgate.app:create_app`.

Command-line flags still override these (`-w 4`, `--bind ...`). With several
workers, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory so `/metrics`
sums every worker; the hooks below keep that directory right.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

worker_class = "aiohttp.GunicornWebWorker"
graceful_timeout = 35  # longer than websocket.timeout (30s by default): clients get 1001, not a kill
bind = "0.0.0.0:8081"


def _metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def on_starting(server: Any) -> None:
    """Start every run with an empty metrics directory (stale files would add old counts)."""
    directory = _metrics_dir()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (clients, rooms, throughput) from the sum."""
    if _metrics_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
