"""One WebSocket connection on the wire: simple-websocket's ``Server`` with every write serialised.

Threads
    * **reader**: simple-websocket's internal thread (``Connection.thread``, a daemon here)
      parses frames with wsproto, answers pings and close frames, enforces the inbound size
      limit and queues messages for :meth:`Connection.receive`;
    * **any other thread** may write through :class:`SocketWriter`: the hub's non-blocking
      fast path, the connection's writer thread, the request thread when it closes.

Locks (acquire in this order, never the reverse)
    * ``Connection.proto_lock`` guards wsproto's connection state: simple-websocket's event
      handling (which also writes pongs and close replies) and our own close;
    * ``SocketWriter.lock`` serialises every byte written to the socket, including
      simple-websocket's internal writes (it writes through the :class:`SocketWriter` proxy),
      and guards ``SocketWriter.pending``, the unsent tail of a non-blocking write that must go
      out before anything else.
    The hub thread never blocks on either: it only try-acquires ``SocketWriter.lock``.

Two defects of the stock stack are fixed here (see the README's "Stack notes"): unsynchronised
writes with ``send`` (partial writes ignored) become locked ``sendall`` calls with a write
deadline, and the reader thread always wakes :meth:`receive` when it ends.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import simple_websocket
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event, TextMessage
from wsproto.utilities import LocalProtocolError

from . import frames

log = logging.getLogger("sidecar.connection")

#: Close codes of the sidecar's protocol (see the README).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4008


class SocketWriter:
    """The only path to the socket for writes; a socket-like proxy for simple-websocket.

    simple-websocket calls :meth:`send`, :meth:`recv`, :meth:`fileno` and :meth:`close` on
    it. ``send`` takes :attr:`lock` and uses ``sendall``; a write that makes no progress for
    ``write_deadline`` seconds raises ``OSError`` (``SO_SNDTIMEO``, which leaves reads alone).
    ``close`` does nothing: the request thread shuts the socket down after the session.
    """

    def __init__(self, sock: socket.socket, write_deadline: float) -> None:
        self.raw = sock
        self.lock = threading.Lock()
        #: Unsent tail of a partial non-blocking write; guarded by :attr:`lock`.
        self.pending: memoryview | None = None
        seconds = int(write_deadline)
        micros = int((write_deadline - seconds) * 1_000_000)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros)
            )
        except OSError:  # pragma: no cover - not a TCP socket (tests with socketpair)
            pass

    def write_locked(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``pending``, then ``data``; blocks up to the deadline. Caller holds the lock."""
        if self.pending is not None:
            tail, self.pending = self.pending, None
            self.raw.sendall(tail)
        if data:
            self.raw.sendall(data)

    def try_write_locked(self, data: bytes) -> None:
        """Write without blocking; keep what did not fit in ``pending``. Caller holds the lock.

        Only call with ``pending`` empty. Raises ``OSError`` if the socket is dead.
        """
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.pending = memoryview(data)[sent:]

    # -- the socket API simple-websocket uses ------------------------------------------
    def send(self, data: bytes | bytearray) -> int:
        """Locked ``sendall`` (simple-websocket's handshake, pongs and close replies)."""
        with self.lock:
            self.write_locked(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        """Read from the socket (only simple-websocket's reader thread reads)."""
        return self.raw.recv(size)

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self.raw.fileno()

    def close(self) -> None:
        """Ignored: the request thread shuts the socket down once the session is over."""

    def shutdown(self) -> None:
        """Shut both directions down, waking any thread blocked on the socket. Never raises."""
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def linger(self, timeout: float, max_bytes: int = 1 << 20) -> None:
        """End the session gracefully: FIN after our close frame, then read until the peer's EOF.

        Only once nobody else uses the socket (reader and writer threads ended). Shutting
        down the reading side while the peer still sends (its close reply, the rest of an
        oversized message) makes the kernel answer with a RST (RFC 6455 7.1.1 wants the
        server to close TCP after the closing handshake). Bounded by ``timeout`` and
        ``max_bytes`` of discarded input; ends with :meth:`shutdown` and clears any pending
        socket error so that the WSGI server's own end-of-request read sees a plain EOF.
        Never raises.
        """
        deadline = time.monotonic() + timeout
        drained = 0
        try:
            with self.lock:
                self.pending = None
                self.raw.shutdown(socket.SHUT_WR)
            while drained < max_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.raw], [], [], remaining)[0]:
                    break
                chunk = self.raw.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    break
                drained += len(chunk)
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):  # reset by the peer, or already closed
            pass
        self.shutdown()
        try:
            self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # read and clear
        except OSError:
            pass


def _daemon_thread(target: Any) -> threading.Thread:
    return threading.Thread(target=target, daemon=True)


class Connection(simple_websocket.Server):
    """A server-side WebSocket whose writes all go through one :class:`SocketWriter`.

    Create it only after the handshake has been validated (see ``sidecar.security``): its
    constructor writes the ``101 Switching Protocols`` response.
    """

    def __init__(
        self,
        environ: Mapping[str, Any],
        sock: socket.socket,
        *,
        max_message_size: int,
        write_deadline: float,
        subprotocols: list[str] | None = None,
        receive_bytes: int = 16384,
    ) -> None:
        self.writer = SocketWriter(sock, write_deadline)
        self.proto_lock = threading.Lock()
        #: The close code we sent, if we closed first (set under ``proto_lock``).
        self.sent_close: int | None = None
        headers: dict[str, Any] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        headers["werkzeug.socket"] = self.writer
        super().__init__(
            headers,
            subprotocols=subprotocols,
            receive_bytes=receive_bytes,
            ping_interval=None,  # keepalive is the hub thread's job (sidecar.hub)
            max_message_size=max_message_size,
            thread_class=_daemon_thread,
        )
        # The handshake is done (simple-websocket's Server performs it in __init__), so the
        # wsproto connection object exists now and never changes: keep it for is_open, which
        # the hub calls for every client on every broadcast.
        self._wsconn = self.ws.connection

    @property
    def is_open(self) -> bool:
        """Whether data frames may still be sent (no close frame sent or received)."""
        conn = self._wsconn
        return conn is not None and conn.state is ConnectionState.OPEN

    def handshake(self) -> None:
        # simple-websocket counts a text message in characters (len of the decoded str), so
        # non-ASCII text could exceed max_message_size bytes up to 4 times. Make it count bytes.
        self.ws.events = self._events_counting_bytes
        super().handshake()

    def _events_counting_bytes(self) -> Iterator[Event]:
        for event in type(self.ws).events(self.ws):
            if isinstance(event, TextMessage) and not event.data.isascii():
                self.incoming_message_len += len(event.data.encode()) - len(event.data)
            yield event

    def _handle_events(self) -> bool:
        with self.proto_lock:
            return bool(super()._handle_events())

    def _thread(self) -> None:
        try:
            super()._thread()
        except Exception as exc:  # simple-websocket races on close; never let it print a traceback
            log.debug("reader thread ended: %r", exc)
        finally:
            self.connected = False
            self.event.set()

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Send a close frame (once) and stop :meth:`receive`. Blocks up to the write deadline.

        Never raises. Never call it from the hub thread.
        """
        code = reason or CLOSE_NORMAL
        with self.proto_lock:
            try:
                data = self.ws.send(CloseConnection(code, message or None))
            except LocalProtocolError:
                data = b""
            if data:
                self.sent_close = code
                try:
                    self.writer.send(data)
                except OSError:
                    pass
        self.connected = False
        self.event.set()

    def try_close(self, code: int, reason: str = "") -> bool:
        """Send a close frame only if that cannot block; whether nothing is left to do.

        ``False`` when a lock is busy or a write is pending (the caller then closes from a
        thread that may block). Safe on the hub thread.
        """
        if not self.proto_lock.acquire(blocking=False):
            return False
        try:
            if not self.writer.lock.acquire(blocking=False):
                return False
            try:
                if self.writer.pending is not None:
                    return False
                try:
                    data = self.ws.send(CloseConnection(code, reason or None))
                except LocalProtocolError:
                    data = b""  # a close frame was already sent or received
                if data:
                    self.sent_close = code
                    try:
                        self.writer.try_write_locked(data)
                    except OSError:
                        self.writer.pending = None
            finally:
                self.writer.lock.release()
        finally:
            self.proto_lock.release()
        self.connected = False
        self.event.set()
        return self.writer.pending is None

    def send(self, data: bytes | str) -> None:
        """Send one message now (locked, blocking up to the write deadline); drop it if closing."""
        opcode = frames.OP_BINARY if isinstance(data, bytes) else frames.OP_TEXT
        payload = data if isinstance(data, bytes) else data.encode()
        with self.writer.lock:
            if self.is_open:
                self.writer.write_locked(frames.frame(opcode, payload))
