"""Property-based tests (hypothesis): whatever a client sends, the answer is a valid action or a documented error.

The decoder is tested directly; the dispatcher through a live gateway, one real
WebSocket connection receiving every generated frame.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgate import errors, protocol
from wsgate.protocol import ClientError, Decoder
from wsgate.testing import Peer, StartServer

DOCUMENTED_ERRORS = {kind.text for kind in errors.CLIENT_ERRORS}
SPEC_TYPES = [protocol.SUBSCRIBE, protocol.UNSUBSCRIBE, protocol.PUBLISH, protocol.BROADCAST, protocol.PING]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
rooms = st.none() | st.text(max_size=300) | json_values
messages = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(SPEC_TYPES) | json_values, "room": rooms, "data": json_values}
)
# What can travel in a text frame: any JSON value, a message-shaped object, or any text at all.
frames = (
    st.builds(json.dumps, json_values)
    | st.builds(json.dumps, messages)
    | st.text(st.characters(exclude_categories=["Cs"]))  # WebSocket text is UTF-8: no lone surrogates
)


def decode_or_documented_error(frame: str | bytes) -> protocol.Message | None:
    try:
        return Decoder(max_room_length=256, max_depth=8).decode(frame)
    except ClientError as err:
        assert err.text in DOCUMENTED_ERRORS, err.text
        return None


@settings(max_examples=500)
@given(st.binary())
def test_any_bytes_decode_to_a_message_or_a_documented_error(frame: bytes) -> None:
    decode_or_documented_error(frame)


@pytest.mark.slow
@settings(max_examples=500)
@given(frames)
def test_any_text_decodes_to_a_message_or_a_documented_error(frame: str) -> None:
    message = decode_or_documented_error(frame)
    if message is not None:  # a message is exactly what was sent
        sent = json.loads(frame)
        assert (message.type, message.room, message.data) == (sent["type"], sent.get("room"), sent.get("data"))
        assert isinstance(message.type, str) and message.type
        assert message.room is None or (isinstance(message.room, str) and len(message.room) <= 256)


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40))
def test_depth_limit_is_exact(depth: int, limit: int) -> None:
    data: Any = 0
    for _ in range(depth - 1):  # the message itself is level 1
        data = [data]
    frame = json.dumps({"type": "ping", "data": data})
    try:
        Decoder(max_depth=limit).decode(frame)
        accepted = True
    except ClientError as err:
        assert err.text == protocol.TOO_DEEP
        accepted = False
    assert accepted == (depth <= limit)


@pytest.fixture
async def live_client(wsgate_server: StartServer) -> Peer:
    server = await wsgate_server(plugins={"disabled": ["echo", "users", "token_auth"]})  # the spec's types only
    return await server.connect()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
async def test_the_live_dispatcher_answers_every_frame_with_an_action_or_a_documented_error(
    live_client: Peer, frame: str
) -> None:
    reply = await live_client.request(frame)  # every frame gets exactly one answer
    assert reply["type"] in ("error", "pong", "subscribed", "unsubscribed", "message"), reply
    if reply["type"] == "error":
        assert reply["error"] in DOCUMENTED_ERRORS, reply
        assert reply["error"] != protocol.INTERNAL_ERROR, (frame, reply)  # never a handler crash
