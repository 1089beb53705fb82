"""gunicorn's aiohttp worker, serving through `GatewayRunner` (the address limit counts sockets from accept()).

    gunicorn wsgate.app:create_app --worker-class wsgate.worker.GatewayWorker

`wsgate.gunicorn_conf` sets it. aiohttp's own `GunicornWebWorker` still works, without the socket-level
address limit (`security.request_timeout` applies either way).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornWebWorker

from .admission import GatewayRunner
from .aiohttp_private import gunicorn_access_log_format
from .cli import tune_collector
from .keys import SETTINGS

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter stops when a worker exits with this


class GatewayWorker(GunicornWebWorker):
    """aiohttp's worker, with the application served by a GatewayRunner built from gunicorn's settings."""

    def load_wsgi(self) -> None:
        """gunicorn's loading of `wsgate.app:create_app`, wrapped in an async factory that returns the
        GatewayRunner: aiohttp's worker serves the runner such a factory returns (public API: gunicorn's
        `Worker.load_wsgi`, no override of aiohttp's `GunicornWebWorker._run`)."""
        super().load_wsgi()
        make_app = self.wsgi

        async def make_runner() -> web.AppRunner:
            app = await make_app() if inspect.iscoroutinefunction(make_app) else make_app
            tune_collector(app[SETTINGS].runtime.gc_threshold)
            if app[SETTINGS].runtime.uvloop:  # (the worker made its loop before any setting could be read)
                self.log.warning("runtime.uvloop has no effect under gunicorn: its worker runs asyncio's event loop")
            cfg = self.cfg
            broker = app[SETTINGS].broker
            if cfg.workers > 1 and not broker.url and not broker.unshared_workers:
                print(
                    f"wsgate: {cfg.workers} gunicorn workers with the in-memory broker would split every room "
                    "between them: set broker.url (WSGATE_BROKER__URL=redis://...), run one worker (-w 1), or "
                    "allow it with broker.unshared_workers = true",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(WORKER_BOOT_ERROR)
            return GatewayRunner(
                app,
                logger=self.log,
                keepalive_timeout=cfg.keepalive,
                access_log=self.log.access_log if cfg.accesslog else None,
                access_log_format=gunicorn_access_log_format(self, cfg.access_log_format),
                shutdown_timeout=cfg.graceful_timeout / 100 * 95,
            )

        self.wsgi: Any = make_runner
        self._listening = False

    def notify(self) -> None:
        """gunicorn's heartbeat, first called by aiohttp's worker once its sites serve: the listening sockets
        then get gunicorn's `backlog` (2048 by default) back. asyncio's `create_server` listens again with
        aiohttp's 128 when a site starts, and a reconnect storm overflows a queue of 128: every dropped SYN
        costs its client a second or more before it retries (docs/performance.md, "Connect rate")."""
        if not self._listening:
            self._listening = True
            for sock in self.sockets:
                sock.listen(self.cfg.backlog)
        super().notify()
