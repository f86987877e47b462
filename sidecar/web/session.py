"""``/ws`` on flask-sock: every check before the ``101``, then one session to its end.

Request threads only. For each upgrade request:

1. :func:`admit`, in a ``before_request`` scoped to the endpoint, runs every check (upgrade
   headers, header syntax, Origin, token, subprotocol, ``since``, server support, capacity,
   the replay budget, and what wsproto itself would refuse) and answers a refusal with a
   plain HTTP status. When it admits the request it takes a session slot, creates the
   :class:`~sidecar.core.connection.Connection` and puts its guarded socket where
   simple-websocket looks for the request's socket. With a broker, a resume first waits (at
   most :data:`CATCH_UP_TIMEOUT`) for this process's relay to reach the ``since`` the client
   saw on a faster process, then reads from Redis what the local window no longer holds
   (the backfill); Redis unreachable then is a 503.
2. flask-sock's ``Sock.route`` view builds a stock simple-websocket ``Server`` with the options
   of :class:`ServerOptions` (our reader thread and wake-up event for this request) and calls
   :func:`run_session`, which registers a :class:`~sidecar.core.client.Client` with the hub,
   runs its read loop and ends the session: closing handshake, reader joined, socket shut
   down, so nothing (not flask-sock's close, not Werkzeug's trailing ``200 OK``) can follow
   the close frame.
3. A ``teardown_request`` gives the slot back, however the request ended.

State: ``flask.g.sidecar_session`` carries the admitted session from step 1 to step 2 (one
request context, one thread). Counters live in :class:`~sidecar.web.state.Sessions`.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g, request
from flask_sock import Sock
from wsproto.utilities import ProtocolError

from ..broker import BrokerUnavailable
from ..core import resume
from ..core.client import Client, Close, MessageHandler
from ..core.connection import Connection, MessageSource
from ..core.identity import Identity
from ..core.resume import ChannelRequest
from ..envelope import Event
from ..protocol import (
    CHANNELS_PARAM,
    DEFAULT_CHANNEL,
    RESERVED_NAMESPACES,
    SINCE_PARAM,
    SUBPROTOCOL,
    ChannelErrorCode,
    CloseCode,
    Since,
    channel_error,
    parse_channels,
    parse_since,
)
from .channels import ChannelMessages
from .guards import (
    Rejection,
    check_headers,
    check_origin,
    check_upgrade,
    offered_subprotocols,
    redact,
)
from .state import SidecarState

log = logging.getLogger("sidecar.session")

#: Bytes simple-websocket reads from the socket at a time.
RECEIVE_BYTES = 16384
#: The environ keys under which Werkzeug and gunicorn hand over the request's socket.
SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket")
#: A resume replaying at most this many bytes is never refused by the replay budget: a
#: reconnect after a blip replays a few events and must not wait (nor drain the budget).
SMALL_REPLAY = 64 << 10
#: What a client→server event is handed to: ``fn(client, event)`` on the reader's thread.
EventHandler = Callable[[Client, dict[str, Any]], None]


@dataclass(frozen=True)
class Admission:
    """An admitted upgrade request, from the guard to the view."""

    conn: Connection
    #: Who it is (the shared token's superuser, or what the app's hook said).
    identity: Identity
    #: The channels it joins, resume planning done (the default channel first).
    requests: tuple[ChannelRequest, ...]
    #: ``channel:error`` events for channels refused at connect (sent after the status).
    notices: tuple[Event, ...]
    remote: str
    #: simple-websocket's ``Server`` options for this session (see :class:`ServerOptions`).
    options: Mapping[str, Any]


def reject(state: SidecarState, rejection: Rejection, *, handshake: bool) -> Response:
    """Count, log (rate-limited, token redacted) and answer ``rejection`` as plain text."""
    state.sessions.count_rejection(rejection.reason, handshake=handshake)
    suppressed = state.log_limit.check(("refused", request.remote_addr, rejection.reason))
    if suppressed is not None:
        more = f" ({suppressed} more like it not logged)" if suppressed else ""
        log.info(
            "%s refused (%d %s): %s %s from %s%s%s",
            "handshake" if handshake else "request",
            rejection.status,
            rejection.reason,
            request.method,
            redact(request.full_path.rstrip("?")),
            request.remote_addr,
            f": {rejection.detail}" if rejection.detail else "",
            more,
            extra={
                "peer": request.remote_addr,
                "status": rejection.status,
                "reason": rejection.reason,
            },
        )
    response = Response(rejection.message + "\n", status=rejection.status, mimetype="text/plain")
    response.headers.update(rejection.headers)
    return response


def _channels(environ: Mapping[str, Any]) -> tuple[list[str], dict[str, Since]] | Rejection:
    """The channels asked for at connect (``?channels=``) and the resume points (``?since=``).

    ``since`` keeps its meaning for the default channel (the last value counts, as it always
    did) and takes one ``<channel>@<epoch>:<seq>`` item per named channel, each of which must
    be in ``channels``. Anything malformed is a 400 naming it.
    """
    values = request.args.getlist(CHANNELS_PARAM)
    since_values = request.args.getlist(SINCE_PARAM)
    try:
        names = parse_channels(",".join(values)) if values else []
    except ValueError as exc:
        return Rejection(400, f"Bad Request: {CHANNELS_PARAM}: {exc}", "channels")
    try:
        points = parse_since(since_values[-1]) if since_values else {}
    except ValueError as exc:
        text = str(exc) if str(exc).startswith(SINCE_PARAM) else f"{SINCE_PARAM}: {exc}"
        return Rejection(400, f"Bad Request: {text}", "since")
    stray = [name for name in points if name and name not in names]
    if stray:
        return Rejection(400, f"Bad Request: since names {stray[0]!r}, not in channels", "since")
    return names, points


def _unavailable(message: str, reason: str, retry_after: float = 1.0) -> Rejection:
    seconds = str(max(1, math.ceil(retry_after)))
    return Rejection(503, f"Service Unavailable: {message}", reason, {"Retry-After": seconds})


def _checks(state: SidecarState, environ: Mapping[str, Any]) -> Identity | Rejection:
    """Every check of the request itself; the identity it is admitted as."""
    rejection = check_upgrade(environ) or check_headers(environ)
    rejection = rejection or check_origin(environ, state.origins)
    if rejection:
        return rejection
    identity = state.access.identify(environ)
    if isinstance(identity, Rejection):
        return identity
    offered = offered_subprotocols(environ)
    if offered and SUBPROTOCOL not in offered:
        return Rejection(400, f"Bad Request: offer the {SUBPROTOCOL} subprotocol", "subprotocol")
    if not any(isinstance(environ.get(key), socket.socket) for key in SOCKET_KEYS):
        return Rejection(
            501,
            "Not Implemented: this WSGI server does not expose its socket "
            "(use the sidecar CLI, Werkzeug or gunicorn -k gthread)",
            "server",
        )
    return identity


def _requests(
    state: SidecarState, identity: Identity, names: list[str], points: dict[str, Since]
) -> tuple[list[ChannelRequest], list[Event]]:
    """What a connection joins and the ``channel:error`` notices of what it may not.

    The default channel (unless the app keeps it from this identity), the channels its
    identity is granted (its own ``user:`` channel first; not counted against the limit),
    then ``names`` it may join now, up to the per-connection limit.
    """
    access, limit = state.access, state.config.max_channels
    requests = []
    if access.joins_default(identity):
        requests.append(ChannelRequest(DEFAULT_CHANNEL, points.get(DEFAULT_CHANNEL)))
    granted = identity.granted()
    requests += [ChannelRequest(name, points.get(name)) for name in granted]
    notices, asked = [], 0
    for name in names:
        if name in granted:
            continue
        code = access.check(identity, name)
        if code is not None:
            notices.append(channel_error(name, code, f"not allowed to join {name}"))
        elif asked >= limit:
            message = f"at most {limit} channels per connection"
            notices.append(channel_error(name, ChannelErrorCode.LIMIT, message))
        else:
            asked += 1
            requests.append(ChannelRequest(name, points.get(name)))
    return requests, notices


def _plan(
    state: SidecarState, requests: list[ChannelRequest], peer: str
) -> list[ChannelRequest] | Rejection:
    """``requests`` completed by resume planning, or a 503 (replay budget, broker)."""
    hub, broker, config = state.hub, state.broker, state.config
    try:
        requests = resume.locate(hub, broker, requests)
        cost = sum(resume.replay_cost(hub, r, config.history_size) for r in requests)
        wait = state.replays.retry_after(peer, cost) if cost > SMALL_REPLAY else 0.0
        if wait > 0:
            return _unavailable("too many replays; resume later", "replay-rate", wait)
        limits = resume.Limits(config.history_size, config.max_pending_bytes)
        return resume.fill(hub, broker, requests, limits)
    except BrokerUnavailable:
        return _unavailable("the broker is unreachable; resume later", "broker")


def admit(state: SidecarState, environ: Mapping[str, Any]) -> Admission | Rejection:
    """Every check for an upgrade request, cheapest first; a session slot if admitted."""
    identity = _checks(state, environ)
    if isinstance(identity, Rejection):
        return identity
    asked = _channels(environ)
    if isinstance(asked, Rejection):
        return asked
    if state.stopping is not None or not state.hub.is_running():
        return _unavailable("shutting down; connect again later", state.stopping or "stopping")
    peer = request.remote_addr or "?"
    requests, notices = _requests(state, identity, *asked)
    planned = _plan(state, requests, peer)
    if isinstance(planned, Rejection):
        return planned
    if not state.sessions.try_enter():
        return _unavailable("too many connections", "capacity")
    key = next(key for key in SOCKET_KEYS if isinstance(environ.get(key), socket.socket))
    sock: socket.socket = environ[key]
    config = state.config
    conn = Connection(
        sock, write_deadline=config.write_deadline, max_message_size=config.max_message_size
    )
    options = {
        "subprotocols": [SUBPROTOCOL],
        "receive_bytes": RECEIVE_BYTES,
        "ping_interval": None,  # keepalive is the hub thread's job
        "max_message_size": config.max_message_size,  # coarse: it counts characters
        "thread_class": conn.reader_thread,
        "event_class": conn.wakeup_event,
    }
    remote = f"{peer}:{environ.get('REMOTE_PORT', '?')}"
    return Admission(conn, identity, tuple(planned), tuple(notices), remote, options)


class ServerOptions(Mapping[str, Any]):
    """``SOCK_SERVER_OPTIONS`` as flask-sock reads it, per request.

    On the hub's endpoints: our subprotocol, limit, no library pings, and this request's
    reader thread and wake-up event. Elsewhere (an app's own flask-sock routes): the options
    the app had set before, unchanged.
    """

    def __init__(self, previous: Mapping[str, Any] | None) -> None:
        if isinstance(previous, ServerOptions):  # never read through g outside a request
            previous = previous.previous
        self.previous: dict[str, Any] = dict(previous or {})

    def _current(self) -> Mapping[str, Any]:
        admission = g.get("sidecar_session")
        return self.previous if admission is None else admission.options

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def envelope_handler(state: SidecarState, dispatch: EventHandler | None) -> MessageHandler:
    """The ``/ws`` message policy: JSON envelopes go to ``dispatch``; binary closes with 1003.

    ``channel:*`` messages are the hub's (:class:`~sidecar.web.channels.ChannelMessages`);
    other reserved types (``connection:*``) are logged and ignored. Malformed JSON, and JSON
    that is not an object with a string ``type``, is logged (at most one line per client and
    interval) and ignored, as in the Go original. Called once per session.
    """
    return _EnvelopePolicy(state, dispatch)


class _EnvelopePolicy:
    """:func:`envelope_handler`'s handler: one small object per session (no closures)."""

    __slots__ = ("channels", "dispatch", "state")

    def __init__(self, state: SidecarState, dispatch: EventHandler | None) -> None:
        self.state = state
        self.dispatch = dispatch
        self.channels = ChannelMessages(state, time.monotonic)

    def complain(self, client: Client, kind: str, text: str) -> None:
        suppressed = self.state.log_limit.check((client.id, kind))
        if suppressed is not None:
            more = f" ({suppressed} more not logged)" if suppressed else ""
            log.warning(
                "client %s sent %s (ignored)%s",
                client.id,
                text,
                more,
                extra={"client": client.id, "reason": kind},
            )

    def __call__(self, client: Client, message: str | bytes) -> None:
        if isinstance(message, bytes | bytearray):
            raise Close(CloseCode.UNSUPPORTED_DATA, "binary messages are not supported")
        try:
            event = json.loads(message)
        except ValueError as exc:
            self.complain(client, "malformed", f"malformed JSON: {exc}")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.complain(client, "not-envelope", "JSON that is not an event envelope")
            return
        namespace = event["type"].partition(":")[0]
        if namespace == "channel":
            self.channels.handle(client, event)
            return
        if namespace in RESERVED_NAMESPACES:
            self.complain(client, "reserved", f"{printable_type(event['type'])} (the hub's own)")
            return
        if self.dispatch is None:
            what = f"{printable_type(event['type'])} (no message handler)"
            self.complain(client, "unhandled", what)
            return
        self.dispatch(client, event)


def printable_type(name: str) -> str:
    """An event type for a log line (quoted, escaped, at most 64 characters)."""
    return repr(name[:64])


def run_session(
    state: SidecarState,
    admission: Admission,
    source: MessageSource,
    on_message: MessageHandler,
    *,
    greet: bool = True,
) -> None:
    """One WebSocket session from registration to a finished closing handshake."""
    hub, conn = state.hub, admission.conn
    conn.attach(source)
    client = Client(conn, state.config, remote=admission.remote, identity=admission.identity)
    log.info(
        "client %s connected from %s",
        client.id,
        client.remote,
        extra={"client": client.id, "peer": client.remote},
    )
    try:
        requests = admission.requests if greet else admission.requests[:1]
        if hub.register(client, greet=greet, requests=requests, notices=admission.notices):
            client.read_loop(on_message)
        else:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
    except Exception:  # our own bug: close with 1011 and say so, never a traceback on the wire
        log.exception("session of client %s failed: closing with 1011", client.id)
        conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        hub.unregister(client)
        ended_by = client.ended_by or conn.ended_by()  # before finish() sends its own close
        client.finish(state.config.close_timeout)
        state.sessions.count_end(ended_by)
        for kind in ("malformed", "not-envelope", "unhandled", "reserved"):
            if suppressed := state.log_limit.pop((client.id, kind)):
                log.warning(
                    "client %s: %d more %s messages were not logged", client.id, suppressed, kind
                )
        log.info(
            "client %s disconnected (%s)",
            client.id,
            ended_by,
            extra={"client": client.id, "reason": ended_by},
        )


def ws_blueprint(
    state: SidecarState,
    name: str,
    path: str,
    on_message: Callable[[], MessageHandler],
    *,
    greet: bool = True,
    guard: Callable[[], Response | None] | None = None,
) -> Blueprint:
    """A blueprint serving a WebSocket endpoint at ``path`` with the sidecar's machinery.

    ``on_message`` returns the current message handler (looked up per session, so that a
    handler set after the app was built applies); ``guard`` runs first (the Host check).
    """
    bp = Blueprint(name, __name__)
    sock = Sock()
    endpoint = f"{name}.websocket"

    @bp.before_request
    def guard_upgrade() -> Response | None:
        if guard is not None and (response := guard()) is not None:
            return response
        if request.endpoint != endpoint:
            return None
        result = admit(state, request.environ)
        if isinstance(result, Rejection):
            return reject(state, result, handshake=True)
        g.sidecar_session = result  # from here on, teardown gives the slot back
        _hand_over(state, request.environ, result)
        return None

    @bp.errorhandler(ProtocolError)
    @bp.errorhandler(ValueError)
    def refused_by_the_library(exc: Exception) -> Response:
        # simple-websocket's Server refused a head our checks let through: wsproto raised
        # before a byte of the 101 was written (a malformed request, a bad extension offer
        # such as server_max_window_bits=abc). A plain 400, never Flask's 500 page. (Our own
        # code does not raise these here: the session catches everything it raises.)
        detail = f"Bad Request: malformed WebSocket handshake ({exc})"
        return reject(state, Rejection(400, detail[:200], "handshake"), handshake=True)

    @bp.teardown_request
    def give_slot_back(_exc: BaseException | None) -> None:
        if g.pop("sidecar_session", None) is not None:
            state.sessions.leave()

    @bp.route(path, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    def plain() -> Response:
        rejection = check_upgrade(request.environ) or Rejection(
            400, "Bad Request: malformed WebSocket upgrade", "upgrade"
        )
        return reject(state, rejection, handshake=True)

    @sock.route(path, bp=bp, endpoint="websocket")
    def websocket(ws: MessageSource) -> None:
        run_session(state, g.sidecar_session, ws, on_message(), greet=greet)

    return bp


def _hand_over(state: SidecarState, environ: dict[str, Any], admission: Admission) -> None:
    """Prepare the environ for simple-websocket: our socket, no timeout, no deflate offer."""
    key = next(key for key in SOCKET_KEYS if isinstance(environ.get(key), socket.socket))
    raw: socket.socket = environ[key]
    raw.settimeout(None)  # the request deadline ends here; idle WebSockets live on
    upgraded = environ.get("sidecar.upgraded")
    if callable(upgraded):
        upgraded()  # the server's request watchdog lets this connection go
    if not state.config.compression:
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    environ[key] = admission.conn.socket
