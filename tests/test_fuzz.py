"""A live fuzz test: hostile and broken WebSocket frames against a running gateway, then a health check.

Each fuzz connection does a real handshake over a raw socket, sends a random
sequence of well-formed, malformed and mutated frames, half-closes and reads
until the server hangs up. Afterwards the gateway must still answer, hold no
connection, task or memory that the fuzzing left behind, and have logged no
traceback. The run is bounded (count and time) and seeded (the seed is printed).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import random
import socket
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from wsgate.testing import TIMEOUT, Server, StartServer, eventually

CONNECTIONS = 600
CONCURRENCY = 25
MEMORY_SLACK = 256 * 1024  # bytes the heap may differ from its baseline (allocator caches, interned strings)


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True, length: int | None = None
) -> bytes:
    """One client frame; every field can be made wrong."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


VALID_MESSAGES = [
    b'{"type":"ping"}',
    b'{"type":"subscribe","room":"fuzz"}',
    b'{"type":"publish","room":"fuzz","data":[1,2]}',
    b'{"type":"broadcast","data":"x"}',
    b'{"type":"unsubscribe","room":"fuzz"}',
]

Generator = Callable[[random.Random], bytes]
WHOLE_FRAMES: list[Generator] = [  # the server can tell where each of these ends
    lambda r: frame(0x1, r.choice(VALID_MESSAGES)),
    lambda r: frame(0x1, b"\xff\xfe" + r.randbytes(r.randrange(8))),  # invalid UTF-8
    lambda r: frame(0x1, b'{"type":"ping","data":%s}' % nested(r.choice([40, 1000, 100_000]))),  # deep nesting
    lambda r: frame(0x1, b'{"type":"ping"', fin=False) + frame(0x9, b"mid") + frame(0x0, b"}"),  # fragmented, valid
    lambda r: frame(0x0, b"continuation without a start"),
    lambda r: frame(0x1, b"{", fin=False) + frame(0x1, b"a new message mid-fragment"),
    lambda r: frame(0x9, b"p" * 126),  # control frame over 125 bytes
    lambda r: frame(0x9, b"ping", fin=False),  # fragmented control frame
    lambda r: frame(0xA, r.randbytes(r.randrange(20))),  # unsolicited pong
    lambda r: close_frame(r.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535])),  # codes never sent
    lambda r: close_frame(1000, b"\xc3\x28"),  # a reason that is not UTF-8
    lambda r: frame(0x8, b"\x03"),  # a one-byte close payload
    lambda r: frame(r.choice([0x3, 0x7, 0xB, 0xF]), b"reserved opcode"),
    lambda r: frame(0x1, b'{"type":"ping"}', rsv=r.choice([1, 2, 4])),  # RSV bits with no extension
    lambda r: frame(0x1, b'{"type":"ping"}', mask=False),  # clients must mask
    lambda r: frame(0x1, b"", length=2**63 - 1),  # a length no server can hold
    lambda r: frame(0x2, r.randbytes(r.randrange(64))),  # binary
]
BROKEN_STREAMS: list[Generator] = [  # after these the server cannot find the next frame: the client vanishes
    lambda r: r.randbytes(r.randrange(1, 64)),  # noise
    lambda r: frame(0x1, r.choice(VALID_MESSAGES))[: r.randrange(1, 8)],  # truncated
    lambda r: bytes(
        b ^ (1 << r.randrange(8)) if r.random() < 0.1 else b  # bit flips in a valid frame
        for b in frame(0x1, r.choice(VALID_MESSAGES))
    ),
]


async def fuzz_one(port: int, rng: random.Random) -> None:
    """One connection: random whole frames, then a close frame (and read until the server hangs up), or
    a broken stream and an abrupt disconnect."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        frames = [rng.choice(WHOLE_FRAMES)(rng) for _ in range(rng.randrange(1, 6))]
        vanish = rng.random() < 0.25
        frames.append(rng.choice(BROKEN_STREAMS)(rng) if vanish else close_frame(1000))
        try:
            await loop.sock_sendall(sock, b"".join(frames))
            if not vanish:
                async with asyncio.timeout(TIMEOUT):  # the server must answer the close, or drop us, and hang up
                    while await loop.sock_recv(sock, 65536):
                        pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server dropped us for a protocol error: a correct answer


@pytest.fixture
def traced() -> object:
    tracemalloc.start()
    yield
    tracemalloc.stop()


async def settled(server: Server, caplog: pytest.LogCaptureFixture) -> int:
    """Traced heap size once the gateway holds no client and garbage is collected. The log records captured so
    far are checked for tracebacks, then dropped: the test's own capture is no memory of the gateway's (under
    load it holds thousands of records, some with their frames)."""
    await eventually(lambda: not server.hub.connections and not server.hub.addresses)
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
    caplog.clear()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.slow
async def test_fuzzed_frames_leave_the_server_healthy(
    wsgate_server: StartServer, traced: object, caplog: pytest.LogCaptureFixture
) -> None:
    server = await wsgate_server(websocket={"write_wait": "2s"}, plugins={"disabled": ["echo", "users", "token_auth"]})
    port = server.test_server.port
    assert port is not None
    seed = int(os.environ.get("WSGATE_TEST_FUZZ_SEED") or random.randrange(2**32))  # (set it to replay a run)
    print(f"fuzz seed: {seed}")  # noqa: T201 - shown on failure, to replay the run
    rng = random.Random(seed)
    for _ in range(20):  # warm up: first-use allocations (imports, caches) are not leaks
        await fuzz_one(port, rng)
    baseline_memory = await settled(server, caplog)
    baseline_tasks = len(asyncio.all_tasks())

    remaining = CONNECTIONS

    async def worker(rng: random.Random) -> None:  # a few workers, not one task per connection to remember
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fuzz_one(port, rng)

    async with asyncio.timeout(120):
        await asyncio.gather(*(worker(random.Random(rng.random())) for _ in range(CONCURRENCY)))

    memory = await settled(server, caplog)
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks)
    metrics = server.metrics
    print(
        "heap growth",
        memory - baseline_memory,
        {
            r: metrics.error_count(r)
            for r in (  # noqa: T201
                "invalid_json",
                "too_deep",
                "binary_frame",
                "message_too_big",
            )
        },
    )
    # the fuzzing reached the dispatcher and the frame reader, not only the handshake
    assert all(metrics.error_count(r) > 0 for r in ("invalid_json", "too_deep", "binary_frame", "message_too_big"))
    assert memory - baseline_memory < MEMORY_SLACK, (memory, baseline_memory)
    client = await server.connect()
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    assert (await server.counts())[1] == {"status": "healthy", "clients": 1, "rooms": 0}
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
