"""Serving the app with Werkzeug's threaded server, and the process lifecycle around it.

Threads
    * **main thread**: :func:`run` waits on the ``stop`` event (set by SIGINT/SIGTERM or a
      watcher), then stops the hub and the server;
    * **server thread** (``sidecar-http``): ``serve_forever`` accepts connections; Werkzeug
      starts one daemon request thread per connection;
    * watcher threads (parent death, stdin EOF) only set ``stop``.

The request handler adds what Werkzeug lacks: a handshake timeout (the socket timeout while
the request head is read; the WebSocket view clears it on upgrade), ``TCP_NODELAY`` and a
2048-connection listen backlog, and access-log lines with ``token=`` redacted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from . import __version__
from .app import Sidecar, create_app
from .config import Config
from .security import redact

log = logging.getLogger("sidecar")

LISTEN_BACKLOG = 2048
#: Longest the main thread waits between checks for a stop (see :func:`run`).
SIGNAL_POLL = 0.25


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler with a head timeout, ``TCP_NODELAY`` and redacted access logs."""

    #: Seconds allowed for the request head; set per server from the configuration.
    timeout = 10.0

    def setup(self) -> None:
        super().setup()  # applies self.timeout to the socket
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP
            pass

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, redact(message % args) if args else redact(message))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requestline = redact(self.requestline)
        super().log_request(code, size)


class Server(ThreadedWSGIServer):
    """Werkzeug's threaded server with a large listen backlog."""

    request_queue_size = LISTEN_BACKLOG


def make_server(config: Config, app: Any | None = None) -> tuple[Server, Sidecar]:
    """Bind (port 0 picks a free port) and build the app; the server is not serving yet."""
    app = app or create_app(config)
    handler = type("Handler", (RequestHandler,), {"timeout": config.handshake_timeout})
    server = Server(config.host, config.port, app, handler=handler)
    sidecar: Sidecar = app.extensions["sidecar"]
    sidecar.allow_own_origin(server.server_port)
    return server, sidecar


def ready_line(server: Server, sidecar: Sidecar, *, show_token: bool) -> dict[str, Any]:
    """The JSON object printed on stdout once the sidecar listens."""
    host = sidecar.config.host
    url_host = f"[{host}]" if ":" in host else host
    port = server.server_port
    line: dict[str, Any] = {
        "event": "ready",
        "url": f"http://{url_host}:{port}",
        "ws": f"ws://{url_host}:{port}/ws",
        "port": port,
        "pid": os.getpid(),
        "version": __version__,
        "epoch": sidecar.hub.epoch,
    }
    if show_token and sidecar.token:
        line["token"] = sidecar.token
    return line


def shutdown(server: Server, sidecar: Sidecar, grace: float = 1.0) -> None:
    """Close every client with 1001, wait up to ``grace`` for their sessions, stop serving.

    Clients that answer the close frame end their sessions at once; the process does not wait
    longer than ``grace`` for the others (their sockets close when it exits).
    """
    sidecar.hub.stop(timeout=grace)
    if not sidecar.sessions.wait_idle(grace):
        log.warning(
            "%d sessions still open after %.1f s; exiting anyway", sidecar.sessions.active, grace
        )
    server.shutdown()
    server.server_close()


def run(
    config: Config,
    *,
    app: Any | None = None,
    out: TextIO | None = None,
    show_token: bool = False,
    watchers: list[Callable[[threading.Event], None]] | None = None,
    ready_extra: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or a watcher sets the stop event); return the exit code.

    The signal handler only records the signal: it must not take a lock, because it runs in
    the main thread between two bytecodes, possibly while that thread holds the very lock
    (``Event.set`` from a handler deadlocked ~1 run in 100 here). The main thread waits in
    short slices and checks what the handler recorded.

    ``app`` replaces the production app (the conformance app does); ``ready_extra`` may add
    fields to the ready line.
    """
    server, sidecar = make_server(config, app)
    stop = threading.Event()
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    serving = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="sidecar-http",
        daemon=True,
    )
    serving.start()
    out = out or sys.stdout
    line = ready_line(server, sidecar, show_token=show_token)
    if ready_extra is not None:
        ready_extra(line)
    out.write(json.dumps(line, separators=(",", ":")) + "\n")
    out.flush()
    log.info("listening on http://%s:%d (ws path /ws)", config.host, server.server_port)
    for watcher in watchers or []:
        watcher(stop)
    while not received and not stop.wait(SIGNAL_POLL):
        pass
    if received:
        log.info("received %s, shutting down", signal.Signals(received[0]).name)
    shutdown(server, sidecar)
    log.info("stopped")
    return 0
