"""One WebSocket on the wire: a stock simple-websocket ``Server`` behind one guarded socket.

Composition, not subclassing. For an upgrade request the web layer creates a
:class:`Connection` *before* simple-websocket's ``Server`` exists and

* puts :attr:`Connection.socket` (a :class:`GuardedSocket`) where simple-websocket looks for
  the request's socket (``environ["werkzeug.socket"]`` or ``["gunicorn.socket"]``), so every
  byte the library writes (the ``101``, pongs, close replies) takes the same lock as ours;
* passes :meth:`Connection.reader_thread` and :meth:`Connection.wakeup_event` as the
  library's public ``thread_class`` and ``event_class`` options, so its reader thread is a
  daemon whose end we observe, whose exceptions stay out of stderr, and whose end wakes
  ``receive()``;
* after the handshake, :meth:`Connection.attach` gives it the ``Server``; its public
  ``receive(timeout)`` is the only method of the library we call.

The one rule, kept in one place (:class:`GuardedSocket`): **nothing is written after a close
frame**, whoever sent it. Our close frames are built by :mod:`sidecar.frames` and written
through the guarded socket (never through wsproto, whose state belongs to the reader
thread); the library's close frames are recognised in the bytes it writes.

Threads
    * simple-websocket's **reader thread** parses frames, answers pings and close frames
      (through :class:`GuardedSocket`), enforces its coarse inbound limit and queues messages;
    * **any other thread** writes through :class:`GuardedSocket`: the hub's non-blocking fast
      path, the client's writer thread, the request thread when it closes.

Lock
    ``GuardedSocket.lock`` serialises every write to the socket and guards ``_pending`` (the
    unsent tail of a non-blocking write, written first by whoever writes next), ``closed``
    and ``sent_close``. The hub thread only ever try-acquires it.
"""

from __future__ import annotations

import enum
import logging
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Protocol

from simple_websocket import ConnectionClosed

from .. import frames
from ..platform import nonblocking_send_flag, set_send_timeout
from ..protocol import CloseCode

log = logging.getLogger("sidecar.connection")

#: Buffers handed to one ``sendmsg`` call (Linux's IOV_MAX is 1024).
_IOV = 512
#: The flag of one non-blocking send; ``None`` where the OS has none (Windows): then nothing
#: is written without blocking and every frame goes through a writer thread.
_DONTWAIT = nonblocking_send_flag()
if sys.platform != "win32":
    #: Scatter-gather writes: up to ``_IOV`` buffers in one system call.
    _sendmsg = socket.socket.sendmsg
else:

    def _sendmsg(
        sock: socket.socket, buffers: Iterable[memoryview], _anc: object = (), flags: int = 0
    ) -> int:
        """Windows has no ``sendmsg``: write the first buffer (callers loop on the rest)."""
        return sock.send(next(iter(buffers)), flags)


#: What a client hands over: one buffer, or several sent in order (e.g. a replay).
Data = bytes | tuple[bytes, ...]


class SendResult(enum.Enum):
    """The outcome of a non-blocking :meth:`GuardedSocket.try_send`."""

    #: Every byte is in the kernel's buffer.
    SENT = "sent"
    #: Some bytes went out; the rest waits in the socket for a blocking :meth:`flush`.
    PARTIAL = "partial"
    #: Nothing was written: another thread is writing, or an earlier tail is waiting.
    BUSY = "busy"
    #: Nothing was written and nothing ever will be: a close frame is out or the socket died.
    DEAD = "dead"


# The members as module constants for the hub thread's fan-out, which checks one per client
# per batch: on Python 3.11 ``SendResult.SENT`` (a class attribute through the enum's
# metaclass) costs about 15 times a global's lookup.
SENT, PARTIAL, BUSY, DEAD = SendResult.SENT, SendResult.PARTIAL, SendResult.BUSY, SendResult.DEAD


class Ended(Exception):
    """The peer's side of the connection is over (the reader thread has ended)."""


class MessageTooBig(Exception):
    """A text message larger than the inbound limit in UTF-8 bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit


class GuardedSocket:
    """The only path to the socket for writes; the socket object simple-websocket is given.

    simple-websocket calls :meth:`send`, :meth:`recv`, :meth:`fileno` and :meth:`close` on it.
    Blocking writes have a deadline (``SO_SNDTIMEO``, which leaves reads alone): a write that
    makes no progress for ``write_deadline`` seconds raises ``OSError``.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        write_deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.raw = sock
        #: Longest a blocking write may make no progress (``SO_SNDTIMEO``).
        self.write_deadline = write_deadline
        self.lock = threading.Lock()
        #: The unsent tail, oldest first (a list: an idle connection's is empty and small).
        self._pending: list[memoryview] = []
        #: A close frame has been written in full or in part (or the socket died): new data
        #: is dropped, what is pending is still flushed so that frames stay whole.
        self.closed = False
        #: The code of the close frame we or the library sent, if any.
        self.sent_close: int | None = None
        #: Whether the library sent the close frame (a reply, a protocol error, 1009).
        self.closed_by_library = False
        self._upgraded = False
        self._clock = clock
        #: When bytes last arrived from the peer (the reader thread writes it).
        self.last_received = clock()
        set_send_timeout(sock, write_deadline)

    # -- the socket API simple-websocket uses --------------------------------------------
    def send(self, data: bytes | bytearray) -> int:
        """Write for the library: the ``101`` first, then pongs and close replies.

        Anything after a close frame is dropped; errors are swallowed (the reader thread's
        next ``recv`` sees the dead socket). Always reports every byte as sent.
        """
        with self.lock:
            if self.closed:
                return len(data)
            out = memoryview(data)
            if self._upgraded:
                out, code = _through_close(out)
                if code is not None:
                    self.closed, self.sent_close, self.closed_by_library = True, code, True
            self._upgraded = True
            self._pending.append(out)
            try:
                self._drain_locked()
            except OSError:
                self._pending.clear()
                self.closed = True
        return len(data)

    def recv(self, size: int) -> bytes:
        """Read for the library's reader thread (the only reader), noting when bytes arrive.

        It waits for the first byte with a peek of one byte, and only then reads ``size``: a
        read allocates its whole buffer before it blocks, and an idle connection's reader
        is blocked all the time (16 KiB each, 16 MB for 1,000 connections).
        """
        if not self.raw.recv(1, socket.MSG_PEEK):
            return b""  # EOF
        data = self.raw.recv(size)
        if data:
            self.last_received = self._clock()
        return data

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self.raw.fileno()

    def close(self) -> None:
        """Ignored: the request thread shuts the socket down once the session is over."""

    # -- our writes ------------------------------------------------------------------------
    def try_send(self, data: Data) -> SendResult:
        """Write without blocking and without waiting for the lock (the hub thread's path)."""
        # acquire(False), not acquire(blocking=False): a keyword costs twice the call here
        if _DONTWAIT is None or not self.lock.acquire(False):
            return BUSY
        try:
            if self.closed:
                return DEAD
            if self._pending:
                return BUSY
            try:
                if isinstance(data, bytes):
                    sent = self.raw.send(data, _DONTWAIT)
                    if sent == len(data):
                        return SENT
                    self._pending.append(memoryview(data)[sent:])
                    return PARTIAL
                self._pending.extend(memoryview(b) for b in data)
                self._consume(_sendmsg(self.raw, islice(self._pending, _IOV), (), _DONTWAIT))
            except (BlockingIOError, InterruptedError):
                if isinstance(data, bytes):
                    self._pending.append(memoryview(data))
            except OSError:
                self._pending.clear()
                self.closed = True
                return DEAD
            return PARTIAL if self._pending else SENT
        finally:
            self.lock.release()

    def send_all(self, buffers: Iterable[bytes]) -> None:
        """Write what is pending, then ``buffers``; blocks up to the write deadline per step.

        After a close frame only the pending tail is written. Raises ``OSError`` when the
        socket fails or the deadline passes.
        """
        with self.lock:
            if not self.closed:
                self._pending.extend(memoryview(b) for b in buffers if b)
            self._drain_locked()

    def send_close(self, code: int, reason: str = "", *, block: bool) -> bool:
        """Write our close frame once (after what is pending); then nothing more is written.

        With ``block`` it waits for the lock and the socket (up to the write deadline).
        Without, it gives up (``False``) when the lock is busy or a tail is pending, and a tail
        of the close frame itself may stay pending (``False``: a blocking :meth:`send_all`
        must flush it). ``True`` when nothing is left to write. Never raises.
        """
        if not self.lock.acquire(blocking=block):
            return False
        try:
            if not self.closed:
                if self._pending and not block:
                    return False
                self.closed, self.sent_close = True, code
                self._pending.append(memoryview(frames.close_frame(code, reason)))
            try:
                if block:
                    self._drain_locked()
                elif self._pending and _DONTWAIT is not None:  # the close frame, or its tail
                    self._consume(self.raw.send(self._pending[0], _DONTWAIT))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._pending.clear()
            return not self._pending
        finally:
            self.lock.release()

    def abort(self, code: int, reason: str) -> None:
        """Close without blocking: a close frame if it fits at once, then shut the socket down.

        The socket is shut down while the lock is held when we can take it, so that no waiting
        writer can follow the close frame; otherwise the shutdown wakes the blocked writer with
        an error. Never raises.
        """
        if self.lock.acquire(blocking=False):
            try:
                if not self.closed and not self._pending and _DONTWAIT is not None:
                    self.closed, self.sent_close = True, code
                    try:
                        self.raw.send(frames.close_frame(code, reason), _DONTWAIT)
                    except OSError:
                        pass
                self.closed = True
                self._pending.clear()
                self.shutdown()
            finally:
                self.lock.release()
        else:
            self.closed = True
            self.shutdown()

    def shutdown(self) -> None:
        """Shut both directions down, waking any thread blocked on the socket (on POSIX; on
        Windows a blocked ``recv`` or ``select`` goes on until the socket is closed: see
        :data:`~sidecar.platform.SHUTDOWN_WAKES_READERS`). Never raises."""
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def linger(self, timeout: float, max_bytes: int = 1 << 20) -> None:
        """End gracefully: FIN after our close frame, then read until the peer's EOF.

        Only once nobody else uses the socket (reader and writer threads ended). Shutting the
        reading side down while the peer still sends (its close reply, the rest of an oversized
        message) makes the kernel answer with a RST (RFC 6455 7.1.1 wants the server to close
        TCP after the closing handshake). Bounded by ``timeout`` and ``max_bytes`` of discarded
        input; ends with :meth:`shutdown` and clears any pending socket error, so that the WSGI
        server's own end-of-request read sees a plain EOF. Never raises.
        """
        deadline = time.monotonic() + timeout
        drained = 0
        try:
            with self.lock:
                self.closed = True
                self._pending.clear()
                self.raw.shutdown(socket.SHUT_WR)
            with selectors.DefaultSelector() as selector:  # no select(): fds above 1024
                selector.register(self.raw, selectors.EVENT_READ)
                while drained < max_bytes:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not selector.select(remaining):
                        break
                    chunk = self.raw.recv(65536, _DONTWAIT or 0)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (OSError, ValueError):  # reset by the peer, already closed, would block
            pass
        self.shutdown()
        try:
            self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # read and clear
        except OSError:
            pass

    # -- internals (lock held) ---------------------------------------------------------------
    def _drain_locked(self) -> None:
        pending = self._pending
        while pending:
            if len(pending) == 1:
                self._consume(self.raw.send(pending[0]))
            else:
                self._consume(_sendmsg(self.raw, islice(pending, _IOV)))

    def _consume(self, sent: int) -> None:
        """Drop the ``sent`` bytes from the front of what is pending."""
        pending = self._pending
        done = 0
        for head in pending:
            if sent < len(head):
                break
            sent -= len(head)
            done += 1
        del pending[:done]
        if sent:
            pending[0] = pending[0][sent:]


def _through_close(data: memoryview) -> tuple[memoryview, int | None]:
    """``data`` up to and including its first close frame, and that frame's code."""
    for opcode, start, end in frames.split_frames(data):
        if opcode == frames.OP_CLOSE:
            return data[:end], frames.close_code(data[start:end])
    return data, None


class _Wakeup(threading.Event):
    """The event simple-websocket's ``receive`` waits on (its public ``event_class``).

    Once the session is ending (our close frame is out, or the reader thread has ended) it
    answers every wait with "timed out" at once, so that ``receive`` returns and the read
    loop sees the end, instead of waiting on for a message that will not be read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ending = False

    def end(self) -> None:
        """From now on, waits return at once."""
        self.ending = True
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self.ending:
            return False
        return super().wait(timeout) and not self.ending


class MessageSource(Protocol):
    """What a connection needs of simple-websocket's ``Server``: its public ``receive``."""

    def receive(self, timeout: float | None = None) -> bytes | str | None:
        """The next message, ``None`` after ``timeout``; raises ``ConnectionClosed``."""
        ...


class Connection:
    """A WebSocket session's transport: the guarded socket, the library's reader, its limit.

    Create it once the handshake has been validated, before simple-websocket's ``Server`` (see
    the module docstring). ``max_message_size`` is the inbound limit in UTF-8 bytes; the
    library's own limit, which counts characters, is set from the same option as a coarse
    guard, and this class checks the exact size of each text message ``receive`` returns.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        write_deadline: float,
        max_message_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = GuardedSocket(sock, write_deadline=write_deadline, clock=clock)
        #: :meth:`GuardedSocket.try_send` itself, not a method that calls it: the hub thread
        #: calls it once per client per batch, and a Python call is a third of its overhead.
        self.try_send: Callable[[Data], SendResult] = self.socket.try_send
        self.max_message_size = max_message_size
        self._source: MessageSource | None = None
        self._reader: threading.Thread | None = None
        #: Set by the reader thread as it ends (its end is awaited with a join: no Event).
        self._reader_ended = False
        self._wakeup = _Wakeup()
        #: The code of the peer's close frame (1005 if it sent none), once it is known.
        self.peer_close: int | None = None

    # -- hooks handed to simple-websocket ----------------------------------------------------
    def reader_thread(self, target: Callable[[], object]) -> threading.Thread:
        """The library's ``thread_class``: a daemon that marks its end and wakes ``receive``."""
        thread = threading.Thread(
            target=self._read, args=(target,), name="sidecar-reader", daemon=True
        )
        self._reader = thread
        return thread

    def _read(self, target: Callable[[], object]) -> None:
        """The reader thread: the library's loop, then the end marked and ``receive`` woken."""
        try:
            target()
        except Exception as exc:  # the library's loop races on close; never print it
            log.debug("reader thread ended: %r", exc)
        finally:
            self._reader_ended = True
            self._wakeup.end()

    def wakeup_event(self) -> threading.Event:
        """The library's ``event_class``: the event its ``receive`` waits on."""
        return self._wakeup

    def attach(self, source: MessageSource) -> None:
        """Take the library's ``Server`` once its handshake is done."""
        self._source = source

    # -- the transport a Client uses ---------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether data frames may still be sent (no close frame sent)."""
        return not self.socket.closed

    @property
    def last_received(self) -> float:
        """When bytes last arrived from the peer (the clock given at construction)."""
        return self.socket.last_received

    def send_all(self, buffers: Iterable[bytes]) -> None:
        """See :meth:`GuardedSocket.send_all`."""
        self.socket.send_all(buffers)

    def close(self, code: int, reason: str = "", *, block: bool = True) -> bool:
        """The one close path (:meth:`GuardedSocket.send_close`); also ends ``receive``.

        Closing does not end the reader thread: it goes on until the peer's close reply (or
        EOF) arrives, so that the closing handshake completes.
        """
        done = self.socket.send_close(code, reason, block=block)
        self._wakeup.end()
        return done

    def abort(self, code: int, reason: str) -> None:
        """Close without blocking and shut the socket down (see :meth:`GuardedSocket.abort`)."""
        self.socket.abort(code, reason)
        self._wakeup.end()

    def shutdown(self) -> None:
        """Shut the socket down now."""
        self.socket.shutdown()

    def linger(self, timeout: float) -> None:
        """See :meth:`GuardedSocket.linger`."""
        self.socket.linger(timeout)

    def receive(self, timeout: float | None) -> bytes | str | None:
        """The next message from the peer, or ``None`` after ``timeout`` (``None``: no limit).

        Raises :class:`Ended` once the reader thread has ended (the peer closed, the socket
        died, the library closed for a protocol error or its own limit: its close frame is
        then out, so that a close of ours can never overtake it), and
        :class:`MessageTooBig` for a text message over the limit in UTF-8 bytes.
        """
        if self._source is None or self.socket.closed:
            raise Ended  # after a close frame, messages are not read: the session is ending
        try:
            message = self._source.receive(timeout=timeout)
        except ConnectionClosed as exc:
            self.peer_close = int(exc.reason)
            # The library has decided to close (the peer's close frame, a protocol error) and
            # woke us before writing its close frame: its reader thread writes it next, then
            # ends. Our own close must not overtake it (a 1000 instead of its 1002).
            self.join_reader(self.socket.write_deadline)
            raise Ended from None
        if message is None:
            if self._reader_ended or self.socket.closed:
                raise Ended
            return None
        if isinstance(message, str) and len(message) * 4 > self.max_message_size:
            size = len(message.encode())
            if size > self.max_message_size:
                raise MessageTooBig(size, self.max_message_size)
        return message

    def join_reader(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the reader thread to end; whether it has."""
        reader = self._reader
        if reader is None or reader.ident is None:  # never started
            return False
        reader.join(max(0.0, timeout))
        return not reader.is_alive()

    def ended_by(self) -> str:
        """Who ended the session: ``server-close-CODE``, ``client-close-CODE`` or ``eof``.

        The library writes a close frame of its own only for its size limit (1009); every
        other close frame it writes answers the peer's (wsproto reports a protocol error as a
        close 1002 from the peer), and carries the peer's code.
        """
        sock = self.socket
        code = sock.sent_close
        if code is not None:
            by_us = not sock.closed_by_library or code == CloseCode.TOO_BIG
            return f"{'server' if by_us else 'client'}-close-{code}"
        if self.peer_close is not None and self.peer_close != CloseCode.NO_STATUS:
            return f"client-close-{self.peer_close}"
        return "eof"


def iter_data(items: Sequence[Data]) -> Iterable[bytes]:
    """The buffers of queued items, in order (a tuple item contributes each of its buffers)."""
    for item in items:
        if isinstance(item, bytes):
            yield item
        else:
            yield from item
