"""The threaded WSGI deployment: real gunicorn (gthread, one worker) serving the sidecar."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import websocket

from tests.conftest import TOKEN, recv_close, recv_json, wait_for
from tests.needs import needs_module
from tests.test_process import _env

needs_module("gunicorn", "pip install '.[gunicorn]'")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gunicorn(port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:sidecar.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--threads",
            "16",
            *extra,
            "sidecar.wsgi:create_app()",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**{"SIDECAR_TOKEN": TOKEN, **(env or {})}),
    )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_gunicorn_serves_publishes_and_closes_with_1001_on_sigterm():
    port = _free_port()
    server = _gunicorn(port)
    try:
        wait_for(lambda: _healthy(port) or server.poll() is not None, timeout=20)
        assert server.poll() is None, server.stderr.read()
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/ws",
            header=[f"Authorization: Bearer {TOKEN}"],
            timeout=5,
        )
        assert recv_json(ws)["type"] == "connection:status"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/events",
            method="POST",
            data=json.dumps({"type": "app:hello", "payload": {"n": 1}}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        event = recv_json(ws)
        assert (event["type"], event["seq"]) == ("app:hello", 1)
        server.send_signal(signal.SIGTERM)
        assert recv_close(ws) == 1001
        ws.send_close()  # the closing handshake, then TCP close, as a browser does
        ws.shutdown()
        assert server.wait(10) == 0
        log = server.communicate(timeout=5)[1]
        assert "Traceback" not in log and "[ERROR]" not in log, log
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=5)


def test_gunicorn_refuses_more_than_one_worker():
    server = _gunicorn(_free_port(), "-w", "2")
    _, err = server.communicate(timeout=20)
    assert server.returncode != 0
    assert "refusing to start with 2 worker processes" in err


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"SIDECAR_AUTH": ""}, "sidecar: SIDECAR_AUTH is empty"),
        ({"SIDECAR_TOKEN": ""}, "sidecar: SIDECAR_TOKEN is empty"),
        ({"SIDECAR_BROKER": "localhost:6379"}, "sidecar: SIDECAR_BROKER must be a Redis URL"),
        ({"SIDECAR_THREADS": ""}, "sidecar: SIDECAR_THREADS is empty"),
        ({"SIDECAR_WORKERS": "two"}, "sidecar: SIDECAR_WORKERS must be a whole number"),
    ],
    ids=["auth", "token", "broker", "threads", "workers"],
)
def test_gunicorn_refuses_an_empty_or_unusable_setting_with_one_line(
    env: dict[str, str], line: str
) -> None:
    """Issue 19 items 2 and 13: ``SIDECAR_AUTH=`` served without a token; a broker URL
    without a scheme was a traceback in the master."""
    server = _gunicorn(_free_port(), env=env)
    _, err = server.communicate(timeout=20)
    assert server.returncode != 0, err
    ours = [text for text in err.splitlines() if text.startswith("sidecar:")]
    assert len(ours) == 1 and ours[0].startswith(line), err
    assert "Traceback" not in err and "Booting worker" not in err, err
