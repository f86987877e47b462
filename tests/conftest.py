"""Shared fixtures: an in-process sidecar on an ephemeral port, and WebSocket test clients.

Every server binds 127.0.0.1:0 and is shut down (clients closed with 1001) at teardown.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from sidecar.config import Config
from sidecar.pytest_plugin import ServedSidecar, managed
from sidecar.server import Server, make_server
from sidecar.web.state import SidecarState

TOKEN = "test-token-0123456789"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        threading.Event().wait(interval)


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    """Receive one text frame and decode it."""
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got opcode {opcode}"
    return json.loads(data)


def recv_close(ws: websocket.WebSocket, timeout: float = 5.0) -> int | None:
    """Read until a close frame arrives; return its code (None on EOF without close)."""
    ws.settimeout(timeout)
    try:
        while True:
            frame = ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return None


class RunningSidecar(ServedSidecar):
    """A sidecar serving in this process, with raw websocket-client helpers for the tests."""

    def __init__(self, server: Server, state: SidecarState) -> None:
        super().__init__(server, state)
        self.clients: list[websocket.WebSocket] = []

    @property
    def sidecar(self) -> SidecarState:
        return self.state

    def connect(
        self,
        query: str = "",
        *,
        token: str | bool | None = True,
        origin: str | None = None,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> websocket.WebSocket:
        """Open a WebSocket (bearer token by default; ``token=None`` sends none)."""
        headers = list(kwargs.pop("header", []))
        if token is True:
            token = self.token
        if token:
            headers.append(f"Authorization: Bearer {token}")
        ws = websocket.create_connection(
            self.ws_url + query,
            header=headers,
            timeout=timeout,
            origin=origin,
            suppress_origin=origin is None,
            **kwargs,
        )
        self.clients.append(ws)
        return ws

    def connect_ready(self, query: str = "", **kwargs: Any) -> tuple[websocket.WebSocket, dict]:
        """Connect and read the ``connection:status`` frame; return both."""
        ws = self.connect(query, **kwargs)
        status = recv_json(ws)
        assert status["type"] == "connection:status", status
        return ws, status

    def set_message_handler(self, handler: Any) -> None:
        """Set the app's client→server message handler (the EventHub's)."""
        self.state.extension.set_message_handler(handler)

    def close(self) -> None:
        """Close the test's clients and stop the server (clients get 1001); idempotent."""
        if not self.thread.is_alive():
            return
        for ws in self.clients:
            try:
                ws.close(timeout=0.2)
            except Exception:
                pass
        self.stop()


def start_sidecar(app: Any = None, **overrides: Any) -> RunningSidecar:
    """Serve ``app`` (or the sidecar's app with ``Config`` overrides) on 127.0.0.1:0."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "token": TOKEN}
    options.update(overrides)
    config = Config(**options)
    server, state = make_server(config, app)
    return RunningSidecar(server, state)


@pytest.fixture
def sidecar_factory() -> Iterator[Callable[..., RunningSidecar]]:
    """Start sidecars with ``Config`` overrides; all are stopped at teardown."""
    yield from managed(start_sidecar, RunningSidecar.close)


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A started ``redis-server`` (tests/redis_server.py) that loses its data on restart."""
    from tests.redis_server import running  # redis is imported by the tests that use it only

    yield from running()


@pytest.fixture
def persistent_redis() -> Iterator[Any]:
    """A started ``redis-server`` with the append-only file on: a restart keeps the data."""
    from tests.redis_server import running

    yield from running(persistent=True)


@pytest.fixture(scope="session")
def npm_consumer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The npm package packed and installed into a scratch Vite + TypeScript app, built
    (``tests/npm_consumer.py``); once per session."""
    from tests.npm_consumer import build

    return build(tmp_path_factory.mktemp("npm-consumer"))


@pytest.fixture
def sidecar(sidecar_factory: Callable[..., RunningSidecar]) -> RunningSidecar:
    """A sidecar with default settings (token auth on, token ``TOKEN``)."""
    return sidecar_factory()


# -- the OS a test needs -----------------------------------------------------------------
# ``@pytest.mark.posix_only("why")``: the test exercises a POSIX mechanism (signals, fork,
# rlimits, MSG_DONTWAIT …). On Windows (the Windows leg under Wine, a windows-* runner) it is
# reported as skipped with that reason, never dropped silently. ``windows_only("why")`` is the
# converse: a Windows path that only a Windows Python can run.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "posix_only(reason): needs POSIX; skipped on Windows")
    config.addinivalue_line("markers", "windows_only(reason): needs Windows; skipped elsewhere")


def pytest_runtest_setup(item: pytest.Item) -> None:
    on_windows = sys.platform == "win32"
    for name, skip in (("posix_only", on_windows), ("windows_only", not on_windows)):
        marker = item.get_closest_marker(name)
        if marker is None:
            continue
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @{name} needs a reason")
        if skip:
            where = "POSIX" if name == "posix_only" else "Windows"
            pytest.skip(f"{where} only: {reason}")


#: Longest parameter shown in a test's ID. pytest puts the ID in ``PYTEST_CURRENT_TEST``, and
#: Windows refuses an environment variable over 32,767 characters (a 100,000-byte fuzz value).
MAX_ID_PARAM = 40


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """A long string or bytes parameter is shown by its start and length, not in full."""
    if isinstance(val, str | bytes) and len(val) > MAX_ID_PARAM:
        start = val[:24] if isinstance(val, str) else val[:24].decode("ascii", "backslashreplace")
        return f"{start}...({len(val)})"
    return None
