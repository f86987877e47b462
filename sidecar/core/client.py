"""One hub client: its transport, bounded send queue, writer thread and read loop.

Threads and what they own
    * **hub thread**: the only producer. It calls :meth:`Client.offer` (fast path or queue,
      keepalive pings included) and :meth:`Client.abort`; it owns ``_enqueued`` /
      ``_enqueued_bytes``, ``ping_sent_at``, ``gone`` and ``channels``.
    * **writer thread** (``sidecar-writer-N``), started (with its queue) the first time the
      client has a backlog (an idle or keeping-up client never needs either): drains the
      queue, writing everything queued in one go; closes gracefully when asked. Owns
      ``_dequeued`` / ``_dequeued_bytes``. ``_writer_lock`` guards starting it (the hub
      thread and a closing thread may race).
    * **request thread** (the WSGI server's): runs :meth:`Client.read_loop`, then
      :meth:`Client.finish`.
    * the transport's own reader thread: see :mod:`sidecar.core.connection`.

The fast path (hub thread, :meth:`Client.offer`): when nothing is queued or being written
(``_enqueued == _dequeued``), the hub writes the shared frame itself without blocking
(:meth:`Transport.try_send`). A tail that does not fit stays in the transport and a marker
wakes the writer to flush it; a busy transport means the frame is queued. Only the hub
enqueues, so frames reach a client in the order of :meth:`offer` calls. A full queue
(``queue_size`` items or ``max_pending_bytes``) makes ``offer`` return ``False``: the hub then
drops the client (close 4008).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..config import Config
from ..platform import SHUTDOWN_WAKES_READERS
from ..protocol import CloseCode
from .connection import DEAD, PARTIAL, SENT, Data, Ended, MessageTooBig, SendResult, iter_data
from .identity import SUPERUSER, Identity

log = logging.getLogger("sidecar.client")

_ids = itertools.count(1)

# Queue markers (identity-compared; never written).
_FLUSH = b""  # a partial fast-path write left a tail in the transport
_STOP = object()


class Transport(Protocol):
    """What a client needs of its connection (:class:`~sidecar.core.connection.Connection`)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def last_received(self) -> float: ...

    def try_send(self, data: Data) -> SendResult: ...

    def send_all(self, buffers: Iterable[bytes]) -> None: ...

    def close(self, code: int, reason: str = "", *, block: bool = True) -> bool: ...

    def abort(self, code: int, reason: str) -> None: ...

    def shutdown(self) -> None: ...

    def linger(self, timeout: float) -> None: ...

    def receive(self, timeout: float | None) -> bytes | str | None: ...

    def join_reader(self, timeout: float) -> bool: ...

    def ended_by(self) -> str: ...


class Close(Exception):
    """Raised by a message handler to close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


MessageHandler = Callable[["Client", str | bytes], None]


class Client:
    """A registered (or registering) WebSocket client of the hub."""

    def __init__(
        self,
        conn: Transport,
        config: Config | None = None,
        *,
        remote: str = "?",
        identity: Identity = SUPERUSER,
    ) -> None:
        config = config or Config()
        self.id = next(_ids)
        self.conn = conn
        self.remote = remote
        #: Who the client is (set once, before it is registered).
        self.identity = identity
        self.queue_size = config.queue_size
        self.max_pending_bytes = config.max_pending_bytes
        self.fast_path = config.fast_path
        # offer() admits at most queue_size items (and max_pending_bytes); one more slot is
        # for the _STOP marker of request_close(). Made with the writer thread: a client that
        # keeps up never has either (a queue is 4 locks and 4 deques).
        self._queue: queue.Queue[Data | object] | None = None
        self._enqueued = 0
        self._enqueued_bytes = 0
        self._dequeued = 0
        self._dequeued_bytes = 0
        #: When the hub thread sent the ping still waiting for an answer (hub thread only).
        self.ping_sent_at: float | None = None
        #: Set by the hub thread once the client is out of its set (or was never let in).
        self.gone = False
        #: The channels it is subscribed to (``""``: the default one); hub thread only.
        self.channels: set[str] = set()
        self._close_request: tuple[int, str] | None = None
        #: Why the server ended the session, if it did (set once, by the thread that decides).
        self.ended_by: str | None = None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.remote}>"

    # -- hub thread ----------------------------------------------------------------------
    def offer(self, data: Data) -> bool:
        """Deliver ``data`` (whole frames) in order; never blocks. Hub thread only.

        Returns ``False`` when the client's queue is full (the caller drops the client).
        """
        if self._close_request is not None:
            return True  # closing: nothing more goes out after what is queued
        if self.fast_path and self._enqueued == self._dequeued:
            result = self.conn.try_send(data)
            if result is SENT or result is DEAD:
                return True  # a dead transport: the reader thread sees it and the session ends
            if result is PARTIAL:
                data = _FLUSH  # the tail waits in the transport; wake the writer to flush it
        size = len(data) if isinstance(data, bytes) else sum(map(len, data))
        backlog = self._enqueued - self._dequeued
        if backlog >= self.queue_size or (
            backlog > 0
            and self._enqueued_bytes - self._dequeued_bytes + size > self.max_pending_bytes
        ):
            return False
        try:
            (self._queue or self._start_writer()).put_nowait(data)
        except queue.Full:  # only with a _STOP marker queued: the client is closing anyway
            return False
        self._enqueued += 1
        self._enqueued_bytes += size
        return True

    def backlog(self) -> int:
        """Items queued and not yet written (exact on the hub thread, approximate elsewhere)."""
        return self._enqueued - self._dequeued

    def abort(self, code: int, reason: str) -> None:
        """Drop the client now without blocking: a close frame if it fits, then shut down.

        The close request is recorded before the shutdown: the shutdown wakes a writer blocked
        in a write with an error, and a writer that finds no close request would log a second
        "write failed" for the same drop.
        """
        if self.ended_by is None:
            self.ended_by = reason.replace(" ", "-")
        if self._close_request is None:
            self._close_request = (code, reason)
        self._wake_writer()
        self.conn.abort(code, reason)

    # -- any thread ----------------------------------------------------------------------
    def request_close(self, code: int, reason: str, *, may_block: bool = False) -> None:
        """Close with ``code`` after what is queued has been written.

        With a writer thread, it does the close. Without one nothing is queued: the close frame
        goes out at once if that cannot block, or inline when ``may_block`` (the request
        thread), or else from a writer thread started for it.
        """
        if self._close_request is None:
            self._close_request = (code, reason)
        if self._wake_writer():
            return
        code, reason = self._close_request
        if may_block:
            self.conn.close(code, reason, block=True)
        elif not self.conn.close(code, reason, block=False):
            self._start_writer()
            self._wake_writer()

    def _wake_writer(self) -> bool:
        """Put the stop marker in the queue if a writer runs; whether one does."""
        with self._writer_lock:  # a writer being started is published under this lock
            if self._queue is None:  # made with the writer, under this lock
                return False
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # the writer is busy with a full queue; it sees the request after it
            pass
        return True

    def _start_writer(self) -> queue.Queue[Data | object]:
        """Start the writer thread (and make its queue) unless it runs; the queue."""
        with self._writer_lock:
            if self._queue is None:
                self._queue = queue.Queue(maxsize=self.queue_size + 1)
                thread = threading.Thread(
                    target=self._write_loop,
                    args=(self._queue,),
                    name=f"sidecar-writer-{self.id}",
                    daemon=True,
                )
                thread.start()
                self._writer = thread  # published once started: others may join it at once
            return self._queue

    # -- writer thread -------------------------------------------------------------------
    def _write_loop(self, items_queue: queue.Queue[Data | object]) -> None:
        get, get_nowait = items_queue.get, items_queue.get_nowait
        try:
            closing = False
            while not closing:
                # Once a close is requested, what was queued before it still goes out (in
                # one last write), then the close frame.
                closing = self._close_request is not None
                items = [] if closing else [get()]
                while True:  # everything already queued goes out in one write
                    try:
                        items.append(get_nowait())
                    except queue.Empty:
                        break
                data: list[Data] = [i for i in items if i is not _STOP]  # type: ignore[misc]
                try:  # a pending tail is flushed even when closing: frames stay whole
                    self.conn.send_all(iter_data(data))
                finally:
                    self._dequeued += len(data)
                    self._dequeued_bytes += sum(map(_size, data))
        except OSError as exc:
            if self._close_request is None:  # an abort already explained itself
                timed_out = isinstance(exc, BlockingIOError | TimeoutError)
                why = "write deadline exceeded" if timed_out else exc.strerror or type(exc).__name__
                log.warning("client %s: write failed (%s), dropped", self.id, why)
                self.ended_by = "write-deadline" if timed_out else "write-failed"
            self.conn.shutdown()
        else:
            code, reason = self._close_request or (CloseCode.NORMAL, "")
            self.conn.close(code, reason, block=True)

    # -- request thread ------------------------------------------------------------------
    def read_loop(self, on_message: MessageHandler, poll: float | None = None) -> None:
        """Hand each client message to ``on_message`` until the connection ends (request thread).

        It waits for a message or the end with no timeout (``poll``: wake up that often): an
        idle connection's thread never wakes. A 5 s poll woke 2,000 threads a second at
        10,000 connections, each wanting the GIL the hub thread's fan-out needs.

        ``on_message`` may raise :class:`Close` to close the connection with a code; any other
        exception closes it with 1011 and is logged.
        """
        conn = self.conn
        while True:
            try:
                message = conn.receive(timeout=poll)
            except Ended:
                return
            except MessageTooBig as exc:
                log.info(
                    "client %s: closing with 1009 (%s)",
                    self.id,
                    exc,
                    extra={"client": self.id, "code": CloseCode.TOO_BIG},
                )
                conn.close(CloseCode.TOO_BIG, "message too big")
                return
            if message is None:
                continue
            try:
                on_message(self, message)
            except Close as close:
                log.info(
                    "client %s: closing with %d (%s)",
                    self.id,
                    close.code,
                    close.reason,
                    extra={"client": self.id, "code": close.code, "reason": close.reason},
                )
                conn.close(close.code, close.reason)
                return
            except Exception:  # the application's handler: any failure is its bug, not ours
                log.exception("message handler failed for client %s: closing with 1011", self.id)
                conn.close(CloseCode.INTERNAL_ERROR, "internal error")
                return

    def finish(self, close_timeout: float) -> None:
        """End the session: close (after the writer's backlog), wait for the peer, shut down.

        Called by the request thread after the hub has been told to unregister the client.
        Bounded: ``close_timeout`` for the peer's close reply plus a short join. Returns once
        the transport's reader thread has ended, except on Windows after a shutdown: there the
        reader of a silent peer ends when the server closes the socket, after this request
        (:data:`~sidecar.platform.SHUTDOWN_WAKES_READERS`).
        """
        deadline = time.monotonic() + close_timeout
        self.request_close(CloseCode.NORMAL, "", may_block=True)
        writer = self._writer
        if writer is not None:
            writer.join(close_timeout)
        reader_done = self.conn.join_reader(deadline - time.monotonic())
        if not reader_done or (writer is not None and writer.is_alive()):
            self.conn.shutdown()  # wakes whichever thread is still blocked
        else:  # both done: half-close and wait for the peer's EOF (no RST)
            self.conn.linger(max(0.0, deadline - time.monotonic()))
        if writer is not None:
            writer.join(1.0)
        if not reader_done and not SHUTDOWN_WAKES_READERS:
            return  # Windows: the server's close of the socket, after this request, ends it
        if not self.conn.join_reader(1.0):
            log.warning("client %s: reader thread still running after shutdown", self.id)


def _size(item: Data) -> int:
    return len(item) if isinstance(item, bytes) else sum(map(len, item))
