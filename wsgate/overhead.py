"""What a message's encoding grows by on its way to a client, in bytes, and the longest message that fits.

A client's queue is bounded in bytes (`websocket.send_queue_bytes`); a message reaches it stamped (a room with
history: `history.stamp`), framed (`wire.data_frame`), or inside an answer (`history`, `presence`). The bounds
here are what every route checks against (`Router.begin`, `RedisPublisher`, `config.checks`), so that no
message or answer is made that no client could be sent. The bottom layer: it imports nothing of wsgate's.
"""

from __future__ import annotations

from typing import Final

STAMP_BYTES: Final = 80
"""The most `stamp` adds to a message, in bytes: `,"offset":` and up to 20 digits, `,"epoch":"`, an epoch of up
to 24 characters (`new_epoch`: 21) and `"}`, less the brace it replaces (65), rounded up."""
FRAME_HEAD_BYTES: Final = 10
"""The longest head of the frame a message goes in (`wire.data_frame`; RFC 6455 section 5.2: two bytes, and
eight of payload length)."""


ANSWER_BYTES: Final = 1024
"""The most a `history` answer adds around one message but the room's name, in bytes: its envelope, position and
time (about 150), and a request id (up to 64 characters, JSON-escaped: 386), rounded up."""


def answer_overhead(max_room_name_length: int) -> int:
    """The most a `history` or `presence` answer adds, framed, to what it lists, in bytes: `ANSWER_BYTES`, the
    room's name (at most 4 bytes of UTF-8 per character, quoted) and the frame's head."""
    return ANSWER_BYTES + 4 * max_room_name_length + 2 + FRAME_HEAD_BYTES


def largest_message(send_queue_bytes: int, max_room_name_length: int) -> int:
    """The longest encoded message (bytes) that fits in `send_queue_bytes` (what may wait for one client) as its
    members get it (stamped in a room with history, framed) and in a `history` answer (`answer_overhead`). A
    longer one could never be sent to a client: `Router.begin` refuses it."""
    return send_queue_bytes - STAMP_BYTES - answer_overhead(max_room_name_length)


def too_large(size: int, largest: int) -> str:
    """The detail of `message is too large` for an encoded message of `size` bytes (`largest_message`)."""
    return f"{size} bytes once encoded; at most {largest} fit in what may wait for a client"
