"""The naive baseline: the spec's protocol written the obvious way with aiohttp.

One coroutine per client reads; publishing JSON-encodes the message for each
recipient and awaits `send_str` on each in turn; no outbox, no batching.
This is what wsgate's figures are divided by (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from aiohttp import WSMsgType, web

ROOMS = web.AppKey("rooms", dict)
CLIENTS = web.AppKey("clients", dict)


def now_ms() -> int:
    return int(time.time() * 1000)


async def send(ws: web.WebSocketResponse, message: dict) -> None:
    message["timestamp"] = now_ms()
    try:
        await ws.send_str(json.dumps(message))
    except ConnectionError:
        pass


async def error(ws: web.WebSocketResponse, text: str) -> None:
    await send(ws, {"type": "error", "error": text})


async def ws_view(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=512000, compress=False)
    await ws.prepare(request)
    rooms: dict[str, set[web.WebSocketResponse]] = request.app[ROOMS]
    clients: dict[web.WebSocketResponse, str] = request.app[CLIENTS]
    client_id = str(uuid.uuid4())
    clients[ws] = client_id
    joined: set[str] = set()
    await send(ws, {"type": "connected", "data": {"client_id": client_id, "message": "Connected to WebSocket server"}})
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                message = json.loads(msg.data)
                kind = message.get("type")
            except (ValueError, AttributeError):
                await error(ws, "invalid JSON format")
                continue
            room = message.get("room") or ""
            if kind == "subscribe":
                if not room:
                    await error(ws, "room name is required")
                    continue
                rooms.setdefault(room, set()).add(ws)
                joined.add(room)
                await send(
                    ws, {"type": "subscribed", "room": room, "data": {"room": room, "client_count": len(rooms[room])}}
                )
            elif kind == "unsubscribe":
                if room not in joined:
                    await error(ws, "not subscribed to this room")
                    continue
                joined.discard(room)
                rooms[room].discard(ws)
                if not rooms[room]:
                    del rooms[room]
                await send(ws, {"type": "unsubscribed", "room": room, "data": {"room": room}})
            elif kind == "publish":
                if not room:
                    await error(ws, "room name is required")
                elif room not in joined:
                    await error(ws, "not subscribed to this room")
                else:
                    for member in list(rooms.get(room, ())):
                        await send(
                            member,
                            {"type": "message", "room": room, "data": message.get("data"), "client_id": client_id},
                        )
            elif kind == "broadcast":
                for member in list(clients):
                    await send(member, {"type": "message", "data": message.get("data"), "client_id": client_id})
            elif kind == "ping":
                await send(ws, {"type": "pong"})
            else:
                await error(ws, "unknown message type")
    finally:
        del clients[ws]
        for room in joined:
            rooms[room].discard(ws)
            if not rooms[room]:
                del rooms[room]
    return ws


async def health_view(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "healthy", "clients": len(request.app[CLIENTS]), "rooms": len(request.app[ROOMS])}
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    app = web.Application()
    app[ROOMS] = {}
    app[CLIENTS] = {}
    app.router.add_get("/ws", ws_view)
    app.router.add_get("/health", health_view)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
