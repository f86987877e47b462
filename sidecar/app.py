"""The Flask application: ``/ws``, ``/health`` and the handshake guard in front of ``/ws``.

Threads
    * each HTTP request, including each WebSocket session for its whole life, runs on a
      request thread of the WSGI server (Werkzeug's threaded server or gunicorn gthread);
    * the hub thread is started by :func:`create_app` unless a running hub is passed in.

State
    :class:`Sidecar` (``app.extensions["sidecar"]``) holds the hub, the configuration and
    :class:`Sessions`, whose lock guards the count of live WebSocket sessions (the
    connection cap). Rejection counters are guarded by the same lock.

A WebSocket session never returns a normal response: once the socket has been handed to
simple-websocket, the view returns a response whose body raises ``BrokenPipeError``, which
both Werkzeug and gunicorn treat as a dropped connection and answer with silence. Without
that, Werkzeug writes ``HTTP/1.1 200 OK`` after the close frame (flask-sock issues #20, #70).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

from . import __version__
from .api import api_blueprint
from .client import Client, envelope_handler
from .config import Config
from .connection import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, Connection
from .hub import Hub, Since
from .security import (
    SUBPROTOCOL,
    OriginPolicy,
    Rejection,
    allowed_hosts,
    check_host,
    check_origin,
    check_token,
    check_upgrade,
    offered_subprotocols,
    redact,
)
from .web import web_blueprint

log = logging.getLogger("sidecar.app")


class Sessions:
    """Live WebSocket sessions, capped; ``lock`` guards ``active``, ``rejected`` and ``ended``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.rejected: dict[str, int] = {}
        #: Sessions ended, by who ended them: ``client``, ``shutdown`` or the drop reason.
        self.ended: dict[str, int] = {}
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)

    def try_enter(self) -> bool:
        """Take a slot if one is free."""
        with self._cond:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        """Give a slot back."""
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def count_end(self, reason: str) -> None:
        """Count a finished session under ``reason``."""
        with self._cond:
            self.ended[reason] = self.ended.get(reason, 0) + 1

    def count_rejection(self, reason: str) -> None:
        """Count a refused handshake under ``reason``."""
        with self._cond:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no session is live; ``False`` if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.active == 0, timeout)


class Sidecar:
    """Everything the views share: configuration, hub, sessions, policies."""

    def __init__(self, config: Config, hub: Hub) -> None:
        self.config = config
        self.hub = hub
        self.token = config.token if config.auth else None
        self.origins = OriginPolicy(config.allowed_origins)
        self.hosts = allowed_hosts(config.host)
        self.sessions = Sessions(config.max_clients)
        self.started = time.monotonic()

    def allow_own_origin(self, port: int) -> None:
        """Allow pages served by the sidecar itself (``http://127.0.0.1:PORT`` and friends)."""
        for host in ("127.0.0.1", "localhost", "[::1]"):
            self.origins.add(f"http://{host}:{port}")


def _reject(sidecar: Sidecar, rejection: Rejection) -> Response:
    sidecar.sessions.count_rejection(rejection.reason)
    log.info(
        "handshake refused (%d %s): %s %s from %s",
        rejection.status,
        rejection.reason,
        request.method,
        redact(request.full_path.rstrip("?")),
        request.remote_addr,
    )
    response = Response(rejection.message + "\n", status=rejection.status, mimetype="text/plain")
    for name, value in rejection.headers.items():
        response.headers[name] = value
    return response


class _SessionOver(Response):
    """The "response" of a finished WebSocket session: nothing may follow the close frame."""

    def __call__(self, environ: Any, start_response: Any) -> Iterator[bytes]:
        return _session_over()


def _session_over() -> Iterator[bytes]:
    raise BrokenPipeError(errno.EPIPE, "WebSocket session over")
    yield b""  # pragma: no cover - makes this a generator


def create_app(config: Config | None = None, hub: Hub | None = None) -> Flask:
    """Build the sidecar's Flask app.

    Starts a hub (``app.extensions["sidecar"].hub``) unless a running one is passed in.
    """
    config = config or Config()
    if hub is None:
        hub = Hub(
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout or None,
            history_size=config.history_size,
            history_bytes=config.history_bytes,
            max_event_bytes=config.max_event_bytes,
        )
        hub.start()
    sidecar = Sidecar(config, hub)
    app = Flask("sidecar")
    app.extensions["sidecar"] = sidecar

    @app.before_request
    def guard_host() -> Response | None:
        rejection = check_host(request.environ, sidecar.hosts)
        return _reject(sidecar, rejection) if rejection else None

    app.register_blueprint(api_blueprint(sidecar))
    app.register_blueprint(web_blueprint(sidecar))

    @app.get("/health")
    def health() -> Response:
        return jsonify(
            status="ok" if hub.is_running() else "stopping",
            version=__version__,
            uptime=round(time.monotonic() - sidecar.started, 3),
        )

    @app.route("/ws", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    def plain_ws() -> Response:
        rejection = check_upgrade(request.environ)
        assert rejection is not None  # an upgrade request matches the websocket rule below
        return _reject(sidecar, rejection)

    @app.route("/ws", websocket=True, methods=["GET"])
    def websocket() -> Response:
        return serve_websocket(sidecar)

    return app


def serve_websocket(
    sidecar: Sidecar,
    on_message: Callable[[Client, str | bytes], None] | None = None,
    *,
    greet: bool = True,
) -> Response:
    """Validate the handshake, then run one WebSocket session to its end (request thread).

    ``on_message`` handles client messages (default: :func:`sidecar.client.envelope_handler`
    dispatching to the hub's message handler); ``greet=False`` skips ``connection:status``.
    """
    environ = request.environ
    rejection = (
        check_upgrade(environ)
        or check_origin(environ, sidecar.origins)
        or check_token(environ, sidecar.token)
    )
    if rejection:
        return _reject(sidecar, rejection)
    offered = offered_subprotocols(environ)
    if offered and SUBPROTOCOL not in offered:
        return _reject(
            sidecar,
            Rejection(400, f"Bad Request: offer the {SUBPROTOCOL} subprotocol", "subprotocol"),
        )
    since: Since | None = None
    if "since" in request.args:
        try:
            since = Since.parse(request.args["since"])
        except ValueError as exc:
            return _reject(sidecar, Rejection(400, f"Bad Request: {exc}", "since"))
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return _reject(
            sidecar,
            Rejection(
                501,
                "Not Implemented: this WSGI server does not expose its socket "
                "(use the sidecar CLI, Werkzeug or gunicorn -k gthread)",
                "server",
            ),
        )
    if not sidecar.hub.is_running():
        return _reject(
            sidecar,
            Rejection(503, "Service Unavailable: shutting down", "stopping", {"Retry-After": "1"}),
        )
    if not sidecar.sessions.try_enter():
        return _reject(
            sidecar,
            Rejection(
                503, "Service Unavailable: too many connections", "capacity", {"Retry-After": "1"}
            ),
        )
    try:
        _run_session(sidecar, environ, sock, since, on_message, greet)
    finally:
        sidecar.sessions.leave()
    return _SessionOver()


def _run_session(
    sidecar: Sidecar,
    environ: Any,
    sock: socket.socket,
    since: Since | None,
    on_message: Callable[[Client, str | bytes], None] | None,
    greet: bool,
) -> None:
    config = sidecar.config
    hub = sidecar.hub
    on_message = on_message or envelope_handler(hub.handle_client_message)
    sock.settimeout(None)  # the handshake timeout ends here; idle WebSockets live on
    if not config.compression:
        environ = {k: v for k, v in environ.items() if k != "HTTP_SEC_WEBSOCKET_EXTENSIONS"}
    try:
        conn = Connection(
            environ,
            sock,
            max_message_size=config.max_message_size,
            write_deadline=config.write_deadline,
            subprotocols=[SUBPROTOCOL],
        )
    except Exception as exc:  # wsproto refused a handshake our checks let through
        log.warning("handshake failed from %s: %s", request.remote_addr, exc)
        return
    client = Client(
        conn,
        queue_size=config.queue_size,
        max_pending_bytes=config.max_pending_bytes,
        fast_path=config.fast_path,
        remote=f"{request.remote_addr}:{environ.get('REMOTE_PORT', '?')}",
    )
    log.info("client %s connected from %s", client.id, client.remote)
    try:
        if hub.register(client, since, greet=greet):
            client.read_loop(on_message)
        else:
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
    except Exception:
        log.exception("session of client %s failed: closing with 1011", client.id)
        conn.close(CLOSE_INTERNAL_ERROR, "internal error")
    finally:
        hub.unregister(client)
        ended_by = client.ended_by or _ended_by(conn)  # before finish() sends its own close
        client.finish(config.close_timeout)
        sidecar.sessions.count_end(ended_by)
        log.info("client %s disconnected (%s)", client.id, ended_by)


def _ended_by(conn: Connection) -> str:
    """Who ended the session: ``server-close-CODE``, ``client-close-CODE`` or ``eof``."""
    if conn.sent_close is not None:
        return f"server-close-{conn.sent_close}"
    code = int(conn.close_reason)
    if code != 1005:
        return f"client-close-{code}"
    # No close frame from either side through our close(): the peer vanished, or
    # simple-websocket closed for a protocol error or an oversized message (1002/1007/1009).
    return "eof" if conn.is_open else "server-close-protocol"
