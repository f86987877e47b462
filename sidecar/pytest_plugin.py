"""A pytest plugin for apps that use the hub: real sockets, no mocks (entry point ``pytest11``).

Two fixtures, both factories, both cleaned up at teardown:

* ``sidecar_server(app=None, **options)`` serves ``app`` (a Flask app with an
  :class:`~sidecar.EventHub`), or the sidecar's own app built from ``options``, on
  ``127.0.0.1`` port 0 in the test process. It returns a :class:`ServedSidecar` with ``.url``,
  ``.ws_url``, ``.token`` and ``.hub``. At teardown every client gets close 1001 and every
  thread the server started is joined.
* ``sidecar_client(server, channels=(), since=None, timeout=5.0, reconnect=False)`` returns
  a connected :class:`SidecarClient` (a :class:`sidecar.client.Subscriber`, which needs
  websocket-client: the ``client`` extra) with ``.status`` (the ``connection:status``
  payload, ``status["channels"]`` for named channels), ``.next(type=None, timeout=5.0,
  channel=…)``, ``.collect(n, timeout=5.0)``, ``.subscribe(channel, since=None)``,
  ``.unsubscribe(channel)``, ``.send(type, payload)`` and ``.close()``. ``next(type)`` keeps
  the events of other types it passes over for later calls, in order; its ``TimeoutError``
  names the type; once the server has closed the connection, ``next`` and ``collect`` raise
  :class:`ServerClosed` with the close code.

One server per app: an app (its hub) already served, or whose hub was stopped with an earlier
server, is refused with a ``RuntimeError`` saying so, instead of a second server whose stop
stops the first one's hub.

Every wait has a deadline. Threads: each served sidecar runs its server thread
(``sidecar-test-http``) and the threads of :mod:`sidecar.server`; each client, its
subscriber's I/O thread (``sidecar-test-client``); the test calls them from its own thread.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from .protocol import (
    CHANNEL_ERROR,
    CHANNEL_SUBSCRIBED,
    CHANNEL_UNSUBSCRIBED,
    CONNECTION_STATUS,
    CloseCode,
)

if TYPE_CHECKING:
    from flask import Flask

    from .client import SubscriberClosed
    from .core.hub import Hub
    from .server import Server
    from .web.state import SidecarState


#: ``next(channel=…)``'s default: any channel.
ANY = "*"
#: The server of each app state being served (one at a time: see :func:`serve`).
_SERVING: weakref.WeakKeyDictionary[Any, ServedSidecar] = weakref.WeakKeyDictionary()


class ServerClosed(ConnectionError):
    """The server closed the connection: ``code`` (``None`` without a close frame), ``reason``."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        shown = "without a close frame" if code is None else f"with {code} {reason}".rstrip()
        super().__init__(f"the sidecar closed the connection {shown}")
        self.code = code
        self.reason = reason


class ServedSidecar:
    """A sidecar serving in this process (what ``sidecar_server`` returns)."""

    def __init__(self, server: Server, state: SidecarState) -> None:
        self.server = server
        self.state = state
        state.ensure_started()  # the hub thread runs before the test does anything
        _SERVING[state] = self
        self.thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sidecar-test-http",
            daemon=True,
        )
        self.thread.start()

    @property
    def port(self) -> int:
        """The ephemeral port it listens on."""
        return self.server.server_port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/ws``."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def token(self) -> str | None:
        """The token clients must present (``None`` with auth off)."""
        return self.state.token

    @property
    def hub(self) -> Hub:
        """The app's hub (broadcast from the test with ``server.hub.broadcast_event``)."""
        return self.state.hub

    def stop(self, timeout: float = 5.0) -> None:
        """Close every client with 1001, wait for their sessions, stop serving; idempotent.

        A client that does not answer the close frame holds its session for the close
        timeout (3 s by default), not longer.
        """
        from .server import shutdown

        if not self.thread.is_alive():
            return
        if _SERVING.get(self.state) is self:
            del _SERVING[self.state]
        shutdown(self.server, self.state, grace=min(2.0, timeout))
        self.state.sessions.wait_idle(timeout)
        self.thread.join(timeout)


def serve(app: Flask | None = None, **options: Any) -> ServedSidecar:
    """Serve ``app`` (or the sidecar's app from ``options``) on 127.0.0.1, port 0."""
    from .config import Config
    from .server import make_server
    from .web.extension import create_app

    bind = {"host": "127.0.0.1", "port": 0}
    if app is None:
        if options.get("auth", True) and not options.get("token"):
            options["token"] = secrets.token_urlsafe(16)
        config = Config(**{**options, **bind})
        app = create_app(config)
    else:
        _check_servable(app)
        config = app.extensions["sidecar"].config.with_options(**options, **bind)
    server, state = make_server(config, app)
    return ServedSidecar(server, state)


def _check_servable(app: Flask) -> None:
    """Refuse an app without a hub, one already served, or one whose hub was stopped.

    Two servers of one app share its hub: stopping either (a test's teardown) stopped the
    other's hub too, and a hub once stopped stays stopped.
    """
    state = app.extensions.get("sidecar")
    if state is None:
        raise ValueError("the app has no EventHub: EventHub(app) or hub.init_app(app) first")
    served = _SERVING.get(state)
    if served is not None and served.thread.is_alive():
        raise RuntimeError(
            f"this app is already served at {served.url}: one server per app (stopping a "
            "server stops the app's hub); build a second app for a second server"
        )
    if state.hub.closed:
        raise RuntimeError(
            "this app's hub was stopped (with an earlier server, or by hub.stop()): a hub does "
            "not start again; build a new app for each server"
        )


class SidecarClient:
    """One WebSocket client of a served sidecar (what ``sidecar_client`` returns), built on
    :class:`sidecar.client.Subscriber`: connected and greeted when returned, with the
    subscriber's dedupe, channel positions and keepalive.

    By default it does not reconnect: a test sees a close as a close (:meth:`next` then
    raises :class:`~sidecar.client.SubscriberClosed` with the close code, once the events that
    came before are taken). ``reconnect=True`` makes it behave like a page: it reconnects and
    resumes every channel by itself.
    """

    def __init__(
        self,
        server: ServedSidecar,
        channels: Iterable[str] = (),
        since: str | None = None,
        timeout: float = 5.0,
        reconnect: bool = False,
    ) -> None:
        from .client import Subscriber

        #: The underlying subscriber (``.positions()``, ``.stats``, ``.state`` …).
        self.subscriber = Subscriber(
            server.ws_url,
            token=server.token,
            channels=channels,
            since=since,
            reconnect=reconnect,
            connect_timeout=timeout,
            name="sidecar-test-client",
        )
        try:
            self.subscriber.wait_open(timeout)
            self.subscriber.next(CONNECTION_STATUS, timeout=timeout)
        except BaseException:
            self.subscriber.close()
            raise

    @property
    def status(self) -> dict[str, Any]:
        """The last ``connection:status`` payload: ``{status, epoch, seq, recovered}``, and
        ``channels`` (each named channel's ``{epoch, seq, recovered}``) when it named any."""
        status = self.subscriber.status
        assert status is not None
        return status

    def next(
        self, type: str | None = None, timeout: float = 5.0, *, channel: str | None = ANY
    ) -> dict[str, Any]:
        """The next event (of ``type``, and of ``channel`` if given: ``None`` is the default
        channel), as the envelope dict. Events of other types are kept for later calls.

        ``TimeoutError`` names what it waited for (and what was kept); once the server has
        closed the connection (and the events before the close are taken),
        :class:`ServerClosed` with the close code.
        """
        from .client import SubscriberClosed

        try:
            return self.subscriber.next(type, channel=channel, timeout=timeout).to_dict()
        except SubscriberClosed as exc:
            raise _server_closed(exc) from None

    def collect(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``n`` events (those kept back by ``next(type)`` first), within
        ``timeout`` in all."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        try:
            while len(got) < n:
                got.append(self.next(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            raise TimeoutError(f"{len(got)} of {n} events within {timeout:g} s") from None
        return got

    def send(self, type: str, payload: dict[str, Any]) -> None:
        """Send a client→server event ``{type, payload}``; ``ConnectionError`` if not open."""
        if not self.subscriber.send(type, payload):
            raise ConnectionError(f"not sent: the connection is {self.subscriber.state}")

    def subscribe(
        self, channel: str, since: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Join ``channel`` (resuming from ``since``, ``<epoch>:<seq>``) and wait for the hub:
        the ``channel:subscribed`` payload ``{channel, epoch, seq, recovered}``. Raises
        :class:`~sidecar.client.ChannelRefused` (with the ``channel:error``) if refused."""
        from .client import ChannelRefused

        sub = self.subscriber
        try:
            sub.subscribe(channel, since=since, wait=timeout)
        except ChannelRefused:
            sub.next(CHANNEL_ERROR, match=_about(channel), timeout=timeout)
            raise
        return sub.next(CHANNEL_SUBSCRIBED, match=_about(channel), timeout=timeout).payload

    def unsubscribe(self, channel: str, timeout: float = 5.0) -> None:
        """Leave ``channel`` and wait for the hub's ``channel:unsubscribed``."""
        if self.subscriber.unsubscribe(channel):
            self.subscriber.next(CHANNEL_UNSUBSCRIBED, match=_about(channel), timeout=timeout)

    def close(self) -> None:
        """Close the connection (1000); idempotent."""
        self.subscriber.close()


def _server_closed(exc: SubscriberClosed) -> ServerClosed | SubscriberClosed:
    """The subscriber's end as the plugin says it: :class:`ServerClosed` for a close by the
    server (code ``None`` when the connection ended without a close frame)."""
    if exc.code is None:
        return exc  # refused, or closed by the test itself: as it is
    code = None if exc.code == CloseCode.ABNORMAL else exc.code
    reason = exc.reason.split(f"{exc.code}", 1)[-1].strip()
    return ServerClosed(code, reason)


def _about(channel: str) -> Callable[[Any], bool]:
    return lambda event: event.payload.get("channel") == channel


T = TypeVar("T")


def managed(make: Callable[..., T], finish: Callable[[T], object]) -> Iterator[Callable[..., T]]:
    """A factory fixture's body: yield ``make``, then ``finish`` everything it made, in order."""
    made: list[T] = []

    def factory(*args: Any, **kwargs: Any) -> T:
        item = make(*args, **kwargs)
        made.append(item)
        return item

    yield factory
    for item in made:
        finish(item)


@pytest.fixture
def sidecar_server() -> Iterator[Callable[..., ServedSidecar]]:
    """Factory: ``sidecar_server(app=None, **options)`` → a :class:`ServedSidecar`."""
    yield from managed(serve, ServedSidecar.stop)


@pytest.fixture
def sidecar_client() -> Iterator[Callable[..., SidecarClient]]:
    """Factory: ``sidecar_client(server, channels=(), since=None, timeout=5.0,
    reconnect=False)`` → a connected :class:`SidecarClient`."""
    yield from managed(SidecarClient, SidecarClient.close)
