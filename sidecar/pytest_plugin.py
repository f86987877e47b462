"""A pytest plugin for apps that use the hub: real sockets, no mocks (entry point ``pytest11``).

Two fixtures, both factories, both cleaned up at teardown:

* ``sidecar_server(app=None, **options)`` serves ``app`` (a Flask app with an
  :class:`~sidecar.EventHub`), or the sidecar's own app built from ``options``, on
  ``127.0.0.1`` port 0 in the test process. It returns a :class:`ServedSidecar` with ``.url``,
  ``.ws_url``, ``.token`` and ``.hub``. At teardown every client gets close 1001 and every
  thread the server started is joined.
* ``sidecar_client(server, since=None)`` returns a connected :class:`SidecarClient` (built on
  websocket-client) with ``.status`` (the ``connection:status`` payload), ``.next(type=None,
  timeout=5.0)``, ``.collect(n, timeout=5.0)``, ``.send(type, payload)`` and ``.close()``.
  ``next(type)`` keeps the events of other types it passes over for later calls, in order;
  its ``TimeoutError`` names the type; once the server has closed the connection, ``next`` and
  ``collect`` raise :class:`ServerClosed` with the close code.

One server per app: an app (its hub) already served, or whose hub was stopped with an earlier
server, is refused with a ``RuntimeError`` saying so, instead of a second server whose stop
stops the first one's hub.

Every wait has a deadline. Threads: each served sidecar runs its server thread
(``sidecar-test-http``) and the threads of :mod:`sidecar.server`; a client lives on the
test's thread.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .core.hub import Hub
    from .server import Server
    from .web.state import SidecarState


#: Events a client keeps back for later ``next()``/``collect()`` calls (the oldest go first).
MAX_HELD = 10_000
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
    """One WebSocket client of a served sidecar (what ``sidecar_client`` returns)."""

    def __init__(self, server: ServedSidecar, since: str | None = None, timeout: float = 5.0):
        import websocket

        query = f"?since={since}" if since else ""
        headers = [f"Authorization: Bearer {server.token}"] if server.token else []
        self.ws = websocket.create_connection(
            server.ws_url + query, header=headers, timeout=timeout, suppress_origin=True
        )
        #: Events passed over by ``next(type)``, for later calls (oldest first).
        self._held: deque[dict[str, Any]] = deque(maxlen=MAX_HELD)
        #: The server's close, once it came: every later receive raises it again.
        self._closed: ServerClosed | None = None
        first = self._receive(time.monotonic() + timeout)
        if first.get("type") != "connection:status":
            raise AssertionError(f"the first frame is not connection:status: {first}")
        #: The ``connection:status`` payload: ``{status, epoch, seq, recovered}``.
        self.status: dict[str, Any] = first["payload"]

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next event from the socket; ``TimeoutError`` at ``deadline``, or
        :class:`ServerClosed` once the server has closed the connection."""
        import websocket

        while True:
            if self._closed is not None:
                raise self._closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event before the deadline")
            self.ws.settimeout(remaining)
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise TimeoutError("no event before the deadline") from None
            except (websocket.WebSocketConnectionClosedException, OSError):
                self._closed = ServerClosed(None)
                continue
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                self._closed = ServerClosed(code, data[2:].decode(errors="replace"))
                continue
            if opcode == websocket.ABNF.OPCODE_TEXT:
                event: dict[str, Any] = json.loads(data)
                return event
            if opcode == websocket.ABNF.OPCODE_BINARY:
                raise AssertionError(f"the sidecar sent a binary frame: {data[:100]!r}")

    def next(self, type: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next event, or the next one of ``type``; ``TimeoutError`` naming it if none.

        Events of other types are kept, in order, for later ``next()``/``collect()`` calls.
        """
        for index, event in enumerate(self._held):
            if type is None or event.get("type") == type:
                del self._held[index]
                return event
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._receive(deadline)
            except TimeoutError:
                raise TimeoutError(self._waited_for(type, timeout)) from None
            if type is None or event.get("type") == type:
                return event
            self._held.append(event)

    def _waited_for(self, type: str | None, timeout: float) -> str:
        wanted = "no event" if type is None else f"no {type!r} event"
        if not self._held:
            return f"{wanted} within {timeout:g} s"
        kinds = Counter(str(event.get("type")) for event in self._held)
        others = ", ".join(f"{name} x{n}" for name, n in kinds.most_common(5))
        return f"{wanted} within {timeout:g} s; kept for later calls: {others}"

    def collect(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``n`` events (those kept back by ``next(type)`` first), within ``timeout``."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while self._held and len(got) < n:
            got.append(self._held.popleft())
        try:
            while len(got) < n:
                got.append(self._receive(deadline))
        except TimeoutError:
            raise TimeoutError(f"{len(got)} of {n} events within {timeout:g} s") from None
        return got

    def send(self, type: str, payload: dict[str, Any]) -> None:
        """Send a client→server event ``{type, payload}``."""
        self.ws.send(json.dumps({"type": type, "payload": payload}))

    def close(self) -> None:
        """Close the connection (1000); idempotent."""
        try:
            self.ws.close(timeout=1.0)
        except OSError:
            pass


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
    """Factory: ``sidecar_client(server, since=None)`` → a connected :class:`SidecarClient`."""
    yield from managed(SidecarClient, SidecarClient.close)
