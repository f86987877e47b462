"""Stopping the pytest plugin's in-process server (what ``sidecar_server`` does at teardown).

``sidecar_server`` has no child process: it serves in the test's process and stops by closing
every client with 1001. This runs in the Windows leg too, where a shutdown wakes no thread
blocked on a socket (:data:`sidecar.platform.SHUTDOWN_WAKES_READERS`).
"""

from __future__ import annotations

import logging
import time

import pytest
import websocket

from sidecar.pytest_plugin import serve
from tests.conftest import recv_close, recv_json, wait_for
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
    served.stop()
    for ws in clients:
        assert recv_close(ws) == 1001
        ws.close()
    assert not served.thread.is_alive()


def test_a_client_that_never_answers_the_close_costs_the_close_timeout_and_no_alarm(
    caplog: pytest.LogCaptureFixture,
):
    """On Windows the session used to wait one more second for a reader that only the
    server's close of the socket can wake, and to log that it was still running."""
    served = serve(close_timeout=CLOSE_TIMEOUT)
    silent = RawWS.connect(served.port, token=served.token)  # reads nothing, answers nothing
    try:
        wait_for(lambda: served.state.sessions.active == 1)
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
