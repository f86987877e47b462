"""Smoke tests against the frozen executable that ``scripts/build-binary`` makes.

One build per test run (see :mod:`tests.frozen`: cached by a hash of the sources; under
``CI=true`` a build that cannot be made fails these tests, elsewhere they are skipped with the
reason). ``SIDECAR_BINARY_ONEFILE=1`` tests the one-file build instead of the one-folder one.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import websocket

from tests.conftest import recv_close, recv_json
from tests.frozen import ONEFILE, built_binary

EVENT = {"type": "stream:created", "payload": {"projectId": "p", "streamId": "s", "name": "n"}}
#: websocket-client options: a deadline on every read, and no Origin (a native client).
WS_OPTIONS: dict[str, Any] = {"timeout": 5, "suppress_origin": True}


@pytest.fixture(scope="session")
def binary() -> Path:
    """The executable from ``scripts/build-binary``."""
    return built_binary()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}


class Frozen:
    """The binary running as a child process, and its ready line."""

    def __init__(self, binary: Path, *args: str, **popen: Any) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "--port", "0", "--ping-interval", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            **popen,
        )
        self.stderr: queue.Queue[str] = _drain(self.proc.stderr)
        lines = _drain(self.proc.stdout)
        try:
            self.ready: dict[str, Any] = json.loads(lines.get(timeout=30))
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("no ready line within 30 s") from None

    def connect(self) -> websocket.WebSocket:
        """A WebSocket with the bearer token; its first frame (``connection:status``) read."""
        bearer = f"Authorization: Bearer {self.ready['token']}"
        ws = websocket.create_connection(self.ready["ws"], header=[bearer], **WS_OPTIONS)
        status = recv_json(ws)
        assert status["type"] == "connection:status", status
        return ws

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """GET, or POST ``body`` as JSON, with the bearer token; returns (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.ready["url"] + path, data=data)
        request.add_header("Authorization", f"Bearer {self.ready['token']}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _drain(stream: IO[str] | None) -> queue.Queue[str]:
    """Read ``stream`` on a daemon thread (a pipe nobody reads would block the child)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert stream is not None
        for line in stream:
            lines.put(line)
        stream.close()

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.fixture
def frozen(binary: Path) -> Iterator[type[Frozen]]:
    """Start the binary (``frozen(*args)``); every one is killed at teardown."""
    started: list[Frozen] = []

    class Tracked(Frozen):
        def __init__(self, *args: str, **popen: Any) -> None:
            super().__init__(binary, *args, **popen)
            started.append(self)

    yield Tracked
    for child in started:
        child.stop()


def _exits(proc: subprocess.Popen[str], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the binary was still running after {timeout} s") from None


def test_ready_line_then_connect_publish_and_receive(frozen):
    child = frozen()
    ready = child.ready
    assert ready["event"] == "ready"
    assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
    assert ready["ws"] == f"ws://127.0.0.1:{ready['port']}/ws"
    assert len(ready["token"]) >= 32
    if not ONEFILE:  # a one-file build is a bootloader whose child prints the line
        assert ready["pid"] == child.proc.pid
    ws = child.connect()
    status, _ = child.request("/api/v1/events", EVENT)
    assert status == 202
    event = recv_json(ws)
    assert (event["type"], event["payload"]) == (EVENT["type"], EVENT["payload"])
    assert event["seq"] == 1


def test_the_bundled_client_files_are_served(frozen):
    child = frozen()
    status, body = child.request("/client/sidecar-client.js")
    assert status == 200
    assert b"SidecarClient" in body


@pytest.mark.posix_only("Windows has no SIGTERM to send")
def test_sigterm_closes_clients_with_1001_and_exits_0(frozen):
    child = frozen()
    ws = child.connect()
    child.proc.send_signal(signal.SIGTERM)
    assert recv_close(ws) == 1001
    ws.send_close()
    ws.shutdown()
    assert _exits(child.proc, 5) == 0


def test_stdin_eof_stops_it_gracefully(frozen):
    child = frozen("--exit-on-stdin-eof", stdin=subprocess.PIPE)
    ws = child.connect()
    assert child.proc.stdin is not None
    child.proc.stdin.close()
    assert recv_close(ws) == 1001
    ws.shutdown()
    assert _exits(child.proc, 5) == 0


def test_parent_death_stops_it(frozen):
    helper = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        child = frozen("--parent-pid", str(helper.pid))
        ws = child.connect()
        helper.kill()
        helper.wait(5)
        killed = time.monotonic()
        assert recv_close(ws, timeout=4) == 1001
        ws.shutdown()
        assert _exits(child.proc, 5) == 0
        assert time.monotonic() - killed < 3
    finally:
        if helper.poll() is None:
            helper.kill()
        helper.wait(5)
        if helper.stdin:
            helper.stdin.close()
