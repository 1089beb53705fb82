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
    """A complete unmasked data frame (section 5.2): built once, written to every recipient as it is.

    Raises ValueError for a text frame whose payload is not valid UTF-8 (section 8.1: the client would fail
    the connection with 1007), and for an opcode that is not text or binary.
    """
    if opcode == TEXT_OPCODE:
        if not payload.isascii():  # (JSON is mostly ASCII: checked 8 bytes at a time, nothing copied)
            try:
                payload.decode()
            except UnicodeDecodeError as exc:
                raise ValueError(f"a text frame must be valid UTF-8 (RFC 6455 section 8.1): {exc}") from None
    elif opcode != BINARY_OPCODE:
        raise ValueError(f"opcode {opcode:#x} is not a data frame's")
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
            head, size = 4, int.from_bytes(frames[pos + 2 : pos + 4], "big")
        else:
            head, size = 10, int.from_bytes(frames[pos + 2 : pos + 10], "big")
        yield opcode, bytes(view[pos + head : pos + head + size])
        pos += head + size


SENDABLE_CODES: Final = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
"""The close codes an endpoint may send (RFC 6455 sections 7.4.1 and 7.4.2, and the IANA registry's 1012-1014):
never 1004-1006 or 1015 (reserved: 1005 and 1006 only stand for "no code" and "no close frame" in APIs), nothing
below 1000, nothing unassigned in 1016-2999, nothing from 5000 on."""
PROTOCOL_ERROR: Final = 1002
MAX_CLOSE_REASON: Final = 123  # bytes: a control frame carries at most 125 (section 5.5), 2 of them the code


def close_reply(code: int) -> int:
    """The code to answer a peer's close frame with (section 7.4): 1000, or 1002 when its code may never be
    sent (1004-1006, 1015) or is not assigned; a close frame without a code (0 here) is answered 1000."""
    return 1000 if code == 0 or code in SENDABLE_CODES else PROTOCOL_ERROR


def close_fields(code: int, reason: str) -> tuple[int, bytes]:
    """(code, reason as UTF-8) for a close frame wsgate sends, whoever asked for it: the one rule every close
    path goes through (sections 5.5, 5.5.1 and 7.4).

    Raises ValueError for a code an endpoint may not send (see `SENDABLE_CODES`). The reason is cut to
    `MAX_CLOSE_REASON` bytes on a UTF-8 character boundary (a lone surrogate becomes "?"): the frame stays
    within the 125 bytes a control frame may carry, and its text valid UTF-8 (section 8.1).
    """
    if type(code) is not int or code not in SENDABLE_CODES:  # (a bool is an int: True would be code 1)
        raise ValueError(
            f"close code {code!r} may not be sent (RFC 6455 section 7.4): use 1000-1003, 1007-1014 or 3000-4999"
        )
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) > MAX_CLOSE_REASON:
        encoded = encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()  # drops a cut character's head
    return code, encoded


CLOSE_OPCODE: Final = 0x8
PING_OPCODE: Final = 0x9
PONG_OPCODE: Final = 0xA
PING_FRAME: Final = bytes((0x89, 0))  # FIN + ping, empty payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked ping or pong (a close frame is `close_frame`'s). RFC 6455 allows at most
    125 payload bytes (section 5.5): a longer payload raises ValueError (a pong echoes a client's ping, which
    the reader has already held to 125 bytes)."""
    if opcode not in (PING_OPCODE, PONG_OPCODE):
        raise ValueError(f"opcode {opcode:#x} is not a ping's or a pong's")
    if len(payload) > 125:
        raise ValueError(f"a control frame carries at most 125 bytes, not {len(payload)} (RFC 6455 section 5.5)")
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: bytes) -> bytes:
    """An unmasked close frame (section 5.5.1) with `code` and `reason`, as `close_fields` gives them (a code
    that may be sent, at most 123 bytes of UTF-8): the server's own close, or its answer to a client's."""
    payload = struct.pack("!H", code) + reason
    return bytes((0x80 | CLOSE_OPCODE, len(payload))) + payload
