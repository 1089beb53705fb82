"""The floor: the benchmark's connect, subscribe and publish in the fewest Python steps asyncio allows, nothing else.

A bare `asyncio.Protocol` per socket: the upgrade parsed by hand (no aiohttp, no request object), client frames
unmasked in place, a publish encoded once and written to each member at once (no outbox, no task, no limit, no
check beyond what the benchmark's clients send, no keepalive, no metrics, and no `timestamp` in its messages: a
clock read and a few bytes less than the spec's). Not a server anyone should run: it is what Python and asyncio
cost on this machine for the benchmark's work alone, so that run.py can show how much of wsgate's time is its own
(`floor` beside `naive` and `wsgate` in many-rooms-2000x2 and idle-10000).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import itertools

import orjson

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server's: RFC 6455 section 5.1)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[str, set[Client]] = {}
        self.clients: set[Client] = set()
        self.ids = itertools.count(1)


class Client(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.id = str(next(hub.ids))
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.joined: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hub.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.clients.discard(self)
        for room in self.joined:
            members = self.hub.rooms[room]
            members.discard(self)
            if not members:
                del self.hub.rooms[room]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end == -1:
                self.buffer = buffer
                return
            self.upgrade(buffer[:end])
            buffer = buffer[end + 4 :]
        at, length = 0, len(buffer)
        while length - at >= 6:
            opcode, size = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            head = 6 if size < 126 else 8 if size == 126 else 14
            if size >= 126:
                if length - at < head:
                    break
                size = int.from_bytes(buffer[at + 2 : at + head - 4], "big")
            if length - at < head + size:
                break
            mask = buffer[at + head - 4 : at + head]
            masked = buffer[at + head : at + head + size]
            keys = (mask * (size // 4 + 1))[:size]
            payload = (int.from_bytes(masked, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")
            at += head + size
            self.frame(opcode, payload)
        self.buffer = buffer[at:]

    def upgrade(self, head: bytes) -> None:
        assert self.transport is not None
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        connected = orjson.dumps(
            {"type": "connected", "data": {"client_id": self.id, "message": "Connected to WebSocket server"}}
        )
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame(TEXT, connected)
        )
        self.upgraded = True

    def frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == TEXT:
            message = orjson.loads(payload)
            kind, room = message.get("type"), message.get("room")
            if kind == "publish" and room in self.joined:
                out = frame(
                    TEXT,
                    orjson.dumps({"type": "message", "room": room, "data": message.get("data"), "client_id": self.id}),
                )
                for member in self.hub.rooms[room]:
                    member.transport.write(out)  # type: ignore[union-attr]
            elif kind == "broadcast":
                out = frame(TEXT, orjson.dumps({"type": "message", "data": message.get("data"), "client_id": self.id}))
                for member in self.hub.clients:
                    member.transport.write(out)  # type: ignore[union-attr]
            elif kind == "subscribe":
                members = self.hub.rooms.setdefault(room, set())
                members.add(self)
                self.joined.add(room)
                answer = {"type": "subscribed", "room": room, "data": {"room": room, "client_count": len(members)}}
                transport.write(frame(TEXT, orjson.dumps(answer)))
        elif opcode == PING:
            transport.write(frame(PONG, payload))
        elif opcode == CLOSE:
            transport.write(frame(CLOSE, payload[:2]))
            transport.close()


async def serve(host: str, port: int) -> None:
    hub = Hub()
    server = await asyncio.get_running_loop().create_server(lambda: Client(hub), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    gc.set_threshold(10_000)  # wsgate's default (runtime.gc_threshold): the collector's work is not the floor's
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
