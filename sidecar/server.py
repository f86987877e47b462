"""Serving an app with Werkzeug's threaded server, hardened, and the process lifecycle around it.

Threads
    * **main thread**: :func:`run` waits for a stop (a signal, a watcher), then stops the hub
      and the server;
    * **server thread** (``sidecar-http``): ``serve_forever`` accepts connections and starts
      one daemon request thread per connection (Werkzeug's threaded server);
    * **watchdog thread** (``sidecar-watchdog``): answers 408 to, and shuts down, connections
      that have not finished their request (or been upgraded) in time. Its ``_cond`` guards
      its table of connections in progress;
    * watcher threads (parent death, stdin EOF) only set the stop event.

What this adds to Werkzeug's server (its defects, fixed at our boundary):
    * a deadline on the **whole** request, head and body (``--handshake-timeout``), not on
      each read; and a cap on connections in progress (``--max-pending-handshakes``): beyond
      it a connection gets 503 at accept, with no thread;
    * ``Expect: 100-continue`` is ignored on requests without a body (Werkzeug would write
      ``100 Continue`` before an upgrade's ``101``);
    * out of file descriptors (EMFILE) in ``accept``: one log line per episode, a reserve
      descriptor to answer 503 and drain the backlog, a short back-off instead of a spin;
    * the request stream never raises at the end of a request (Werkzeug then leaks an epoll
      descriptor until a garbage collection);
    * ``TCP_NODELAY``, a 2048-connection listen backlog, access-log lines with every token
      redacted, binding done here so that a busy port is a :class:`StartupError`.
"""

from __future__ import annotations

import errno
import heapq
import io
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TextIO
from urllib.parse import unquote

from werkzeug.serving import DechunkedInput, ThreadedWSGIServer, WSGIRequestHandler

from . import __version__, logs
from .config import Config
from .httphead import (
    DechunkedBody,
    HeadReader,
    framing_problem,
    request_line_problem,
)
from .logs import LogLimiter
from .platform import install_stop_handlers, nonblocking_send_flag
from .web.guards import Rejection, printable, redact
from .web.state import SidecarState

log = logging.getLogger("sidecar")

LISTEN_BACKLOG = 2048
#: Refusals are written without blocking where the OS allows (a fresh socket's buffer is empty).
_DONTWAIT = nonblocking_send_flag() or 0
#: Longest the main thread waits between checks for a stop (see :func:`run`). A signal that
#: the OS delivers to another thread runs its Python handler only when the main thread wakes,
#: so this bounds how late readiness turns 503 after SIGTERM (the promise is 100 ms).
SIGNAL_POLL = 0.05
#: Longest a stop waits for the accept loop to end (it polls every 0.1 s).
STOP_SERVING_TIMEOUT = 0.25
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 36\r\n\r\nService Unavailable: server is busy\n"
)
_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 33\r\n\r\nRequest Timeout: request too slow\n"
)


class StartupError(Exception):
    """The sidecar cannot start: ``code`` names the failure for a parent process."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RequestWatchdog:
    """Deadlines for connections whose request is not finished (and not upgraded).

    At most ``limit`` connections at once (:meth:`admit` says no beyond). At the deadline a
    connection that has not started its response gets 408, whether its head or its body is
    late; any late connection is shut down, which ends its request thread. One thread;
    ``_cond`` guards ``_live`` and ``_heap``, so a response and the 408 never both start.
    """

    def __init__(self, timeout: float, limit: int) -> None:
        self.timeout = timeout
        self.limit = limit
        self._live: dict[socket.socket, bool] = {}  # connection -> its response has started
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._log = LogLimiter()
        self.timed_out = 0
        self._thread = threading.Thread(target=self._run, name="sidecar-watchdog", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, conn: socket.socket) -> bool:
        """Start ``conn``'s deadline; ``False`` when ``limit`` connections are in progress."""
        with self._cond:
            if len(self._live) >= self.limit:
                return False
            self._live[conn] = False
            # Every deadline is now + the same timeout: a new one is never the earliest. The
            # watchdog thread needs waking only when it waits with none due (one wake-up, not
            # one per request: a publish is a connection of its own under Werkzeug).
            idle = not self._heap
            heapq.heappush(self._heap, (time.monotonic() + self.timeout, id(conn), conn))
            if idle:
                self._cond.notify()
            return True

    def responding(self, conn: socket.socket) -> bool:
        """``conn``'s response starts: no 408 any more. ``False`` if it has already expired."""
        with self._cond:
            if conn not in self._live:
                return False
            self._live[conn] = True
            return True

    def release(self, conn: socket.socket) -> None:
        """``conn`` finished its request, or was upgraded: no deadline any more."""
        with self._cond:
            self._live.pop(conn, None)

    def stop(self) -> None:
        """End the watchdog thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(1.0)

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and (
                    self._heap[0][0] <= now or self._heap[0][2] not in self._live
                ):
                    _deadline, _id, conn = heapq.heappop(self._heap)
                    if conn in self._live:
                        self._expire(conn, self._live.pop(conn))
                self._cond.wait(self._heap[0][0] - now if self._heap else None)

    def _expire(self, conn: socket.socket, answered: bool) -> None:
        self.timed_out += 1
        suppressed = self._log.check("expired")
        if suppressed is not None:
            log.info(
                "a request was not finished within %g s (--handshake-timeout): %s%s",
                self.timeout,
                "shut down" if answered else "answered 408",
                f" ({suppressed} more since the last line)" if suppressed else "",
            )
        try:
            if not answered:
                conn.send(_TIMEOUT, _DONTWAIT)
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _QuietReader(io.BufferedIOBase):
    """The request stream: reads that fail report EOF instead of raising, and reads after the
    response has started return what has arrived instead of waiting for more.

    Werkzeug drains what is left of a request after the response with an epoll selector that
    it closes only if that read returns; a reset connection made it raise, and the selector's
    descriptor stayed open until a garbage collection. Its drain asks for 10 MB at a time: a
    client that sent a too-large body and then waited for the server to close (a 413) waited
    for the request deadline, its thread and its pending slot held meanwhile.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        #: Set when the response starts: from then on a read takes only what is there.
        self.responded = False

    def read(self, size: int | None = -1) -> bytes:
        try:
            if self.responded and size is not None and size > 0:
                return bytes(self._raw.read1(size))
            return bytes(self._raw.read(size))
        except OSError:
            return b""

    def readline(self, size: int | None = -1) -> bytes:
        return bytes(self._raw.readline(size))

    def read1(self, size: int = -1) -> bytes:
        try:
            return bytes(self._raw.read1(size))
        except OSError:
            return b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Close the wrapped stream too (it holds a reference that keeps the socket open)."""
        self._raw.close()
        super().close()


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler with a request watchdog, strict heads, ``TCP_NODELAY`` and redacted
    access logs (see :mod:`sidecar.httphead` for what a strict head is)."""

    server: Server
    #: Whether the request became a WebSocket session.
    upgraded = False
    #: The request stream's buffer (the head and a body are read through it). It lives as long
    #: as the connection, a WebSocket's too (which reads its socket directly): 8 KiB by
    #: default, a kilobyte here; a body larger than that is read straight into its bytes.
    rbufsize = 1024

    @property
    def watchdog(self) -> RequestWatchdog:
        """The server's request watchdog."""
        assert self.server.watchdog is not None  # set before the server serves
        return self.server.watchdog

    def setup(self) -> None:
        super().setup()  # applies self.timeout (the request deadline) to each read
        self.rfile = _QuietReader(self.rfile)
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP
            pass

    def handle(self) -> None:
        try:
            super().handle()
        finally:
            self.watchdog.release(self.connection)

    def parse_request(self) -> bool:
        """Parse the head as ``http.server`` does, and refuse what it would let through."""
        problem = request_line_problem(self.raw_requestline)
        if problem is not None:
            return self._refuse(problem)
        reader = HeadReader(self.rfile)
        rfile, self.rfile = self.rfile, reader  # type: ignore[assignment]
        try:
            parsed = super().parse_request()  # errors answered by send_error below
        finally:
            self.rfile = rfile
        if not parsed:
            return False
        problem = reader.problem or framing_problem(self.headers)
        return self._refuse(problem) if problem is not None else True

    def handle_expect_100(self) -> bool:
        """No ``100 Continue`` here: :meth:`run_wsgi` sends it, only when a body is expected."""
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """``http.server``'s own refusals (431, 414 …) go the way of every refused head."""
        reason = {414: "target-too-long", 431: "head-too-large"}.get(code, "request-line")
        self._refuse(Rejection(code, explain or message or HTTPStatus(code).phrase, reason))

    def _refuse(self, problem: Rejection) -> bool:
        """Answer ``problem`` in plain text, close, count and log it (rate-limited); False."""
        self.close_connection = True
        if not self.watchdog.responding(self.connection):
            return False  # the watchdog has already answered (408) and shut it down
        self.server.count_refusal(problem, self.raw_requestline, self.client_address)
        phrase = HTTPStatus(problem.status).phrase
        body = f"{phrase}: {problem.message}\n".encode()
        head = (
            f"HTTP/1.1 {problem.status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            self.wfile.write(head.encode() + body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        _drain(self.connection)
        return False

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        if isinstance(environ["wsgi.input"], DechunkedInput):
            environ["wsgi.input"] = DechunkedBody(self.rfile, self.server.max_body)
        environ["sidecar.upgraded"] = self._upgraded
        return environ

    def _upgraded(self) -> None:
        """The request became a WebSocket: no deadline; the access log says 101."""
        self.upgraded = True
        self.watchdog.release(self.connection)

    def run_wsgi(self) -> None:
        if "Expect" in self.headers and not _expects_body(self.headers):
            del self.headers["Expect"]  # no body to wait for: never a 100 Continue before 101
        super().run_wsgi()

    def send_response(self, code: int, message: str | None = None) -> None:
        """The response starts: no 408 from the watchdog, no waiting drain."""
        self.watchdog.responding(self.connection)  # from here on, no 408
        if isinstance(self.rfile, _QuietReader):
            self.rfile.responded = True  # Werkzeug's drain follows: never wait for more
        super().send_response(code, message)

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, redact(message % args) if args else redact(message))

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # the watchdog has answered (408) and logged it, rate-limited
        super().log_error(format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requestline = redact(self.requestline)
        # after a WebSocket session, flask-sock's trailing response is never sent: say 101
        super().log_request(101 if self.upgraded else code, size)


def _expects_body(headers: Any) -> bool:
    """Whether a request head announces a body (and is not an upgrade)."""
    if headers.get("Upgrade"):
        return False
    length = str(headers.get("Content-Length", "")).strip()
    return "Transfer-Encoding" in headers or (length.isdecimal() and int(length) > 0)


def _drain(conn: socket.socket, limit: int = 1 << 20, seconds: float = 0.5) -> None:
    """Read and drop what the peer still sends (at most ``limit`` bytes, ``seconds`` s).

    Closing a socket with unread input sends a reset, which can destroy the answer just
    written before the client has read it.
    """
    deadline = time.monotonic() + seconds
    try:
        while limit > 0 and (remaining := deadline - time.monotonic()) > 0:
            conn.settimeout(remaining)
            data = conn.recv(65536)
            if not data:
                return
            limit -= len(data)
    except OSError:
        pass


class Server(ThreadedWSGIServer):
    """Werkzeug's threaded server on a socket we bound, with the guards described above."""

    block_on_close = False  # daemon request threads; shutdown waits for sessions itself

    def __init__(self, sock: socket.socket, app: Any, config: Config) -> None:
        # Each read's own timeout is a backstop only: the watchdog's deadline (on the whole
        # request) comes first and answers 408.
        read_timeout = 2 * config.handshake_timeout + 1.0
        handler = type("Handler", (RequestHandler,), {"timeout": read_timeout})
        host, port = sock.getsockname()[:2]
        self.watchdog: RequestWatchdog | None = None
        self._reserve: int | None = None
        self._close_lock = threading.Lock()
        super().__init__(host, port, app, handler=handler, fd=sock.fileno())
        sock.close()  # Werkzeug works on its own duplicate
        self.server_name, self.server_port = host, self.port  # what server_bind would set
        self.state: SidecarState | None = getattr(app, "extensions", {}).get("sidecar")
        self._fd_episode = False
        self._pause = threading.Event()
        self._busy_log = LogLimiter()
        self._head_log = LogLimiter()
        #: The largest request body the app takes (a larger chunk is refused at once).
        self.max_body = config.max_event_bytes
        self._reserve = os.open(os.devnull, os.O_RDONLY)
        self.watchdog = RequestWatchdog(config.handshake_timeout, config.max_pending_handshakes)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.watchdog is None or not self.watchdog.admit(request):
            self._refuse(request, "pending-handshakes")
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket, reason: str) -> None:
        try:
            request.send(_BUSY, _DONTWAIT)
        except OSError:
            pass
        self.shutdown_request(request)
        if self.state is not None:
            self.state.sessions.count_rejection(reason, handshake=True)
        suppressed = self._busy_log.check(reason)
        if suppressed is not None:
            why = (
                f"{self.watchdog.limit if self.watchdog else 0} connections still sending their "
                "request (--max-pending-handshakes)"
                if reason == "pending-handshakes"
                else "out of file descriptors"
            )
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.warning("%s: answered 503%s", why, more)

    def count_refusal(self, problem: Rejection, request_line: bytes, peer: Any) -> None:
        """Count a refused request head (a handshake if it names a WebSocket path); log it.

        One line per peer and reason per interval (:class:`~sidecar.logs.LogLimiter`); the
        request target is shown redacted and truncated.
        """
        words = request_line.split()
        target = words[1].decode("latin-1") if len(words) > 1 else ""
        path = unquote(target.partition("?")[0])
        handshake = self.state is not None and path in self.state.ws_paths
        if self.state is not None:
            self.state.sessions.count_rejection(problem.reason, handshake=handshake)
        host = peer[0] if isinstance(peer, tuple) and peer else "?"
        suppressed = self._head_log.check((host, problem.reason))
        if suppressed is not None:
            log.info(
                "%s refused (%d %s): %s, target %s from %s%s",
                "handshake" if handshake else "request",
                problem.status,
                problem.reason,
                problem.message,
                printable(redact(target), 80),
                host,
                f" ({suppressed} more like it not logged)" if suppressed else "",
            )

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_descriptors()
            raise
        if self._fd_episode:
            self._fd_episode = False
            log.info("file descriptors available again: accepting connections")
        return request

    def _out_of_descriptors(self) -> None:
        """Answer the waiting connection 503 with the reserve descriptor, then back off."""
        if not self._fd_episode:
            self._fd_episode = True
            log.error("out of file descriptors: answering 503 until some are free")
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                conn, _addr = self.socket.accept()
            except OSError:
                pass
            else:
                self._refuse(conn, "file-descriptors")
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self._reserve = None
        self._pause.wait(0.05)  # back off: accept() fails at once until a descriptor frees

    def server_close(self) -> None:
        with self._close_lock:  # Werkzeug's serve_forever and shutdown() may both call it
            super().server_close()
            reserve, self._reserve = self._reserve, None
        # The watchdog stays: request threads still running use it until they end (their
        # release() after the stop is harmless; it used to be None here: an AssertionError
        # traceback for every session that outlived the server).
        if self.watchdog is not None:
            self.watchdog.stop()
        if reserve is not None:
            os.close(reserve)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request thread failed: one log record (rate-limited), never a print to stderr.

        socketserver prints the traceback on ``sys.stderr``: with a pipe nobody reads, that
        thread blocks holding the stream's lock, which the interpreter needs to exit.
        """
        suppressed = self._head_log.check("request-failed")
        if suppressed is not None:
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.exception("a request thread failed%s", more)


def bind(config: Config) -> socket.socket:
    """A listening socket for ``config.host``/``port``; :class:`StartupError` if impossible."""
    from .platform import REUSE_ADDRESS, exclusive_bind

    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError("bad-host", f"cannot resolve --host {config.host!r}: {exc}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if REUSE_ADDRESS:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        exclusive_bind(sock)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"{config.host}:{config.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError("port-in-use", f"{where} is in use") from None
        raise StartupError("bind-failed", f"cannot listen on {where}: {exc.strerror}") from None
    return sock


def check_descriptors(config: Config) -> None:
    """Make room for the connection caps in ``RLIMIT_NOFILE``, or refuse to start."""
    from .platform import FD_HEADROOM, raise_fd_limit

    needed = config.max_clients + config.max_pending_handshakes + FD_HEADROOM
    limit = raise_fd_limit(needed)
    if limit is not None and limit < needed:
        raise StartupError(
            "fd-limit",
            f"--max-clients {config.max_clients} and --max-pending-handshakes "
            f"{config.max_pending_handshakes} need about {needed} file descriptors; the limit "
            f"is {limit} (raise it with ulimit -n, or lower the caps)",
        )


def make_server(config: Config, app: Any | None = None) -> tuple[Server, SidecarState]:
    """Bind (port 0 picks a free port) and build the app; the server is not serving yet."""
    from .web.extension import create_app

    app = app or create_app(config)
    state: SidecarState = app.extensions["sidecar"]
    server = Server(bind(config), app, config)
    state.allow_own_origin(server.server_port)
    logs.hide(state.token)
    return server, state


def ready_line(server: Server, state: SidecarState, *, show_token: bool) -> dict[str, Any]:
    """The JSON object printed on stdout once the sidecar listens."""
    host = state.config.host
    url_host = f"[{host}]" if ":" in host else host
    port = server.server_port
    line: dict[str, Any] = {
        "event": "ready",
        "url": f"http://{url_host}:{port}",
        "ws": f"ws://{url_host}:{port}/ws",
        "port": port,
        "pid": os.getpid(),
        "version": __version__,
        "epoch": state.hub.epoch,
    }
    if show_token and state.token:
        line["token"] = state.token
    return line


def shutdown(server: Server, state: SidecarState, grace: float = 1.0) -> None:
    """Close every client with 1001, wait up to ``grace`` for their sessions, stop serving.

    Clients that answer the close frame end their sessions at once; the process does not wait
    longer than ``grace`` for the others (their sockets close when it exits). Every step has a
    deadline: with :data:`sidecar.logs.FLUSH_TIMEOUT` for the log, a stop takes under 2 s.
    """
    deadline = time.monotonic() + grace
    if state.broker is not None:
        state.broker.stop()
    state.hub.stop(timeout=grace)
    if not state.sessions.wait_idle(max(0.0, deadline - time.monotonic())):
        log.warning(
            "%d sessions still open after %.1f s; exiting anyway", state.sessions.active, grace
        )
    # socketserver's shutdown() waits for serve_forever without a deadline: give it one
    stopper = threading.Thread(target=server.shutdown, name="sidecar-http-stop", daemon=True)
    stopper.start()
    stopper.join(STOP_SERVING_TIMEOUT)
    server.server_close()


Watcher = Callable[[threading.Event], None]


def run(
    config: Config,
    *,
    app: Any | None = None,
    out: TextIO | None = None,
    show_token: bool = False,
    watchers: list[Watcher] | None = None,
    ready_extra: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Serve until a stop signal (or a watcher sets the stop event); the exit code.

    The stop signals are the OS's (:func:`sidecar.platform.stop_signals`: SIGTERM, SIGINT and
    SIGHUP, or SIGINT and SIGBREAK on Windows).

    The signal handler only records the signal: it must not take a lock, because it runs in
    the main thread between two bytecodes, possibly while that thread holds the very lock
    (``Event.set`` from a handler deadlocked ~1 run in 100 here). The main thread waits in
    short slices and checks what the handler recorded. Raises :class:`StartupError` before
    the ready line.
    """
    server, state = make_server(config, app)
    state.ensure_started()
    if state.config.gc_freeze:  # this process is ours: start-up objects are frozen now
        state.hub.manage_gc()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)  # list.append and an attribute store: no lock taken
        state.stopping = "draining" if config.drain > 0 and len(received) == 1 else "stopping"

    install_stop_handlers(on_signal)
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sidecar-http", daemon=True
    )
    serving.start()
    out = out or sys.stdout
    line = ready_line(server, state, show_token=show_token)
    if ready_extra is not None:
        ready_extra(line)
    out.write(json.dumps(line, separators=(",", ":")) + "\n")
    out.flush()
    log.info("listening on http://%s:%d (ws path /ws)", config.host, server.server_port)
    for watcher in watchers or []:
        watcher(stop)
    while not received and not stop.wait(SIGNAL_POLL):
        pass
    if received and config.drain > 0:
        drain(state, config.drain, received, stop)
    elif received:
        log.info("received %s, shutting down", signal.Signals(received[0]).name)
    state.stopping = "stopping"
    shutdown(server, state)
    log.info("stopped")
    return 0


def drain(state: SidecarState, seconds: float, received: list[int], stop: threading.Event) -> None:
    """Serve open sessions for up to ``seconds`` after a stop signal (``--drain``).

    Readiness already says 503 and new upgrades get 503 with ``Retry-After`` (the signal
    handler set ``state.stopping``); publishing and open sessions go on. The window ends
    early when no session is left, on a second signal, or when a watcher stops the process.
    """
    name = signal.Signals(received[0]).name
    log.info(
        "received %s: draining for up to %g s (%d sessions open; new WebSockets get 503)",
        name,
        seconds,
        state.sessions.active,
    )
    deadline = time.monotonic() + seconds
    while len(received) < 2 and not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or state.sessions.wait_idle(min(remaining, SIGNAL_POLL)):
            break
    if len(received) > 1:
        log.info("received %s again: ending the drain", signal.Signals(received[1]).name)
    log.info("drain over: closing %d sessions with 1001", state.sessions.active)
