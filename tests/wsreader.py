"""A minimal raw-socket WebSocket client for tests that read many frames or never read at all.

websocket-client parses frames one ``recv`` at a time and needs a thread per client; reading
50 x 10,000 frames that way is slow on two cores. :class:`RawWS` does its own handshake on a
plain socket (so the socket options, e.g. a tiny ``SO_RCVBUF``, are ours; the handshake is
:class:`tests.rawws.RawWS`'s), parses server frames incrementally (:class:`FrameParser`, on
:mod:`sidecar.frames`) and :func:`pump` reads many clients in one selector loop, in the
calling thread. Server frames are never masked; the few frames we send (text, close) are
masked as RFC 6455 requires. Everything is bounded by deadlines; nothing sleeps. A
:class:`RawWS` belongs to the one thread that reads it.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from sidecar import frames
from sidecar.frames import Frame
from tests import rawws

OP_CONT, OP_TEXT, OP_BINARY = frames.OP_CONT, frames.OP_TEXT, frames.OP_BINARY
OP_CLOSE, OP_PING, OP_PONG = frames.OP_CLOSE, frames.OP_PING, frames.OP_PONG

#: The server answered the upgrade with something other than ``101`` (``.status``, ``.head``).
HandshakeError = rawws.HandshakeFailed


class FrameParser(frames.FrameParser):
    """Incremental parser of server frames that asserts what the sidecar promises.

    Every frame is final (the sidecar never fragments) and unmasked (RFC 6455 5.1).
    """

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data``; every frame now complete (``AssertionError`` on a broken promise)."""
        out = super().feed(data)
        for frame in out:
            assert frame.fin, "fragmented frames are not expected from the sidecar"
            assert not frame.masked, "server frames must not be masked"
        return out


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
        self.sock.sendall(frames.build_frame(OP_TEXT, text.encode()))

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort) and close the socket without waiting."""
        try:
            self.sock.sendall(frames.build_frame(OP_CLOSE, frames.close_payload(code)))
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
    """Open ``ws://127.0.0.1:port/ws<query>``; raise :class:`HandshakeError` if not ``101``.

    ``rcvbuf`` sets ``SO_RCVBUF`` before connecting (it sets the TCP window).
    """
    ws = rawws.RawWS.connect(port, f"/ws{query}", token=token, rcvbuf=rcvbuf, timeout=timeout)
    return RawWS(ws.sock, ws.parser.take_bytes())


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
