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

Every wait has a deadline. Threads: each served sidecar runs its server thread
(``sidecar-test-http``) and the threads of :mod:`sidecar.server`; a client lives on the
test's thread.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .core.hub import Hub
    from .server import Server
    from .web.state import SidecarState


class ServedSidecar:
    """A sidecar serving in this process (what ``sidecar_server`` returns)."""

    def __init__(self, server: Server, state: SidecarState) -> None:
        self.server = server
        self.state = state
        state.ensure_started()  # the hub thread runs before the test does anything
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
        config = app.extensions["sidecar"].config.with_options(**options, **bind)
    server, state = make_server(config, app)
    return ServedSidecar(server, state)


class SidecarClient:
    """One WebSocket client of a served sidecar (what ``sidecar_client`` returns)."""

    def __init__(self, server: ServedSidecar, since: str | None = None, timeout: float = 5.0):
        import websocket

        query = f"?since={since}" if since else ""
        headers = [f"Authorization: Bearer {server.token}"] if server.token else []
        self.ws = websocket.create_connection(
            server.ws_url + query, header=headers, timeout=timeout, suppress_origin=True
        )
        first = self._receive(time.monotonic() + timeout)
        if first.get("type") != "connection:status":
            raise AssertionError(f"the first frame is not connection:status: {first}")
        #: The ``connection:status`` payload: ``{status, epoch, seq, recovered}``.
        self.status: dict[str, Any] = first["payload"]

    def _receive(self, deadline: float) -> dict[str, Any]:
        import websocket

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no event before the deadline")
        self.ws.settimeout(remaining)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise TimeoutError("no event before the deadline") from None
        event: dict[str, Any] = json.loads(text)
        return event

    def next(self, type: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next event (skipping others when ``type`` is given); ``TimeoutError`` if none."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._receive(deadline)
            if type is None or event.get("type") == type:
                return event

    def collect(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``n`` events, within ``timeout`` in all."""
        deadline = time.monotonic() + timeout
        return [self._receive(deadline) for _ in range(n)]

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
