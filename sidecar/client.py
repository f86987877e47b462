"""One hub client: a connection, its bounded send queue, its writer thread, its reader loop.

Threads and what they own
    * **hub thread**: the only producer. It calls :meth:`Client.offer` (fast path or queue) and
      :meth:`Client.abort`, and owns ``_enqueued`` / ``_enqueued_bytes``.
    * **writer thread** (``sidecar-writer-N``): drains the queue, coalescing everything queued
      into one ``sendall``; sends keepalive pings; performs a graceful close when asked. Owns
      ``_dequeued`` / ``_dequeued_bytes`` (written only while holding the socket lock).
    * **request thread** (the WSGI server's): runs :meth:`Client.read_loop` (``receive`` with a
      timeout, in a loop), then :meth:`Client.finish`.
    * simple-websocket's **reader thread**: see :mod:`sidecar.connection`.

The fast path (hub thread, :meth:`Client.offer`): when nothing is queued or being written
(``_enqueued == _dequeued``) and the socket lock is free, the hub writes the shared frame
itself with a non-blocking ``send``; a tail that does not fit is kept in
``SocketWriter.pending`` (written first by whoever writes next, under the lock) and a marker
wakes the writer. Otherwise the frame is queued. Only the hub enqueues frames, so the order of
frames per client is the order of :meth:`offer` calls. A full queue (``queue_size`` items or
``max_pending_bytes``) makes ``offer`` return ``False``: the hub then drops the client.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import frames
from .connection import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    Connection,
)

log = logging.getLogger("sidecar.client")

_ids = itertools.count(1)

# Queue markers (identity-compared; never written).
_WAKE = b""  # a partial fast-path write left a tail in SocketWriter.pending
_STOP = object()


class Close(Exception):
    """Raised by a message handler to close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def envelope_handler(
    dispatch: Callable[[Client, dict[str, Any]], None],
) -> Callable[[Client, str | bytes], None]:
    """The ``/ws`` message policy: JSON envelopes go to ``dispatch``; binary closes with 1003.

    Malformed JSON, and JSON that is not an object with a string ``type``, is logged and
    ignored (as in the Go original).
    """

    def on_message(client: Client, message: str | bytes) -> None:
        if isinstance(message, (bytes, bytearray)):
            raise Close(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported")
        try:
            event = json.loads(message)
        except ValueError as exc:
            log.warning("client %s sent malformed JSON (ignored): %s", client.id, exc)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            log.warning("client %s sent JSON that is not an event envelope (ignored)", client.id)
            return
        dispatch(client, event)

    return on_message


class Client:
    """A registered (or registering) WebSocket client of the hub."""

    def __init__(
        self,
        conn: Connection,
        *,
        queue_size: int = 256,
        max_pending_bytes: int = 16 << 20,
        ping_interval: float = 25.0,
        remote: str = "?",
        fast_path: bool = True,
    ) -> None:
        self.id = next(_ids)
        self.conn = conn
        self.remote = remote
        self.queue_size = queue_size
        self.max_pending_bytes = max_pending_bytes
        self.ping_interval = ping_interval
        self.fast_path = fast_path
        # offer() admits at most queue_size frames (and max_pending_bytes); one more slot is
        # for the _STOP marker of request_close().
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size + 1)
        self._enqueued = 0  # hub thread only
        self._enqueued_bytes = 0  # hub thread only
        self._dequeued = 0  # writer thread only, under the socket lock
        self._dequeued_bytes = 0  # writer thread only, under the socket lock
        #: True from ``Hub.register`` until the hub thread removes the client from its set.
        self.registered = False
        self._close_request: tuple[int, str] | None = None
        #: Why the server ended the session, if it did (set once, by the thread that decides).
        self.ended_by: str | None = None
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sidecar-writer-{self.id}", daemon=True
        )

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.remote}>"

    # -- hub thread ----------------------------------------------------------------------
    def offer(self, data: bytes) -> bool:
        """Deliver ``data`` (one or more whole frames) in order; never blocks. Hub thread only.

        Returns ``False`` when the client's queue is full (the caller drops the client).
        """
        if self._close_request is not None:
            return True  # closing: the writer sends nothing more after what is queued
        writer = self.conn.writer
        if (
            self.fast_path
            and self._enqueued == self._dequeued
            and writer.lock.acquire(blocking=False)
        ):
            try:
                if self._enqueued == self._dequeued and writer.pending is None:
                    if not self.conn.is_open:
                        return True  # closing: the session is ending, nothing more goes out
                    try:
                        writer.try_write_locked(data)
                    except OSError:
                        return True  # dead socket: the reader thread sees it and ends
                    if writer.pending is None:
                        return True
                    data = _WAKE  # the tail waits in writer.pending; wake the writer
            finally:
                writer.lock.release()
        backlog = self._enqueued - self._dequeued
        if backlog >= self.queue_size or (
            self._enqueued_bytes - self._dequeued_bytes + len(data) > self.max_pending_bytes
            and backlog > 0
        ):
            return False
        try:
            self._queue.put_nowait(data)  # room is left by the backlog check above
        except queue.Full:  # only with _STOP markers queued: the client is closing anyway
            return False
        self._enqueued += 1
        self._enqueued_bytes += len(data)
        return True

    def backlog(self) -> int:
        """Frames queued and not yet written (approximate from other threads)."""
        return self._enqueued - self._dequeued

    def abort(self, code: int, reason: str) -> None:
        """Drop the client now without blocking: try a close frame, then shut the socket down.

        The close frame is attempted only when nothing else is being written (socket lock
        free, nothing pending); it may go out truncated if the send buffer is nearly full (the
        peer then sees a broken frame and EOF). The socket is shut down while the lock is still
        held, so no frame can follow the close frame, and every thread of this connection
        ends promptly.
        """
        if self.ended_by is None:
            self.ended_by = reason.replace(" ", "-")
        # Record the close request before any shutdown: a shutdown wakes a writer blocked in
        # sendall (or waiting for the lock) with EPIPE, and a writer that finds no close
        # request logs a second "write failed ..., dropped" for the same drop.
        self.request_close(code, reason)
        writer = self.conn.writer
        if writer.lock.acquire(blocking=False):
            try:
                if writer.pending is None and self.conn.is_open:
                    try:
                        writer.try_write_locked(frames.close_frame(code, reason))
                    except OSError:
                        pass
                    writer.pending = None
                writer.shutdown()  # before releasing: a waiting writer must not follow the close
            finally:
                writer.lock.release()
        writer.shutdown()

    # -- any thread ----------------------------------------------------------------------
    def request_close(self, code: int, reason: str) -> None:
        """Ask the writer thread to flush what is queued, then close with ``code``. Non-blocking."""
        if self._close_request is None:
            self._close_request = (code, reason)
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # the writer is busy with a full queue; it sees the request after it
            pass

    # -- writer thread -------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread."""
        self._writer.start()

    def _write_loop(self) -> None:
        conn = self.conn
        writer = conn.writer
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        interval = self.ping_interval if self.ping_interval > 0 else None
        next_ping = time.monotonic() + interval if interval else None
        abort = False  # close without waiting for the peer (it stopped answering)
        try:
            while self._close_request is None:
                timeout = None if next_ping is None else max(0.0, next_ping - time.monotonic())
                try:
                    items = [get(timeout=timeout)]
                except queue.Empty:
                    items = []
                while True:  # coalesce everything already queued into one write
                    try:
                        items.append(get_nowait())
                    except queue.Empty:
                        break
                data = [i for i in items if i is not _STOP]
                with writer.lock:
                    try:
                        if conn.is_open:
                            writer.write_locked(b"".join(data))
                    finally:
                        self._dequeued += len(data)
                        self._dequeued_bytes += sum(map(len, data))
                if next_ping is not None and time.monotonic() >= next_ping:
                    if not conn.pong_received:
                        log.warning("client %s: no pong within %g s, dropped", self.id, interval)
                        self.ended_by = "keepalive-timeout"
                        self._close_request = (CLOSE_INTERNAL_ERROR, "keepalive timeout")
                        abort = True
                        break
                    conn.pong_received = False
                    with writer.lock:
                        if conn.is_open:
                            writer.write_locked(frames.frame(frames.OP_PING, b""))
                    next_ping = time.monotonic() + interval  # type: ignore[operator]
        except OSError as exc:
            if self._close_request is None:  # an abort already explained itself
                log.warning("client %s: write failed (%s), dropped", self.id, _describe(exc))
                self.ended_by = "write-deadline" if _timed_out(exc) else "write-failed"
            writer.shutdown()
        else:
            code, reason = self._close_request or (1000, "")
            conn.close(code, reason)
            if abort:
                writer.shutdown()

    # -- request thread ------------------------------------------------------------------
    def read_loop(
        self, on_message: Callable[[Client, str | bytes], None], poll: float = 5.0
    ) -> None:
        """Hand each client message to ``on_message`` until the connection ends (request thread).

        ``on_message`` may raise :class:`Close` to close the connection with a code; any other
        exception closes it with 1011 and is logged.
        """
        conn = self.conn
        while True:
            try:
                message = conn.receive(timeout=poll)
            except Exception:  # ConnectionClosed: the reader thread has ended
                return
            if message is None:
                if not conn.connected:
                    return
                continue
            try:
                on_message(self, message)
            except Close as close:
                log.info("client %s: closing with %d (%s)", self.id, close.code, close.reason)
                conn.close(close.code, close.reason)
                return
            except Exception:
                log.exception("message handler failed for client %s: closing with 1011", self.id)
                conn.close(CLOSE_INTERNAL_ERROR, "internal error")
                return

    def finish(self, close_timeout: float) -> None:
        """End the session: stop the writer, wait for the close handshake, shut the socket down.

        Called by the request thread after the hub has been told to unregister the client.
        Bounded: at most ``close_timeout`` for the peer's close reply plus a short join.
        """
        self.request_close(1000, "")
        deadline = time.monotonic() + close_timeout
        if self._writer.is_alive():
            self._writer.join(close_timeout)
        self.conn.thread.join(max(0.0, deadline - time.monotonic()))
        if self._writer.is_alive() or self.conn.thread.is_alive():
            self.conn.writer.shutdown()  # wakes whichever thread is still blocked
        else:  # both done: half-close and wait for the peer's EOF (no RST)
            self.conn.writer.linger(max(0.0, deadline - time.monotonic()))
        self._writer.join(1.0)


def _timed_out(exc: OSError) -> bool:
    return isinstance(exc, (BlockingIOError, TimeoutError))


def _describe(exc: OSError) -> str:
    if _timed_out(exc):
        return "write deadline exceeded"
    return exc.strerror or type(exc).__name__
