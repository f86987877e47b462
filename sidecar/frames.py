"""The raw WebSocket codec (RFC 6455): server frames built once and shared, and the client side.

The server side (:func:`frame`, :func:`text_frame`, :func:`close_frame`) builds unmasked frames,
so one frame built from one encoded event serves every recipient. The client side serves the
tests and the bench: :func:`build_frame` makes any frame a client could send, valid or not;
:func:`walk_frames` is the one header walk, under :func:`split_frames` and :class:`FrameParser`
(frames from a byte stream, incrementally); :func:`upgrade_request`, :func:`accept_key` and
:func:`parse_response_head` cover the opening handshake.

Pure: no I/O, no threads, no locks, nothing but the standard library and :mod:`.protocol`. The
functions keep no state; a :class:`FrameParser` is owned by the one thread that feeds it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

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
    for first, second, start, end in walk_frames(memoryview(data)):
        if second & 0x80:
            return
        yield first & 0x0F, start, end


def close_code(payload: bytes | memoryview) -> int:
    """The code of a close frame's payload (1005 when it carries none)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


# -- the client side: frames a client sends (valid or not), server frames parsed -------------


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (RFC 6455 section 5.3)."""
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def _length_field(mask_bit: int, n: int, form: int) -> bytes:
    """The second header byte and the extended length, in the 7-, 16- or 64-bit form."""
    if form == 7:
        if n > 125:
            raise ValueError("payload too long for the 7-bit length form")
        return bytes((mask_bit | n,))
    if form == 16:
        if n > 0xFFFF:
            raise ValueError("payload too long for the 16-bit length form")
        return struct.pack("!BH", mask_bit | 126, n)
    if form == 64:
        return struct.pack("!BQ", mask_bit | 127, n)
    raise ValueError(f"length_form must be 7, 16 or 64, not {form}")


class FrameOptions(TypedDict, total=False):
    """The keyword options of :func:`build_frame` (for wrappers that pass them on)."""

    fin: bool
    rsv: int
    mask: bool | bytes
    length_form: int | None


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool | bytes = True,
    length_form: int | None = None,
) -> bytes:
    """One frame as a client would send it (masked by default), valid or not.

    ``opcode`` may be any 4-bit value. ``rsv`` is the three RSV bits as an integer 0-7
    (RSV1 = 4). ``mask`` is ``True`` (a random key), ``False`` (unmasked: a protocol error from
    a client) or an explicit 4-byte key. ``length_form`` forces the length encoding: 7 (only
    if it fits), 16 or 64 bits; a longer form than needed is a protocol error (RFC 6455
    section 5.2, "the minimal number of bytes").
    """
    n = len(payload)
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    form = length_form or (7 if n < 126 else 16 if n < 0x10000 else 64)
    head = bytes((first,)) + _length_field(0 if mask is False else 0x80, n, form)
    if mask is False:
        return head + payload
    key = os.urandom(4) if mask is True else bytes(mask)
    return head + key + mask_bytes(payload, key)


def close_payload(code: int | None = None, reason: bytes = b"") -> bytes:
    """The payload of a close frame, untruncated (empty when ``code`` is ``None``)."""
    return b"" if code is None else struct.pack("!H", code) + reason


def walk_frames(
    data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the whole frames in ``data[pos:end]``: ``(first, second, payload_start, frame_end)``.

    ``first`` and ``second`` are the two header bytes as sent (FIN, RSV, opcode; MASK and the
    7-bit length); a masked frame's key is the 4 bytes before ``payload_start``. Payloads are
    not copied or unmasked. Stops at the first incomplete frame: the caller keeps the bytes
    from the last ``frame_end`` on for the next read. The one header walk of this module.
    """
    size = len(data) if end is None else end
    while size - pos >= 2:
        first, second = data[pos], data[pos + 1]
        n = second & 0x7F
        if n < 126:
            start = pos + 2
        elif n == 126:
            if size - pos < 4:
                return
            n, start = (data[pos + 2] << 8) | data[pos + 3], pos + 4
        else:
            if size - pos < 10:
                return
            n, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
        if second & 0x80:
            start += 4
        if start + n > size:
            return
        yield first, second, start, start + n
        pos = start + n


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame read from a peer: header bits, the (unmasked) payload, its size on the wire."""

    opcode: int
    payload: bytes
    #: Bytes the frame took on the wire, header (and masking key) included.
    wire_size: int = 0
    fin: bool = True
    rsv: int = 0
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (1005 when it carries none); ``None`` for other frames."""
        return close_code(self.payload) if self.opcode == OP_CLOSE else None

    def json(self) -> Any:
        """The payload of a text frame, decoded as JSON (``ValueError`` for any other frame)."""
        if self.opcode != OP_TEXT:
            raise ValueError(f"expected a text frame, got opcode {self.opcode}")
        return json.loads(self.payload)


def _frame_at(data: bytearray, pos: int, first: int, second: int, start: int, end: int) -> Frame:
    """The frame at ``data[pos:end]`` whose payload starts at ``start``."""
    masked = bool(second & 0x80)
    payload = bytes(data[start:end])
    if masked:
        payload = mask_bytes(payload, bytes(data[start - 4 : start]))
    return Frame(first & 0x0F, payload, end - pos, bool(first & 0x80), (first >> 4) & 7, masked)


class FrameParser:
    """An incremental parser of frames in a byte stream (RFC 6455 section 5.2), bounded.

    Accepts any frame, masked or not, fragmented or not, and reports its header bits: the
    caller decides what is a protocol error. :meth:`feed` returns every complete frame;
    :meth:`append` and :meth:`pop` take them one at a time. At most ``max_buffer`` bytes are
    held (``BufferError`` beyond). Not thread-safe: one thread owns a parser.
    """

    def __init__(self, max_buffer: int = 64 << 20) -> None:
        self.max_buffer = max_buffer
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held: incomplete frames, and complete ones not yet popped."""
        return len(self._buf)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the stream; ``BufferError`` if more than ``max_buffer`` are held."""
        if len(self._buf) + len(data) > self.max_buffer:
            raise BufferError(f"more than {self.max_buffer} bytes without a complete frame")
        self._buf += data

    def pop(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive."""
        for first, second, start, end in walk_frames(self._buf):
            frame = _frame_at(self._buf, 0, first, second, start, end)
            del self._buf[:end]
            return frame
        return None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data``; every frame now complete, in order."""
        self.append(data)
        buf = self._buf
        out: list[Frame] = []
        pos = 0
        for first, second, start, end in walk_frames(buf):
            out.append(_frame_at(buf, pos, first, second, start, end))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def take_bytes(self) -> bytes:
        """Every byte held, unparsed; the parser is empty afterwards."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


# -- the opening handshake, client side (RFC 6455 section 4) ---------------------------------

#: The GUID the server appends to the client's key (RFC 6455 section 1.3).
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def new_key() -> str:
    """A random ``Sec-WebSocket-Key``: 16 bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_request(
    path: str,
    host: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: str | None = None,
    key: str | None = None,
) -> bytes:
    """A valid WebSocket upgrade request head (version 13; a random key unless ``key``).

    ``token`` goes in an ``Authorization: Bearer`` header; ``headers`` are added last.
    """
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or new_key()}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if origin:
        lines.append(f"Origin: {origin}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_response_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """An HTTP response head (without the blank line): status, status line, headers.

    The status is ``0`` when the status line is not HTTP; header names are lower-cased (a
    repeated header keeps its last value).
    """
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, status_line, headers
