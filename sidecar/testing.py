"""A conformance app for protocol testing only: the production app plus an echo endpoint.

Never mounted by :func:`sidecar.app.create_app`; only :func:`conformance_app` adds it, for
the Autobahn|Testsuite (``scripts/autobahn``), the frame fuzzer and the bad-input tests.

``/echo`` runs on exactly the machinery of ``/ws``: the same handshake guard (method,
Upgrade, Origin, token, subprotocol), :class:`~sidecar.connection.Connection` (socket lock,
inbound limit, close handling), :class:`~sidecar.client.Client` (queue, writer thread,
keepalive) and the hub. Each message is echoed as received (text as text, binary as binary)
by :meth:`Hub.send_frame <sidecar.hub.Hub.send_frame>`, so it takes the path of every
server→client frame: hub thread, fast path or queue, writer thread.

Two differences from ``/ws``, both needed by an echo peer:

* an echo client is registered with ``greet=False``: no ``connection:status`` (Autobahn
  expects to receive only its own messages back); ``/ws`` clients of the same app still get
  theirs;
* the echo applies backpressure: the request thread (the reader) waits while the client's
  queue is half full, so a peer that writes faster than it reads is slowed down by TCP
  instead of being dropped. A peer that reads nothing for the write deadline is closed with
  4008 "slow consumer", as the hub would.

Threads: the echo handler runs on the session's request thread.

Run it: ``python -m sidecar.testing --port 0 [--max-message-size N] [--no-auth]`` prints the
ready line of ``python -m sidecar`` with an extra ``"echo"`` URL (and the generated token).
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, Response

from . import frames
from .app import Sidecar, create_app, serve_websocket
from .client import Client, Close
from .config import Config
from .connection import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER
from .hub import Hub

log = logging.getLogger("sidecar.testing")

#: Where :func:`conformance_app` mounts the echo endpoint.
ECHO_PATH = "/echo"

#: Frames at least this large wait for an empty queue before they are echoed (so a burst of
#: large echoes never reaches the hub's ``max_pending_bytes``).
LARGE_FRAME = 64 * 1024


def _hub_barrier(hub: Hub, timeout: float) -> bool:
    """Wait until the hub thread has handled everything submitted so far (the inbox is FIFO)."""
    if not hub.is_running():
        return False
    done = threading.Event()
    hub.call(done.set)
    return done.wait(timeout)


def echo_handler(sidecar: Sidecar) -> Callable[[Client, str | bytes], None]:
    """The ``/echo`` message handler: send each message back through the hub, in order."""
    hub = sidecar.hub
    deadline_s = sidecar.config.write_deadline

    def echo(client: Client, message: str | bytes) -> None:
        if isinstance(message, str):
            data = frames.frame(frames.OP_TEXT, message.encode())
        else:
            data = frames.frame(frames.OP_BINARY, bytes(message))
        deadline = time.monotonic() + deadline_s
        if not client.registered:
            return  # dropped (evicted, or the hub is stopping): its socket is being shut down
        # Backpressure: the reader waits for the writer, so TCP slows the peer down.
        limit = 1 if len(data) >= LARGE_FRAME else max(1, client.queue_size // 2)
        wait = threading.Event().wait
        while client.backlog() >= limit:
            if not client.registered:
                return  # dropped meanwhile: its socket is being shut down
            if time.monotonic() >= deadline:
                raise Close(CLOSE_SLOW_CONSUMER, "slow consumer")
            wait(0.001)
        if not hub.send_frame(client, data):
            if not hub.is_running():
                raise Close(CLOSE_GOING_AWAY, "server shutting down")
            if not client.registered:
                return  # dropped meanwhile
            raise Close(CLOSE_SLOW_CONSUMER, "slow consumer")
        # At most one echo in flight in the inbox: the backlog check above stays meaningful.
        if not _hub_barrier(hub, max(0.0, deadline - time.monotonic()) + 1.0):
            raise Close(CLOSE_GOING_AWAY, "server shutting down")

    return echo


def conformance_app(config: Config | None = None) -> Flask:
    """The production app (``/ws``, ``/health``) plus ``/echo``, sharing one hub.

    ``max_event_bytes`` is raised to fit an echo of the largest accepted message.
    """
    config = config or Config()
    needed = config.max_message_size + 16  # the echo frame: the message plus its header
    if config.max_event_bytes < needed:
        config = config.with_options(max_event_bytes=needed)
    app = create_app(config)
    sidecar: Sidecar = app.extensions["sidecar"]
    on_message = echo_handler(sidecar)

    @app.route(ECHO_PATH, websocket=True, methods=["GET"])
    def echo() -> Response:
        return serve_websocket(sidecar, on_message=on_message, greet=False)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.testing``: serve the conformance app until SIGINT/SIGTERM."""
    from .cli import build_parser, config_from_args, setup_logging
    from .server import run

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.prog = "python -m sidecar.testing"
    args = parser.parse_args(["serve", *argv])
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"sidecar.testing: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if config.auth and not config.token:
        config = config.with_options(token=secrets.token_urlsafe(32))

    def add_echo(line: dict[str, Any]) -> None:
        line["echo"] = line["ws"].rsplit("/", 1)[0] + ECHO_PATH
        log.warning("conformance app (test only) listening on %s", line["url"])

    try:
        return run(config, app=conformance_app(config), show_token=True, ready_extra=add_echo)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
