"""Stopping the pytest plugin's in-process server (what ``sidecar_server`` does at teardown).

``sidecar_server`` has no child process: it serves in the test's process and stops by closing
every client with 1001. This runs in the Windows leg too, where a shutdown wakes no thread
blocked on a socket (:data:`sidecar.platform.SHUTDOWN_WAKES_READERS`).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import websocket

from sidecar.pytest_plugin import serve
from tests.conftest import recv_close, recv_json
from tests.rawws import RawWS

CLOSE_TIMEOUT = 0.5


def test_stop_closes_every_client_with_1001():
    served = serve()
    clients = [
        websocket.create_connection(
            served.ws_url,
            header=[f"Authorization: Bearer {served.token}"],
            timeout=5,
            suppress_origin=True,
        )
        for _ in range(2)
    ]
    for ws in clients:
        assert recv_json(ws)["type"] == "connection:status"
    codes: list[int | None] = []

    def answer(ws: websocket.WebSocket) -> None:  # as a browser does: close answered, TCP closed
        codes.append(recv_close(ws))
        ws.send_close()
        ws.shutdown()

    readers = [threading.Thread(target=answer, args=(ws,)) for ws in clients]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    served.stop()
    assert time.monotonic() - started < 2  # no session waited for its close timeout
    for reader in readers:
        reader.join(5)
    assert codes == [1001, 1001]
    assert served.state.sessions.active == 0 and not served.thread.is_alive()


def test_a_client_that_never_answers_the_close_costs_the_close_timeout_and_no_alarm(
    caplog: pytest.LogCaptureFixture,
):
    """On Windows the session used to wait one more second for a reader that only the
    server's close of the socket can wake, and to log that it was still running."""
    served = serve(close_timeout=CLOSE_TIMEOUT)
    silent = RawWS.connect(served.port, token=served.token)
    try:
        greeting = silent.read_frame()  # registered with the hub; from here on it is silent
        assert greeting is not None and b"connection:status" in greeting.payload
        started = time.monotonic()
        served.stop()
        elapsed = time.monotonic() - started
        assert elapsed < CLOSE_TIMEOUT + 2, elapsed  # the close timeout, not a wait per client
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [w for w in warnings if "still running" in w], warnings
        assert silent.read_close(timeout=5, reply=False) == 1001
        silent.read_eof(timeout=5)  # and the server closed the connection
    finally:
        silent.sock.close()
