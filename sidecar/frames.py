"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once and shared.

Pure functions; no state. Server frames are never masked, so one frame built from one
encoded event serves every recipient.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .protocol import MAX_CLOSE_REASON

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One final (FIN) unmasked frame carrying ``payload``."""
    first = 0x80 | opcode
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x10000:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame; ``payload`` must already be UTF-8."""
    return frame(OP_TEXT, payload)


def truncate_reason(reason: str) -> bytes:
    """``reason`` as UTF-8, cut to :data:`MAX_CLOSE_REASON` bytes on a character boundary."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode(errors="ignore").encode()


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a (truncated) ``reason``."""
    return frame(OP_CLOSE, struct.pack("!H", code) + truncate_reason(reason))


def split_frames(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int]]:
    """Walk whole unmasked frames in ``data``: ``(opcode, payload_start, end)`` for each.

    For bytes a server wrote (ours, or the WebSocket library's); stops at the first frame that
    is incomplete or masked.
    """
    view = memoryview(data)
    pos, size = 0, len(view)
    while size - pos >= 2:
        first, second = view[pos], view[pos + 1]
        if second & 0x80:
            return
        n, start = second & 0x7F, pos + 2
        if n == 126:
            if size - pos < 4:
                return
            n, start = struct.unpack_from("!H", view, pos + 2)[0], pos + 4
        elif n == 127:
            if size - pos < 10:
                return
            n, start = struct.unpack_from("!Q", view, pos + 2)[0], pos + 10
        end = start + n
        if end > size:
            return
        yield first & 0x0F, start, end
        pos = end


def close_code(payload: bytes | memoryview) -> int:
    """The code of a close frame's payload (1005 when it carries none)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
