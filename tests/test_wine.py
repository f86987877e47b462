"""A Windows sidecar (``python.exe -m sidecar`` on Windows CPython under Wine) driven from Linux.

What a desktop app on Windows does with it: read the ready line, connect, publish, stop it by
closing its stdin (the graceful stop there; a parent's signal is ``TerminateProcess``), have it
follow its parent (``--parent-pid``: ``OpenProcess`` + ``WaitForSingleObject``), and read the
one JSON error line when it cannot start. The launcher that starts it is the Linux
:class:`~sidecar.launcher.SidecarProcess` with the stdin stop. See :mod:`tests.wine`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from sidecar.launcher import SidecarProcess
from tests import wine
from tests.conftest import TOKEN, recv_close, recv_json

EVENT = {"type": "stream:created", "payload": {"projectId": "p", "streamId": "s", "name": "n"}}
ARGS = ("-m", "sidecar", "--port", "0", "--ping-interval", "0")


@pytest.fixture(scope="module")
def wine_env() -> Iterator[dict[str, str]]:
    """A Wine session for the module; the environment of its programs (with the token)."""
    for env in wine.session():
        env = {k: v for k, v in env.items() if not k.startswith("SIDECAR_")}
        yield {**env, "SIDECAR_TOKEN": TOKEN}


def _windows_sidecar(env: dict[str, str], *args: str) -> SidecarProcess:
    return SidecarProcess(
        wine.python(*ARGS, "--exit-on-stdin-eof", *args),
        env=env,
        same_package=False,  # the Windows site has the checkout (a .pth file)
        graceful="stdin",
        stdin=subprocess.PIPE,
    )


def _connect(ready: dict[str, Any]) -> websocket.WebSocket:
    ws = websocket.create_connection(
        ready["ws"], header=[f"Authorization: Bearer {TOKEN}"], timeout=10, suppress_origin=True
    )
    status = recv_json(ws)
    assert status["type"] == "connection:status", status
    return ws


def _publish(ready: dict[str, Any], body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        ready["url"] + "/api/v1/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_windows_sidecar_serves_publishes_and_stops_on_stdin_eof(wine_env):
    with _windows_sidecar(wine_env) as child:
        ready = child.ready
        assert ready["event"] == "ready" and ready["url"] == f"http://127.0.0.1:{ready['port']}"
        clients = [_connect(ready) for _ in range(2)]
        assert _publish(ready, EVENT) == 202
        for ws in clients:
            event = recv_json(ws)
            assert (event["type"], event["payload"], event["seq"]) == (
                EVENT["type"],
                EVENT["payload"],
                1,
            )
    # stop(): stdin closed (the launcher's graceful stop for a Windows child)
    for ws in clients:
        assert recv_close(ws, timeout=10) == 1001
    assert (child.returncode, child.killed) == (0, False)
    assert child.tracebacks() == [] and child.error_lines() == []
    assert "stdin closed, shutting down" in child.log_text()


def test_a_windows_sidecar_follows_its_parent(wine_env):
    parent = subprocess.Popen(
        wine.python("-c", "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=wine_env,
        text=True,
    )
    try:
        assert parent.stdout is not None
        windows_pid = parent.stdout.readline().strip()
        assert windows_pid.isdigit(), windows_pid
        with _windows_sidecar(wine_env, "--parent-pid", windows_pid) as child:
            ws = _connect(child.ready)
            parent.kill()  # a crash: no stdin EOF of its own, only the process's end
            parent.wait(10)
            died = time.monotonic()
            assert recv_close(ws, timeout=10) == 1001
            assert child.wait(10) == 0
            assert time.monotonic() - died < 5
        assert "parent process" in child.log_text()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()


def test_a_port_in_use_is_one_json_error_line(wine_env):
    with _windows_sidecar(wine_env) as first:
        port = str(first.port)
        result = subprocess.run(
            wine.python(*ARGS, "--port", port),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=wine_env,
            timeout=60,
        )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert json.loads(lines[0]) == {
        "event": "error",
        "error": "port-in-use",
        "message": f"127.0.0.1:{port} is in use",
    }
    assert result.returncode == 3
    assert result.stderr.replace("\r\n", "\n").count("\n") == 1, result.stderr  # no traceback


def test_the_windows_python_is_the_one_under_test(wine_env):
    out = subprocess.run(
        wine.python("-c", "import sys, sidecar; print(sys.platform, sidecar.__file__)"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=wine_env,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[0] == "win32"
    assert (
        out[1].lower() == wine.tools().windows_path(wine.ROOT / "sidecar" / "__init__.py").lower()
    )
    assert os.path.isfile(wine.tools().python_exe())
