"""The `wsgate` command (also `python -m wsgate`): parse arguments, load settings, serve.

Problems a user can fix (a bad setting, a broken plugin, a busy port) end with
one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from . import __version__
from .admission import GatewayRunner
from .app import create_app
from .broker import BrokerError, describe_broker
from .builtin import BUILTIN_PLUGINS
from .config import (
    ConfigError,
    Settings,
    describe_settings,
    describe_source,
    inert_settings,
    load_settings,
    secrets_of,
    unknown_variables,
)
from .errors import WsgateError
from .keys import DISPATCHER, GATEWAY, HUB, PLUGINS
from .logs import configure_logging
from .metrics import MetricsError
from .plugins import load_plugins
from .redaction import Redactor
from .registry import PluginError

log = logging.getLogger("wsgate")

EXIT_USAGE = 2  # bad settings or plugins, as argparse uses for bad arguments
EXIT_FAILURE = 1
LISTEN_BACKLOG = 2048
"""Connections the kernel queues before they are accepted (capped by net.core.somaxconn): gunicorn's default.
aiohttp's 128 overflows when every client reconnects at once, and each dropped SYN costs its client a second or
more before it retries (docs/performance.md, "Connect rate")."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    cli = {"websocket": overrides} if overrides else None
    try:
        settings = load_settings(args.settings, cli)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    secrets = secrets_of(settings)
    configure_logging(settings.logging, secrets)
    for warning in unknown_variables() + inert_settings(settings):
        log.warning("%s", warning)
    try:
        if args.command == "config":
            print(f"# {describe_source(args.settings)}")
            for key, value, source in describe_settings(settings, args.settings, cli):
                print(f"{key} = {value}  # {source}")
        elif args.command == "plugins":
            plugins = load_plugins(settings, BUILTIN_PLUGINS)
            for info in plugins.describe(plugins.build_registry()):
                print(f"{info.name}: {info.source}")
                print(f"  hooks: {', '.join(info.hooks) or '-'}")
                print(f"  message types: {', '.join(info.message_types) or '-'}")
        elif args.command == "check":
            event_loop(settings.runtime.uvloop)  # (a missing uvloop is a mistake in the settings too)
            app = asyncio.run(create_app(settings))  # loads plugins, builds tables and services (connects nothing)
            plugins = app[PLUGINS]
            mistakes = [*unknown_variables(), *plugins.problems]  # names that name nothing: warnings at start-up
            if mistakes:
                for mistake in mistakes[:-1]:
                    print(f"wsgate: {mistake}", file=sys.stderr)
                return _fail(mistakes[-1], EXIT_USAGE)
            print(
                f"ok: {len(plugins.sources)} plugins, {len(app[DISPATCHER].registry.owners())} message types, "
                f"{len(app[GATEWAY].services)} services; {describe_source(args.settings)}"
            )
        else:
            run = event_loop(settings.runtime.uvloop)
            run(serve(settings, describe_source(args.settings)))
    except (ConfigError, PluginError, BrokerError, MetricsError) as exc:  # (a built-in plugin's bad setting)
        return _fail(Redactor(secrets).redact(str(exc)), EXIT_USAGE)
    except ListenError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown, or one before the loop ran
        return _fail("interrupted", EXIT_FAILURE)
    return 0


def event_loop(use_uvloop: bool) -> Callable[[Coroutine[Any, Any, None]], None]:
    """What runs the server: `asyncio.run`, or `uvloop.run` with `runtime.uvloop` (the [speed] extra). Wanted and
    not installed: ConfigError naming the key (not a silent fall back to asyncio)."""
    if not use_uvloop:
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "runtime.uvloop = true: uvloop is not installed (pip install 'wsgate[speed]', or set it to false)"
        ) from None
    return uvloop.run


def tune_collector(threshold: int) -> None:
    """The garbage collector for a long-running server, once its application is built: `runtime.gc_threshold`
    allocations between young collections (0: Python's 700), and what start-up made moved out of the collector's
    sight (`gc.freeze`). With Python's 700 the collections promoted and re-scanned every connection's objects, and
    each connect cost more as clients grew: 0.16 ms at 2,500 clients, 0.21 ms at 10,000 (docs/performance.md)."""
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
    gc.freeze()


async def serve(settings: Settings, settings_source: str = "settings: given by the caller") -> None:
    """Serve until SIGTERM or SIGINT, then drain: refuse new clients, close every client with 1001, exit.

    `settings_source` (`config.describe_source`) is logged before the listening lines: the absolute settings file.

    The listener stays open while draining so load balancers see `/health` answer 503.
    """
    ws = settings.websocket
    stop = asyncio.Event()  # signals are caught from the start: a Ctrl-C right after "listening" drains too
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    app = await create_app(settings)
    tune_collector(settings.runtime.gc_threshold)
    # The shutdown budget is websocket.timeout: half for clients to close, and aiohttp's own
    # handler shutdown (which may wait its timeout twice) gets a fifth, twice.
    access_log = logging.getLogger("aiohttp.access") if settings.logging.access_log else None
    runner = GatewayRunner(app, handle_signals=False, shutdown_timeout=ws.timeout / 5, access_log=access_log)
    await runner.setup()
    try:
        site = web.TCPSite(runner, ws.host, ws.port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {ws.host}:{ws.port}: {exc.strerror or exc}") from None
        plugins = app[PLUGINS]
        log.info("%s", settings_source)
        log.info("event loop: %s", type(loop).__module__.partition(".")[0])  # asyncio, or uvloop (runtime.uvloop)
        log.info("broker: %s", describe_broker(settings))  # memory, or the Redis URL with its password masked
        log.info("plugins: %s", ", ".join(f"{name} ({source})" for name, source in plugins.sources.items()) or "none")
        for address in runner.addresses:
            log.info("wsgate %s listening on %s:%s", __version__, *address[:2])
        await stop.wait()
        for signum in signals:  # a second Ctrl-C interrupts the drain
            loop.remove_signal_handler(signum)
        log.info("shutting down")
        await app[HUB].drain(settings.shutdown, ws.timeout / 2)
    finally:
        await runner.cleanup()


class ListenError(WsgateError):
    """The listening socket cannot be opened (address in use, permission, bad host)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgate", description="Run the wsgate WebSocket gateway (settings: docs/configuration.md)."
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "config", "check", "plugins"],
        default="run",
        help="run: serve (the default); config: print the effective settings and where each came from; "
        "check: validate settings and plugins (exit 0 or 2); plugins: list plugins, hooks and message types",
    )
    parser.add_argument("--host", help="interface to listen on (overrides websocket.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides websocket.port)")
    parser.add_argument(
        "--settings", metavar="FILE", help="settings file (default: $WSGATE_SETTINGS or ./settings.toml)"
    )
    parser.add_argument("--version", action="version", version=f"wsgate {__version__}")
    return parser


def _fail(message: str, code: int) -> int:
    """Print the one exit line, masked by the one rule (`wsgate.redaction`) even before settings are known."""
    print(f"wsgate: {Redactor().redact(message)}", file=sys.stderr)
    return code
