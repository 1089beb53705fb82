"""permessage-deflate: off unless `compression = true`, then negotiated normally."""

from __future__ import annotations

from wsgate.testing import StartServer


async def test_compression_is_off_by_default(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect(compress=15)
    assert client.ws.compress == 0
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_compression_is_negotiated_when_enabled(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"compression": True})
    client = await server.connect(compress=15)
    assert client.ws.compress == 15
    await client.subscribe("z")
    payload = {"text": "compressible " * 500}
    msg = await client.request({"type": "publish", "room": "z", "data": payload})
    assert msg["data"] == payload
