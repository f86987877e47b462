"""The conformance app, for protocol testing only: the sidecar's app plus an echo endpoint.

Never mounted by :func:`sidecar.web.extension.create_app`; only :func:`conformance_app` adds
it, for the Autobahn|Testsuite (``scripts/autobahn``), the frame fuzzer and the bad-input
tests. ``/echo`` runs on exactly the machinery of ``/ws`` (:func:`add_websocket_route`): the
same guards before the ``101``, the same connection, client, queue, writer thread, keepalive
and hub. Each message is echoed as received (text as text, binary as binary) by
:meth:`Hub.send_frame <sidecar.core.hub.Hub.send_frame>`, so it takes the path of every
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

Run it: ``python -m sidecar.conformance --port 0 [--max-message-size N] [--no-auth]`` prints
the ready line of ``python -m sidecar`` with an extra ``"echo"`` URL (and the token).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from flask import Flask

from . import frames, logs
from .config import Config, ConfigError, load, resolve_token
from .core.client import Client, Close, MessageHandler
from .core.hub import Hub
from .protocol import MAX_FRAME_HEADER, CloseCode
from .web.extension import add_websocket_route, create_app
from .web.state import SidecarState

log = logging.getLogger("sidecar.conformance")

#: Where :func:`conformance_app` mounts the echo endpoint.
ECHO_PATH = "/echo"

#: Frames at least this large wait for an empty queue before they are echoed (so a burst of
#: large echoes never reaches the client's ``max_pending_bytes``).
LARGE_FRAME = 64 * 1024


def _hub_barrier(hub: Hub, timeout: float) -> bool:
    """Wait until the hub thread has handled everything submitted so far (the inbox is FIFO)."""
    done = threading.Event()
    return hub.call(done.set) and done.wait(timeout)


def echo_handler(state: SidecarState) -> MessageHandler:
    """The ``/echo`` message handler: send each message back through the hub, in order."""
    hub = state.hub
    deadline_s = state.config.write_deadline

    def echo(client: Client, message: str | bytes) -> None:
        if isinstance(message, str):
            data = frames.frame(frames.OP_TEXT, message.encode())
        else:
            data = frames.frame(frames.OP_BINARY, bytes(message))
        deadline = time.monotonic() + deadline_s
        # Backpressure: the reader waits for the writer, so TCP slows the peer down.
        limit = 1 if len(data) >= LARGE_FRAME else max(1, client.queue_size // 2)
        wait = threading.Event().wait
        while client.backlog() >= limit:
            if client.gone:
                return  # dropped meanwhile: its socket is being shut down
            if time.monotonic() >= deadline:
                raise Close(CloseCode.SLOW_CONSUMER, "slow consumer")
            wait(0.001)
        if not hub.send_frame(client, data):
            if not hub.is_running():
                raise Close(CloseCode.GOING_AWAY, "server shutting down")
            if client.gone:
                return  # dropped meanwhile
            raise Close(CloseCode.SLOW_CONSUMER, "slow consumer")
        # At most one echo in flight in the inbox: the backlog check above stays meaningful.
        if not _hub_barrier(hub, max(0.0, deadline - time.monotonic()) + 1.0):
            raise Close(CloseCode.GOING_AWAY, "server shutting down")

    return echo


def conformance_app(config: Config | None = None) -> Flask:
    """The sidecar's app (``/ws``, ``/health``) plus ``/echo``, sharing one hub.

    ``max_event_bytes`` is raised to fit an echo of the largest accepted message.
    """
    config = config or Config()
    needed = config.max_message_size + MAX_FRAME_HEADER
    if config.max_event_bytes < needed:
        config = config.with_options(max_event_bytes=needed)
    app = create_app(config)
    state: SidecarState = app.extensions["sidecar"]
    add_websocket_route(app, "sidecar_echo", ECHO_PATH, lambda: echo_handler(state), greet=False)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.conformance``: serve the conformance app until a stop signal, or
    the end of stdin (``--exit-on-stdin-eof``, the stop of a Windows child) or of the parent
    (``--parent-pid``), as ``sidecar serve`` does."""
    from .cli import _watchers, build_serve_parser, fail
    from .server import StartupError, run

    parser = build_serve_parser()
    parser.prog = "python -m sidecar.conformance"
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = resolve_token(load(vars(args)), generate=True)
        logs.setup(config.log_level, log_file=config.log_file)

        def add_echo(line: dict[str, Any]) -> None:
            line["echo"] = line["ws"].rsplit("/", 1)[0] + ECHO_PATH
            log.warning("conformance app (test only) listening on %s", line["url"])

        return run(
            config,
            app=conformance_app(config),
            show_token=True,
            ready_extra=add_echo,
            watchers=_watchers(config.parent_pid, config.exit_on_stdin_eof),
        )
    except ConfigError as exc:
        return fail("bad-option", str(exc))
    except StartupError as exc:
        return fail(exc.code, exc.message)
    finally:
        logs.shutdown()


if __name__ == "__main__":
    sys.exit(main())
