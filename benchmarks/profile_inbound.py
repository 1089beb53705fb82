"""The cost of one inbound message, step by step, measured in-process (no sockets, no second process).

    make profile-inbound      # or: .venv/bin/python benchmarks/profile_inbound.py [--limits] [--cprofile]

A gateway is built with `create_app` (in-memory broker, default settings; `--limits` turns on what the bench's
`wsgate-limits` server turns on), `--rooms` rooms of two fake connections each (tests/fakes.py's recording
transport instead of a socket), all subscribed through the dispatcher. Then the many-rooms scenario's message,
a publish of `[time_ns, 0, PAD]` to the sender's own room, is handled `--messages` times, round robin over the
rooms, each by `Dispatcher.dispatch` driven by hand (`coroutine.send(None)`, as a reader in `data_received`
drives it): a message that suspended (awaited something that yields to the loop) would be reported.

Each step is timed alone, on the same inputs, with `time.perf_counter_ns` around a loop of calls: the best of
`--repeat` rounds, in microseconds per message. "whole dispatch" is the end-to-end figure; "rest" is what it
holds beyond the steps listed (the handler's own code, the gateway and router calls, coroutine frames). The
socket's read and frame parsing (aiohttp's reader, or the protocol-driven reader replacing it) is not measured
here: it is the reader's. Timings on a shared machine are noisy: compare figures of one run, or use --cprofile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import RecordingTransport  # noqa: E402
from wsgate import protocol  # noqa: E402
from wsgate.app import create_app  # noqa: E402
from wsgate.clients import GatewayConnection  # noqa: E402
from wsgate.keys import DECODER, DISPATCHER, FLUSHER, GATEWAY, HUB, METRICS, ROUTER, SCHEDULE, SETTINGS  # noqa: E402
from wsgate.testing import make_settings  # noqa: E402
from wsgate.wire import text_frame  # noqa: E402

PAD = "x" * 40  # benchmarks/loadgen.py's payload padding
LIMITS = {  # benchmarks/run.py's wsgate-limits, as settings
    "messages_per_second": 1_000_000,
    "bytes_per_second": 1_000_000_000,
    "max_rooms_per_client": 100,
    "max_connections_per_ip": 100_000,
    "room_name_pattern": "[a-z0-9:-]+",
}
RULES = ["private-* = identity", "user:{sub} = identity", "ops:* = claim:admin"]


class NullTransport(RecordingTransport):
    """A socket that takes every write and keeps nothing (a recording one grows by each write)."""

    def write(self, data: bytes) -> None:
        self.writes += 1


def timed(call: Callable[[], object], count: int, repeat: int) -> float:
    """The best of `repeat` rounds of `count` calls of `call`, in microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter_ns() - started) / count / 1000)
    return best


def drive(coroutine: Any) -> None:
    """Run `coroutine` to its end without an event loop turn; fail if it suspends."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("the message suspended: the common path must complete without yielding to the loop")


async def build(rooms: int, limits: bool) -> tuple[Any, list[tuple[GatewayConnection, str]]]:
    tables: dict[str, Any] = {"logging": {"level": "WARNING"}}
    if limits:
        tables["websocket"] = {"limits": LIMITS}
        tables["auth"] = {"rooms": RULES}
    app = await create_app(make_settings(**tables))
    hub, dispatcher = app[HUB], app[DISPATCHER]
    senders = []
    for index in range(rooms):
        room = f"room-{index}"
        pair = []
        for _ in range(2):
            conn = GatewayConnection(
                NullTransport(),  # type: ignore[arg-type]
                remote="127.0.0.1",
                settings=app[SETTINGS].websocket,
                flusher=app[FLUSHER],
                schedule=app[SCHEDULE],
                metrics=app[METRICS],
                on_drop=hub.remove,
                gateway=app[GATEWAY],
            )
            assert hub.admit(conn)
            drive(dispatcher.dispatch(conn, json.dumps({"type": "subscribe", "room": room})))
            pair.append(conn)
        senders.append((pair[0], room))
    await asyncio.sleep(0)  # the flusher writes the `subscribed` answers
    return app, senders


def message(room: str) -> str:
    """The many-rooms scenario's publish, as its client (picows, json.dumps) sends it."""
    return json.dumps({"type": "publish", "room": room, "data": [time.monotonic_ns(), 0, PAD]}, separators=(",", ":"))


def flush(app: Any) -> None:
    """What the flusher does at the end of the loop turn (one write per outbox that got frames)."""
    app[FLUSHER]._flush()


def masked_frame(text: str) -> bytes:
    """`text` as a client sends it: one masked text frame (RFC 6455 section 5.3)."""
    payload, mask = text.encode(), b"\x01\x02\x03\x04"
    size = len(payload)
    head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def aiohttp_read(text: str) -> Callable[[], object] | None:
    """One frame through today's reader (aiohttp's WebSocketReader, as `ws.receive()` takes it out of its queue),
    or None when this aiohttp's private reader is not where it was (3.14)."""
    try:
        from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    except ImportError:
        return None

    class Protocol:
        _reading_paused = False

        def pause_reading(self) -> None:
            pass

    try:
        queue = WebSocketDataQueue(Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        reader = WebSocketReader(queue, 1 << 20, False, True)  # (no deflate; text decoded, as the server reads it)
    except TypeError:
        return None
    frame = masked_frame(text)

    def read() -> None:
        reader.feed_data(frame)
        drive(queue.read())  # (what `ws.receive()` awaits: the frame is there, it does not suspend)

    return read


async def profile(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    app, senders = await build(args.rooms, args.limits)
    dispatcher, decoder, hub = app[DISPATCHER], app[DECODER], app[HUB]
    metrics, router, gateway = app[METRICS], app[ROUTER], app[GATEWAY]
    texts = [(conn, room, message(room)) for conn, room in senders]
    count, repeat = args.messages, args.repeat
    index = 0

    def pick() -> tuple[GatewayConnection, str, str]:
        nonlocal index
        index = (index + 1) % len(texts)
        return texts[index]

    def whole() -> None:
        conn, _, text = pick()
        drive(dispatcher.dispatch(conn, text))
        if index % 64 == 0:
            flush(app)

    conn0, room0, text0 = texts[0]
    parsed = decoder.parse(text0)
    decoded = decoder.message(parsed, text0)
    encoded = protocol.encode(protocol.MESSAGE, room=room0, data=decoded.data, client_id=conn0.id)
    members = list(hub.rooms[room0])
    frame = text_frame(encoded)
    handler = dispatcher.registry.get("publish")

    def decode() -> None:
        decoder.message(decoder.parse(text0), text0)

    def json_only() -> None:
        protocol.loads(text0)

    def validate() -> None:
        decoder.message(parsed, text0)

    def rate() -> None:
        if conn0.limiter is not None:
            dispatcher.within_rate(conn0, len(text0))

    def authorize() -> None:
        drive(gateway.authorize(conn0, protocol.PUBLISH, room0))

    def encode() -> None:
        protocol.encode(protocol.MESSAGE, room=room0, data=decoded.data, client_id=conn0.id)

    def deliver() -> None:
        hub.deliver(room0, encoded)
        flush(app)

    def frame_only() -> None:
        text_frame(encoded)

    def put() -> None:
        for member in members:
            member.put(frame)
        flush(app)

    def count_metrics() -> None:
        metrics.message_received("publish")
        metrics.messages_delivered(2)

    def lookup() -> None:
        dispatcher.registry.get("publish")

    def route() -> None:
        drive(router.publish(room0, encoded))
        flush(app)

    def handle_only() -> None:
        drive(handler(conn0, decoded))
        flush(app)

    for warm in (whole, decode, deliver):  # (first calls fill caches)
        timed(warm, 2000, 1)
    read = aiohttp_read(text0)
    steps = [
        ("whole dispatch (publish to a 2-member room, flush included)", timed(whole, count, repeat), "dispatch"),
        (
            "read: today's aiohttp reader (unmask, parse, queue; no socket, no task wake-up)",
            timed(read, count, repeat) if read is not None else float("nan"),
            "WebSocketReader.feed_data",
        ),
        ("decode: JSON (protocol.loads)", timed(json_only, count, repeat), "loads"),
        ("decode: JSON + validation (Decoder.parse + message)", timed(decode, count, repeat), "parse+message"),
        ("  of which validation (depth, type, room name)", timed(validate, count, repeat), "Decoder.message"),
        ("dispatch: handler lookup", timed(lookup, count, repeat), "registry.get"),
        ("rate limits (Dispatcher.within_rate)", timed(rate, count, repeat), "within_rate"),
        ("authorization (Gateway.authorize: rules, hooks)", timed(authorize, count, repeat), "authorize"),
        ("encode (protocol.encode of the message)", timed(encode, count, repeat), "encode"),
        ("delivery: Hub.deliver to 2 members + flush", timed(deliver, count, repeat), "deliver"),
        ("  of which the frame (wire.text_frame)", timed(frame_only, count, repeat), "text_frame"),
        ("  of which 2 x Connection.put + flush", timed(put, count, repeat), "put"),
        ("routing: Router.publish (relay, deliver, metrics)", timed(route, count, repeat), "router"),
        ("metrics (received + delivered counters)", timed(count_metrics, count, repeat), "metrics"),
        ("handler: publish (authorize, encode, route, deliver)", timed(handle_only, count, repeat), "handler"),
    ]
    flush(app)
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            whole()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=2000, help="rooms of 2 fake clients (default 2000)")
    parser.add_argument("--messages", type=int, default=20000, help="messages per round (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best counts (default 5)")
    parser.add_argument("--limits", action="store_true", help="every per-message check on (the bench's wsgate-limits)")
    parser.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions of dispatch")
    args = parser.parse_args()
    steps = asyncio.run(profile(args))
    print(f"| step ({'limits on' if args.limits else 'defaults'}) | µs per message | measured |")
    print("|---|---|---|")
    for name, micros, what in steps:
        print(f"| {name} | {micros:.2f} | {what} |")


if __name__ == "__main__":
    main()
