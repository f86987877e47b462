"""One hub client: a connection, its bounded send queue, its writer thread, its reader loop.

Threads and what they own
    * **hub thread**: the only producer. It calls :meth:`Client.offer` (fast path or queue,
      keepalive pings included) and :meth:`Client.abort`, and owns ``_enqueued`` /
      ``_enqueued_bytes``.
    * **writer thread** (``sidecar-writer-N``), started the first time the client has a
      backlog (an idle or keeping-up client never needs one): drains the queue, coalescing
      everything queued into one ``sendall``; performs a graceful close when asked. Owns
      ``_dequeued`` / ``_dequeued_bytes`` (written only while holding the socket lock).
      ``_writer_lock`` guards starting it (the hub thread and a closing thread may race).
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
        remote: str = "?",
        fast_path: bool = True,
    ) -> None:
        self.id = next(_ids)
        self.conn = conn
        self.remote = remote
        self.queue_size = queue_size
        self.max_pending_bytes = max_pending_bytes
        self.fast_path = fast_path
        # offer() admits at most queue_size frames (and max_pending_bytes); one more slot is
        # for the _STOP marker of request_close().
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size + 1)
        self._enqueued = 0  # hub thread only
        self._enqueued_bytes = 0  # hub thread only
        self._dequeued = 0  # writer thread only, under the socket lock
        self._dequeued_bytes = 0  # writer thread only, under the socket lock
        #: When the hub thread sent the ping still waiting for a pong (hub thread only).
        self.ping_sent_at: float | None = None
        #: True from ``Hub.register`` until the hub thread removes the client from its set.
        self.registered = False
        self._close_request: tuple[int, str] | None = None
        #: Why the server ended the session, if it did (set once, by the thread that decides).
        self.ended_by: str | None = None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

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
        if self._writer is None:
            self._start_writer()
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
        if self._close_request is None:
            self._close_request = (code, reason)
        self._wake_writer()
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
    def request_close(self, code: int, reason: str, *, may_block: bool = False) -> None:
        """Close with ``code`` after what is queued has been written.

        With a writer thread, it does the close. Without one nothing is queued: the close frame
        goes out at once if that cannot block (socket and protocol locks free), or inline when
        ``may_block`` (the request thread), or else from a writer thread started for it.
        """
        if self._close_request is None:
            self._close_request = (code, reason)
        if self._wake_writer():
            return
        code, reason = self._close_request
        if may_block:
            self.conn.close(code, reason)
        elif not self.conn.try_close(code, reason):
            with self._writer_lock:
                if self._writer is None:
                    self._start_writer_locked()
            self._wake_writer()

    def _wake_writer(self) -> bool:
        """Put the stop marker in the queue if a writer runs; whether one does."""
        with self._writer_lock:  # a writer being started is published under this lock
            if self._writer is None:
                return False
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # the writer is busy with a full queue; it sees the request after it
            pass
        return True

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._start_writer_locked()

    def _start_writer_locked(self) -> None:
        thread = threading.Thread(
            target=self._write_loop, name=f"sidecar-writer-{self.id}", daemon=True
        )
        thread.start()
        self._writer = thread  # published only once started: others may join it at once

    # -- writer thread -------------------------------------------------------------------
    def _write_loop(self) -> None:
        conn = self.conn
        writer = conn.writer
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        try:
            while self._close_request is None:
                items = [get()]
                while True:  # coalesce everything already queued into one write
                    try:
                        items.append(get_nowait())
                    except queue.Empty:
                        break
                data = [i for i in items if i is not _STOP]
                with writer.lock:
                    try:  # a pending tail is flushed even when closing: frames stay whole
                        writer.write_locked(b"".join(data) if conn.is_open else b"")
                    finally:
                        self._dequeued += len(data)
                        self._dequeued_bytes += sum(map(len, data))
        except OSError as exc:
            if self._close_request is None:  # an abort already explained itself
                log.warning("client %s: write failed (%s), dropped", self.id, _describe(exc))
                self.ended_by = "write-deadline" if _timed_out(exc) else "write-failed"
            writer.shutdown()
        else:
            code, reason = self._close_request or (1000, "")
            conn.close(code, reason)

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
        """End the session: close (after the writer's backlog), wait for the peer, shut down.

        Called by the request thread after the hub has been told to unregister the client.
        Bounded: at most ``close_timeout`` for the peer's close reply plus a short join.
        """
        deadline = time.monotonic() + close_timeout
        self.request_close(1000, "", may_block=True)
        writer_thread = self._writer
        if writer_thread is not None:
            writer_thread.join(close_timeout)
        self.conn.thread.join(max(0.0, deadline - time.monotonic()))
        writer_alive = writer_thread is not None and writer_thread.is_alive()
        if writer_alive or self.conn.thread.is_alive():
            self.conn.writer.shutdown()  # wakes whichever thread is still blocked
        else:  # both done: half-close and wait for the peer's EOF (no RST)
            self.conn.writer.linger(max(0.0, deadline - time.monotonic()))
        if writer_thread is not None:
            writer_thread.join(1.0)


def _timed_out(exc: OSError) -> bool:
    return isinstance(exc, (BlockingIOError, TimeoutError))


def _describe(exc: OSError) -> str:
    if _timed_out(exc):
        return "write deadline exceeded"
    return exc.strerror or type(exc).__name__
