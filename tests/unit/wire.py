"""A real connection without a server: a :class:`Connection` on one end of a socketpair.

:func:`open_wire` builds the environ a WSGI server would (the upgrade headers, and
``werkzeug.socket`` set to the connection's guarded socket), creates a stock simple-websocket
``Server`` with our reader thread and wake-up event, reads the ``101`` at the other end and
hands back both ends: the :class:`Wire` (server side) and its :class:`Peer` (the client).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import simple_websocket

from sidecar import frames
from sidecar.core.connection import Connection
from sidecar.frames import Frame
from sidecar.platform import SHUTDOWN_WAKES_READERS
from tests.unit.fakes import PATIENCE

#: The smallest send buffer Linux grants (it doubles the value and applies a floor).
TINY_BUFFER = 4096


def socket_pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected pair: ``(ours, the peer's)``; ``sndbuf`` shrinks our send buffer."""
    ours, theirs = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    theirs.settimeout(5)
    return ours, theirs


@dataclass
class Peer:
    """The client end: reads server frames, sends masked client frames. One test thread."""

    sock: socket.socket
    parser: frames.FrameParser = field(default_factory=frames.FrameParser)
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False

    def _read(self, timeout: float) -> list[Frame]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return []
        self.received += data
        return self.parser.feed(data)

    def frames(self, count: int, timeout: float = PATIENCE) -> list[Frame]:
        """Read until ``count`` frames arrived (fewer at EOF); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        while len(out) < count and not self.eof:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(out)} of {count} frames within {timeout} s"
            out.extend(self._read(remaining))
        return out

    def to_eof(self, timeout: float = PATIENCE) -> list[Frame]:
        """Every frame until the other end shuts the socket down."""
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        while not self.eof:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no EOF within {timeout} s (got {len(out)} frames)"
            out.extend(self._read(remaining))
        assert self.parser.buffered == 0, "a frame was cut off"
        return out

    def quiet(self, timeout: float = 0.05) -> bool:
        """Whether nothing at all arrives within ``timeout`` (and the socket is still open)."""
        return not self._read(timeout) and not self.eof and not self.parser.buffered

    def discard(self, count: int, timeout: float = PATIENCE) -> None:
        """Read and drop exactly ``count`` raw bytes (what :func:`fill` wrote)."""
        deadline = time.monotonic() + timeout
        while count:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(min(count, 1 << 20))
            assert chunk, "EOF while discarding"
            count -= len(chunk)

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """Send one masked frame."""
        self.sock.sendall(frames.build_frame(opcode, payload))

    def close(self, code: int = 1000) -> None:
        """Send a close frame with ``code``."""
        self.send(frames.OP_CLOSE, frames.close_payload(code))


@dataclass
class Wire:
    """The server end: the :class:`Connection` and the library's ``Server`` on it."""

    conn: Connection
    server: simple_websocket.Server
    raw: socket.socket

    def end(self) -> None:
        """Shut both directions down and wait for the reader thread.

        On Windows a shutdown does not wake the reader blocked in ``recv`` (Winsock completes
        a pending call only when the socket is closed): the socket is then closed, as the WSGI
        server does after the request (:data:`sidecar.platform.SHUTDOWN_WAKES_READERS`).
        """
        self.conn.shutdown()
        if not SHUTDOWN_WAKES_READERS:
            self.raw.close()
        assert self.conn.join_reader(PATIENCE), "the reader thread did not end"


def upgrade_environ(conn: Connection) -> dict[str, object]:
    """What Werkzeug would put in the environ of an upgrade request."""
    return {
        "REQUEST_METHOD": "GET",
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": frames.new_key(),
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "werkzeug.socket": conn.socket,
    }


def open_wire(
    *,
    sndbuf: int | None = None,
    write_deadline: float = 5.0,
    max_message_size: int = 1 << 16,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Wire, Peer]:
    """A connection after its handshake, and its peer (the ``101`` already read)."""
    ours, theirs = socket_pair(sndbuf)
    conn = Connection(
        ours, write_deadline=write_deadline, max_message_size=max_message_size, clock=clock
    )
    server = simple_websocket.Server(
        upgrade_environ(conn),
        max_message_size=max_message_size,
        thread_class=conn.reader_thread,
        event_class=conn.wakeup_event,
    )
    conn.attach(server)
    peer = Peer(theirs)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = theirs.recv(4096)
        assert chunk, "no 101"
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    peer.parser.feed(rest)
    return Wire(conn, server, ours), peer


def fill(raw: socket.socket) -> int:
    """Fill ``raw``'s send buffer to the last byte, behind the guard's back (a stalled peer);
    the number of filler bytes written."""
    written = 0
    for size in (65536, 4096, 256, 1):
        while True:
            try:
                written += raw.send(b"\0" * size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
    return written


class Writer:
    """A thread running one blocking call (e.g. ``send_all``); what it raised, if anything."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float = PATIENCE) -> BaseException | None:
        """Wait for the call to end; what it raised."""
        assert self.done.wait(timeout), "the call did not end"
        return self.error
