"""gunicorn settings for wsgate: `gunicorn -c python:wsgate.gunicorn_conf wsgate.app:create_app`.

Command-line flags still override these (`-w 4`, `--bind ...`). With several
workers, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory so `/metrics`
sums every worker; the hooks below keep that directory right.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gunicorn import glogging  # type: ignore[import-untyped]
from prometheus_client import multiprocess

from .redaction import Redactor

worker_class = (
    "wsgate.worker.GatewayWorker"  # aiohttp's worker (not uvloop's: slower for fan-out), through GatewayRunner
)
graceful_timeout = 35  # longer than websocket.timeout (30s by default): clients get 1001, not a kill
bind = "0.0.0.0:8081"


def _metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def on_starting(server: Any) -> None:
    """Start every run without old metric files (they would add old counts); the directory itself stays."""
    directory = _metrics_dir()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)  # may be a mount point or a symlink: never remove it
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (clients, rooms, throughput) from the sum."""
    if _metrics_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class RedactingLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's logger with wsgate's masking rule (`wsgate.redaction`) on its error and access logs, from
    the arbiter's first line on: the access log's `?token=`, a worker's traceback, credential-shaped values.
    (Once a worker has read the settings, `wsgate.logs.configure_logging` adds their secret values too.)"""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for old in [f for f in log.filters if isinstance(f, Redactor)]:
                log.removeFilter(old)
            log.addFilter(Redactor())


logger_class = RedactingLogger
