"""A minimal raw-socket WebSocket client for tests that read many frames or never read at all.

websocket-client parses frames one ``recv`` at a time and needs a thread per client; reading
50 x 10,000 frames that way is slow on two cores. :class:`RawWS` does its own handshake on a
plain socket (so the socket options, e.g. a tiny ``SO_RCVBUF``, are ours), parses server
frames incrementally (:class:`FrameParser`) and :func:`pump` reads many clients in one
selector loop. Server frames are never masked; the few frames we send (close) are masked as
RFC 6455 requires. Everything is bounded by deadlines; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.rawws import upgrade_request

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server answered the upgrade with something other than ``101``."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"handshake answered {status}: {head[:200]!r}")
        self.status = status
        self.head = head


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete server frame: opcode, payload and its size on the wire (header included)."""

    opcode: int
    payload: bytes
    wire_size: int

    def json(self) -> Any:
        assert self.opcode == OP_TEXT, f"expected a text frame, got opcode {self.opcode}"
        return json.loads(self.payload)

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


class FrameParser:
    """Incremental parser of unfragmented, unmasked server frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more data."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            assert b0 & 0x80, "fragmented frames are not expected from the sidecar"
            assert not b1 & 0x80, "server frames must not be masked"
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if end - pos < head + n:
                break
            out.append(Frame(b0 & 0x0F, bytes(buf[pos + head : pos + head + n]), head + n))
            pos += head + n
        if pos:
            del buf[:pos]
        return out


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    assert n < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | n)) + mask + body


class RawWS:
    """A WebSocket client on a plain socket; frames are read with :meth:`recv` or :func:`pump`."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.parser = FrameParser()
        self.frames: list[Frame] = []  # parsed and not yet taken by recv()
        self.eof = False
        self.error: OSError | None = None
        self.frames.extend(self.parser.feed(leftover))

    # -- reading ----------------------------------------------------------------------------
    def _read_once(self, timeout: float) -> bool:
        """One ``recv`` (waiting up to ``timeout``); False on timeout. Sets ``eof`` at the end."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except OSError as exc:  # ECONNRESET after an abort
            self.error = exc
            self.eof = True
            return True
        if not data:
            self.eof = True
            return True
        self.frames.extend(self.parser.feed(data))
        return True

    def recv(self, timeout: float = 5.0) -> Frame:
        """The next frame; ``AssertionError`` on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            assert not self.eof, "connection ended while a frame was expected"
            left = deadline - time.monotonic()
            assert left > 0, f"no frame within {timeout} s"
            self._read_once(left)
        return self.frames.pop(0)

    def take(self, timeout: float) -> list[Frame]:
        """Every frame parsed so far, after one read waiting up to ``timeout`` if there are none.

        Frames that arrived with an earlier one (say, a ping in the same read as the status)
        are included: they sit in ``frames`` until taken.
        """
        if not self.frames and not self.eof:
            self._read_once(timeout)
        out, self.frames = self.frames, []
        return out

    def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.recv(timeout).json()

    def read_to_eof(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame until the connection ends (the server closes or resets it)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            assert left > 0, f"connection did not end within {timeout} s"
            self._read_once(left)
        out, self.frames = self.frames, []
        return out

    # -- writing -----------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        self.sock.sendall(_masked(OP_TEXT, text.encode()))

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort) and close the socket without waiting."""
        try:
            self.sock.sendall(_masked(OP_CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        self.sock.close()


def connect(
    port: int,
    query: str = "",
    *,
    token: str | None = None,
    rcvbuf: int | None = None,
    timeout: float = 5.0,
) -> RawWS:
    """Open ``ws://127.0.0.1:port/ws<query>``; raise :class:`HandshakeError` if not ``101``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf
        )  # before connect: sets the window
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request(f"/ws{query}", f"127.0.0.1:{port}", token=token))
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    if status != 101:
        sock.close()
        raise HandshakeError(status, head)
    return RawWS(sock, rest)


def pump(
    clients: Iterable[RawWS],
    on_frames: Callable[[RawWS, list[Frame]], None],
    done: Callable[[], bool],
    timeout: float,
) -> None:
    """Read every client in one selector loop, handing new frames to ``on_frames``.

    Returns once ``done()`` is true; ``AssertionError`` after ``timeout`` seconds or if a
    client's connection ends first.
    """
    clients = list(clients)
    sel = selectors.DefaultSelector()
    for ws in clients:
        if ws.frames:
            frames, ws.frames = ws.frames, []
            on_frames(ws, frames)
        ws.sock.setblocking(False)
        sel.register(ws.sock, selectors.EVENT_READ, ws)
    deadline = time.monotonic() + timeout
    try:
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"pump: condition not met within {timeout} s"
            for key, _ in sel.select(min(left, 0.5)):
                ws = key.data
                try:
                    data = ws.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                assert data, "pump: a connection ended"
                frames = ws.parser.feed(data)
                if frames:
                    on_frames(ws, frames)
    finally:
        sel.close()
        for ws in clients:
            ws.sock.setblocking(True)
