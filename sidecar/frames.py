"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once and shared.

Pure functions; no state. Server frames are never masked, so one frame built from one
encoded event serves every recipient.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9

#: A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
MAX_CLOSE_REASON = 123


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
