"""The hub as a Flask extension (:class:`EventHub`), and the sidecar's own app (:func:`create_app`).

``EventHub(app)`` (or ``EventHub()`` then ``init_app(app)`` in a factory) adds ``/ws`` (served
by flask-sock), the publish API under ``/api/v1`` and ``/client/…`` to an existing Flask app,
each behind the Host guard, without touching the app's other routes. Options come from
keyword arguments, then ``app.config["SIDECAR_…"]``, then ``SIDECAR_…`` variables
(:func:`sidecar.config.load`). A hub without a token refuses to start unless ``auth=False``.

The per-app state lives in ``app.extensions["sidecar"]`` (a :class:`SidecarState`); the
extension object keeps no app. Its methods find the state through ``current_app`` inside an
app context, or use the one app it was initialised on (outside a context, e.g. in a worker
thread of yours). The hub thread (and a broker's relay) start in the serving process on the
first request or publish, never before a fork: gunicorn ``--preload`` works.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, has_app_context, request

from .. import logs
from ..config import Config, ConfigError, load, resolve_token
from ..core.client import Client, MessageHandler
from ..core.hub import Hub, PublishRefused
from ..core.identity import Authorize
from ..envelope import EventLike
from ..protocol import PublishedSeqs, check_channel, check_user, personal_channel
from .access import Authenticate
from .api import api_blueprint, metrics_blueprint
from .guards import Rejection, check_host, redact
from .gunicorn_worker import current_worker, prepare_process, split_problem
from .health import NAME as HEALTH
from .health import health_blueprint
from .pages import pages_blueprint
from .session import EventHandler, ServerOptions, envelope_handler, reject, ws_blueprint
from .state import NotServing, SidecarState

log = logging.getLogger("sidecar")


class _UpgradeHeaders:
    """WSGI middleware: optional whitespace around ``Upgrade``/``Connection`` values removed.

    RFC 7230 3.2.4 says it is not part of the value, but Werkzeug's router compares
    ``Upgrade`` verbatim to decide whether a request is a WebSocket one, so ``websocket ``
    would reach the plain route. Only requests for the hub's WebSocket paths are touched.
    """

    def __init__(self, app: Callable[..., Any], paths: set[str]) -> None:
        self.app = app
        self.paths = paths  # the state's set: routes added later count too

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") in self.paths:
            for key in ("HTTP_UPGRADE", "HTTP_CONNECTION"):
                if key in environ:
                    environ[key] = environ[key].strip(" \t")
        return self.app(environ, start_response)


class _Redact(logging.Filter):
    """Removes token values from the servers' log lines (:data:`SERVER_LOGGERS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: The servers' loggers whose lines may show a request target: Werkzeug's access log, and
#: gunicorn's access and error logs (``Invalid request from …``, ``Error handling request``),
#: with or without ``sidecar.gunicorn_conf``.
SERVER_LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error")


def _install_redaction() -> None:
    for name in SERVER_LOGGERS:
        server_log = logging.getLogger(name)
        if not any(isinstance(f, _Redact) for f in server_log.filters):
            server_log.addFilter(_Redact())


#: Where an :class:`EventHub` serves ``/metrics`` unless told: under its API prefix.
METRICS_UNDER_API = "{api_prefix}/metrics"


@dataclass(frozen=True)
class Routes:
    """Where :class:`EventHub` puts its routes."""

    ws_path: str
    api_prefix: str
    debug_page: str | None
    metrics_path: str | None
    guard_all_routes: bool
    health_path: str | None = None


class EventHub:
    """The sidecar's WebSocket event hub for a Flask app (``from sidecar import EventHub``).

    ``EventHub(app, token="…")`` or ``EventHub(**options)`` + ``init_app(app)``. ``options``
    are :class:`~sidecar.config.Config` fields (``queue_size=…``, ``broker="redis://…"``).
    ``ws_path`` and ``api_prefix`` place the routes; ``debug_page`` (a path, default none)
    serves the debug page; ``metrics_path`` serves Prometheus metrics (the ``metrics`` extra;
    token required) at ``/api/v1/metrics`` by default, under the hub's own prefix so that it
    never takes an app's ``/metrics`` (``None``: none; the sidecar's own app: ``/metrics``);
    ``health_path`` (default none; the sidecar's own app: ``/health``) serves liveness at it
    and at ``<path>/live``, readiness at ``<path>/ready`` (:mod:`sidecar.web.health`);
    ``guard_all_routes`` applies the Host guard to every route of the app (the sidecar's own
    app does), not only the hub's.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: Config | None = None,
        hub: Hub | None = None,
        ws_path: str = "/ws",
        api_prefix: str = "/api/v1",
        debug_page: str | None = None,
        metrics_path: str | None = METRICS_UNDER_API,
        guard_all_routes: bool = False,
        health_path: str | None = None,
        default_channel: bool = True,
        **options: Any,
    ) -> None:
        self._config = config
        self._hub = hub
        self._options = options
        self._default_channel = default_channel
        self._authenticate: Authenticate | None = None
        self._authorize: Authorize | None = None
        #: Where the hub's routes go, and whether the Host guard covers the whole app.
        if metrics_path is not None:
            metrics_path = metrics_path.format(api_prefix=api_prefix.rstrip("/"))
        self.routes = Routes(
            ws_path, api_prefix, debug_page, metrics_path, guard_all_routes, health_path
        )
        self._handler: EventHandler | None = None
        self._states: list[weakref.ReferenceType[SidecarState]] = []
        if app is not None:
            self.init_app(app)

    # -- setup -----------------------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        """Add the hub's routes to ``app``; raises :class:`~sidecar.config.ConfigError`.

        Once per app: a second call (from this extension or another) raises ``RuntimeError``
        and changes nothing; every check runs before the app is touched.
        """
        if "sidecar" in app.extensions:
            raise RuntimeError(
                f"the app {app.name!r} already has an EventHub (init_app was called on it "
                "before): one hub per app, initialised once"
            )
        config = self._config.with_options(**self._options) if self._config else None
        config = config or load(self._options, app_config=app.config)
        config = resolve_token(config, generate=False)
        if (problem := split_problem(config, current_worker())) is not None:
            raise ConfigError("--broker", problem)  # the worker fails to boot: gunicorn stops
        logs.hide(config.token)  # scrubbed from every line logged through sidecar.logs
        prepare_process()
        broker = _broker(config)
        hub = self._hub or Hub(config, autostart=True, sequencer=broker)
        state = SidecarState(config, hub, broker=broker)
        state.extension = self
        self._apply_hooks(state)
        state.access.bind_secret(app.secret_key)
        app.extensions["sidecar"] = state
        guard = self._guard(state)
        if self.routes.guard_all_routes:
            app.before_request(guard)
        route_guard = None if self.routes.guard_all_routes else guard
        app.config["SOCK_SERVER_OPTIONS"] = ServerOptions(app.config.get("SOCK_SERVER_OPTIONS"))
        app.wsgi_app = _UpgradeHeaders(app.wsgi_app, state.ws_paths)  # type: ignore[method-assign]
        add_websocket_route(
            app,
            "sidecar_ws",
            self.routes.ws_path,
            lambda: envelope_handler(state, self._handler),
            guard=route_guard,
        )
        app.register_blueprint(api_blueprint(state, self.routes.api_prefix, guard=route_guard))
        app.register_blueprint(
            pages_blueprint(state, debug_page=self.routes.debug_page, guard=route_guard)
        )
        if self.routes.metrics_path:
            metrics = metrics_blueprint(state, self.routes.metrics_path, guard=route_guard)
            app.register_blueprint(metrics)
        if self.routes.health_path:
            app.register_blueprint(
                health_blueprint(state, self.routes.health_path, guard=route_guard)
            )
        _install_redaction()
        if not config.auth:
            log.warning(
                "auth is off: any local process or web page on an allowed origin can connect"
            )
        # apps that are gone leave the list (a suite creates hundreds on one extension)
        self._states = [ref for ref in self._states if ref() is not None]
        self._states.append(weakref.ref(state))

    def _guard(self, state: SidecarState) -> Callable[[], Response | None]:
        ws_endpoint = "sidecar_ws.websocket"

        def guard_host() -> Response | None:
            try:
                if request.blueprint != HEALTH:  # liveness never starts anything
                    state.ensure_started()
            except NotServing as exc:  # a gunicorn worker among several, without a broker
                rejection: Rejection | None = Rejection(
                    503, f"Service Unavailable: {exc}", "not-serving", {"Retry-After": "60"}
                )
            except PublishRefused as exc:  # the broker: retried on the next request
                rejection = Rejection(
                    503, f"Service Unavailable: {exc}", "broker", {"Retry-After": "1"}
                )
            else:
                rejection = check_host(request.environ, state.hosts)
            if rejection is None:
                return None
            return reject(state, rejection, handshake=request.endpoint == ws_endpoint)

        return guard_host

    # -- identity ----------------------------------------------------------------------------
    def authenticate(self, fn: Authenticate) -> Authenticate:
        """Decorator: ``fn(request) -> Identity | None`` identifies each WebSocket request that
        does not present the shared token, before the ``101`` (``None``: 401). It runs on the
        request thread, in the request's context: it can read the session cookie, Flask-Login's
        ``current_user`` or a bearer header."""
        self._authenticate = fn
        self._each_state(self._apply_hooks)
        return fn

    def authorize(self, fn: Authorize) -> Authorize:
        """Decorator: ``fn(identity, channel) -> bool`` decides, at connect and at each
        ``channel:subscribe``, whether ``identity`` may join ``channel`` (after the built-in
        rules: superusers join anything, ``user:<id>`` is only that user's, an identity's own
        ``channels`` are granted). Only ``True`` admits; without it, nothing else is."""
        self._authorize = fn
        self._each_state(self._apply_hooks)
        return fn

    def _apply_hooks(self, state: SidecarState) -> None:
        state.access.authenticate = self._authenticate
        state.access.authorize = self._authorize
        state.access.default_channel = self._default_channel

    def _each_state(self, fn: Callable[[SidecarState], None]) -> None:
        for ref in self._states:
            state = ref()
            if state is not None:
                fn(state)

    def send_to_user(self, user: str, event: EventLike) -> bool:
        """Publish ``event`` on ``user:<user>``: every tab and window of that user, on every
        worker, sequenced and recoverable (see :meth:`broadcast_event`)."""
        return self.hub.broadcast_event(event, personal_channel(user))

    def revoke(self, user: str, channel: str) -> None:
        """Take ``user``'s connections off ``channel`` (``channel:unsubscribed`` with reason
        ``revoked``), on every worker, and refuse subscription tokens issued for it before
        now. Raises :class:`~sidecar.protocol.PublishRefused` when it cannot be done."""
        self.hub.revoke(check_user(user), check_channel(channel))

    def subscription_token(self, user: str, channels: Iterable[str], ttl: float = 300) -> str:
        """A token granting ``user`` the ``channels`` for ``ttl`` seconds (at most 3600), to
        present in ``channel:subscribe {channel, token}``. Signed with a key derived from the
        app's ``SECRET_KEY`` (or, without one, the shared token)."""
        tokens = self.state.access.tokens()
        if tokens is None:
            raise RuntimeError("subscription tokens need the app's SECRET_KEY (or a token)")
        return tokens.issue(user, channels, ttl)

    def position(self, channel: str | None = None) -> tuple[str, int]:
        """``(epoch, seq)`` of ``channel`` now (see :meth:`Hub.position`)."""
        return tuple(self.hub.position(channel))  # type: ignore[return-value]

    # -- the state of the app in use ---------------------------------------------------------
    @property
    def state(self) -> SidecarState:
        """The state of the current app (inside an app context) or of the only app."""
        if has_app_context():
            state = current_app.extensions.get("sidecar")
            if isinstance(state, SidecarState):
                return state
        live = [s for ref in self._states if (s := ref()) is not None]
        if len(live) == 1:
            return live[0]
        raise RuntimeError(
            "EventHub is not initialised on an app"
            if not live
            else "EventHub serves several apps: call it inside an app context"
        )

    @property
    def hub(self) -> Hub:
        """The :class:`~sidecar.core.hub.Hub` of the app in use (started on first use).

        When its broker cannot be reached yet, the hub is returned unstarted: its publishing
        methods then refuse (``False``, or :class:`~sidecar.core.hub.PublishRefused`), and the
        start is tried again on the next use.
        """
        state = self.state
        try:
            state.ensure_started()
        except PublishRefused as exc:
            if state.log_limit.check("broker-start") is not None:
                log.warning("hub not started: %s", exc)
        return state.hub

    # -- the hub's API -------------------------------------------------------------------------
    def broadcast_event(self, event: EventLike, channel: str | None = None) -> bool:
        """Broadcast one event on ``channel`` (default: every client; see
        :meth:`Hub.broadcast_event`)."""
        return self.hub.broadcast_event(event, channel)

    def broadcast(self, data: bytes | str, channel: str | None = None) -> bool:
        """Broadcast a pre-encoded envelope (see :meth:`Hub.broadcast`)."""
        return self.hub.broadcast(data, channel)

    def broadcast_many(self, events: Iterable[EventLike], channel: str | None = None) -> int:
        """Broadcast several events as one batch, all or none (see :meth:`Hub.broadcast_many`)."""
        return self.hub.broadcast_many(events, channel)

    def publish(
        self,
        events: Sequence[EventLike],
        channel: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> PublishedSeqs:
        """Broadcast events on ``channel`` and return their ``seq`` numbers in it, at most
        once per ``idempotency_key`` (see :meth:`Hub.publish`)."""
        return self.hub.publish(events, channel, idempotency_key=idempotency_key)

    def send_to_client(self, client: Client, event: EventLike) -> bool:
        """Send one event to one client, without ``seq`` (see :meth:`Hub.send_to_client`)."""
        return self.hub.send_to_client(client, event)

    def client_count(self) -> int:
        """Connected clients."""
        return self.hub.client_count()

    def snapshot(self) -> dict[str, Any]:
        """The hub's counters (see :meth:`Hub.snapshot`)."""
        return self.hub.snapshot()

    def set_message_handler(self, handler: EventHandler | None) -> None:
        """Set the function that gets client→server events: ``fn(client, event)``.

        It runs on the connection's request thread; it may answer with
        :meth:`send_to_client`. Without one, client events are logged at debug level.
        """
        self._handler = handler

    def on_message(self, handler: EventHandler) -> EventHandler:
        """Decorator form of :meth:`set_message_handler`."""
        self._handler = handler
        return handler

    def stop(self, timeout: float = 2.0) -> bool:
        """Close every client with 1001 and stop the hub; whether it ended in time."""
        state = self.state
        if state.broker is not None:
            state.broker.stop()
        return state.hub.stop(timeout=timeout)


def add_websocket_route(
    app: Flask, name: str, path: str, on_message: Callable[[], MessageHandler], **options: Any
) -> None:
    """Serve another WebSocket endpoint at ``path`` on the app's hub, with every guard of
    ``/ws``. ``on_message`` returns the handler for each new session; ``options`` are
    :func:`~sidecar.web.session.ws_blueprint`'s (``greet=False``: no ``connection:status``;
    ``guard``).
    """
    state: SidecarState = app.extensions["sidecar"]
    state.ws_paths.add(path)
    app.register_blueprint(ws_blueprint(state, name, path, on_message, **options))


def _broker(config: Config) -> Any:
    """The broker for ``config.broker`` (imported only when one is configured)."""
    if not config.broker:
        return None
    try:
        from ..broker.redis import RedisBroker
    except ImportError as exc:
        raise ConfigError("--broker", f"cannot be used: {exc}") from None
    try:
        return RedisBroker(
            config.broker,
            prefix=config.broker_prefix,
            history_size=config.history_size,
            max_event_bytes=config.max_event_bytes,
            channel_ttl=config.channel_ttl,
        )
    except ValueError as exc:  # what the driver refuses in a URL (a query value, a db)
        raise ConfigError("--broker", f"cannot be used: {exc}") from None


def create_app(config: Config | None = None, hub: Hub | None = None, **options: Any) -> Flask:
    """The sidecar's own app: the hub, ``/health`` (``/live``, ``/ready``), ``/metrics`` and
    the debug page at ``/``.

    ``config`` (or keyword options, or ``SIDECAR_*`` variables) must give a token, or turn
    auth off. The Host guard covers every route; Flask's default static route is off.
    """
    app = Flask("sidecar", static_folder=None)
    EventHub(
        app,
        config=config,
        hub=hub,
        debug_page="/",
        metrics_path="/metrics",
        health_path="/health",
        guard_all_routes=True,
        **options,
    )
    return app
