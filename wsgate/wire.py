"""RFC 6455 framing: the frames wsgate builds itself and writes to sockets as they are.

"Frame" in wsgate means exactly this: one RFC 6455 frame (section 5.2), header
included. A message (the JSON text) becomes a frame once, here, and the same
frame bytes go to every recipient.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

TEXT_OPCODE: Final = 0x1
BINARY_OPCODE: Final = 0x2
_FIN = 0x80  # every frame wsgate builds is a whole message; server frames are never masked (section 5.1)


def data_frame(payload: bytes, opcode: int = TEXT_OPCODE) -> bytes:
    """A complete unmasked data frame (section 5.2): built once, written to every recipient as it is."""
    first, size = _FIN | opcode, len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked text frame: what every JSON message becomes."""
    return data_frame(payload, TEXT_OPCODE)


def frame_payloads(frames: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each frame built by `data_frame`, one after another (for connections that need
    aiohttp to deflate them)."""
    view, pos = memoryview(frames), 0
    while pos < len(frames):
        opcode, size = frames[pos] & 0x0F, frames[pos + 1]
        if size < 126:
            head = 2
        elif size == 126:
            head, size = 4, int.from_bytes(frames[pos + 2:pos + 4], "big")
        else:
            head, size = 10, int.from_bytes(frames[pos + 2:pos + 10], "big")
        yield opcode, bytes(view[pos + head:pos + head + size])
        pos += head + size


_ANSWERABLE = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
PROTOCOL_ERROR: Final = 1002


def close_reply(code: int) -> int:
    """The code to answer a peer's close frame with (section 7.4): 1000, or 1002 when its code may never be
    sent (1004-1006, 1015) or is not assigned; a close frame without a code (0 here) is answered 1000."""
    return 1000 if code == 0 or code in _ANSWERABLE else PROTOCOL_ERROR


PONG_OPCODE: Final = 0xA
PING_FRAME: Final = bytes((0x89, 0))  # FIN + ping, empty payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked control frame (ping/pong); RFC 6455 allows at most 125 payload bytes."""
    payload = payload[:125]
    return bytes((0x80 | opcode, len(payload))) + payload
