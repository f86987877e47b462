"""Helpers for the scale-out tests: real gunicorn with N workers, HTTP calls, WebSocket clients.

Every wait has a deadline. A :class:`Gunicorn` writes its log to a file (no pipe can fill
up) and is always stopped by :meth:`Gunicorn.close`. Main test thread only, except
:func:`post_events`, which publisher threads call.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket

from tests.conftest import TOKEN, recv_json, wait_for
from tests.redis_server import free_port
from tests.test_process import _env

WAIT = 20.0  # generous: two shared cores, several processes starting at once


def call(
    port: int, method: str, path: str, body: Any = None, *, token: str | None = TOKEN
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a new connection (so gunicorn may hand it to any worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post_events(port: int, events: list[dict[str, Any]]) -> list[int]:
    """POST a batch; its seqs (the answer must be 202)."""
    status, _headers, body = call(port, "POST", "/api/v1/events", events)
    assert status == 202, (status, body)
    return list(json.loads(body)["seqs"])


def tick(tag: str, n: int) -> dict[str, Any]:
    """One app-specific event, identified by ``tag`` and ``n``."""
    return {"type": "test:tick", "payload": {"id": f"{tag}-{n}"}}


def connect(port: int, query: str = "", timeout: float = 10.0) -> tuple[Any, dict[str, Any]]:
    """A WebSocket client and its ``connection:status`` payload."""
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/ws{query}",
        header=[f"Authorization: Bearer {TOKEN}"],
        timeout=timeout,
        suppress_origin=True,
    )
    status = recv_json(ws)
    assert status["type"] == "connection:status", status
    return ws, status["payload"]


class Gunicorn:
    """``gunicorn -c python:sidecar.gunicorn_conf`` on a free port, its log in ``log_dir``
    (``app``: the WSGI app, the sidecar's by default; pass ``--chdir`` in ``args`` for one
    in another folder)."""

    def __init__(
        self,
        log_dir: Path,
        *args: str,
        workers: int = 1,
        env: dict[str, str] | None = None,
        app: str = "sidecar.wsgi:create_app()",
    ) -> None:
        self.port = free_port()  # gunicorn cannot bind port 0 and tell us which it got
        self.workers = workers
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        command = [sys.executable, "-m", "gunicorn", "-c", "python:sidecar.gunicorn_conf"]
        command += ["--bind", f"127.0.0.1:{self.port}", "-w", str(workers), "--threads", "48"]
        command += [*args, app]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(**{"SIDECAR_TOKEN": TOKEN, "SIDECAR_PING_INTERVAL": "0", **(env or {})}),
            )

    def log(self) -> str:
        """Everything gunicorn and the workers wrote so far."""
        return self.log_path.read_text(errors="replace")

    def snapshots(
        self, ready: Callable[[dict[int, dict[str, Any]]], bool] | None = None
    ) -> dict[int, dict[str, Any]]:
        """``/api/v1/hub`` of every worker, by pid: requests until each of ``workers`` pids
        answered (newest answer kept) and ``ready`` holds for them all."""
        seen: dict[int, dict[str, Any]] = {}

        def poll() -> bool:
            assert self.process.poll() is None, self.log()
            try:
                status, _headers, body = call(self.port, "GET", "/api/v1/hub")
            except OSError:
                return False
            if status == 200:
                answer = json.loads(body)
                seen[answer["pid"]] = answer
            live = len(seen) >= self.workers
            return live and (ready is None or ready(seen))

        wait_for(poll, WAIT)
        return seen

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def close(self) -> None:
        """Stop it, whatever state it is in."""
        self.stop()


def read_until(ws: Any, last_seq: int, timeout: float = WAIT) -> list[tuple[int, str]]:
    """Read broadcasts until ``last_seq``: ``(seq, payload id)`` of each, in arrival order."""
    ws.settimeout(timeout)
    got: list[tuple[int, str]] = []
    while not got or got[-1][0] < last_seq:
        event = recv_json(ws)
        if "seq" in event:
            got.append((event["seq"], event["payload"].get("id", "")))
    return got


def close_all(clients: list[Any]) -> None:
    """Close test clients without waiting long for each."""
    for ws in clients:
        try:
            ws.close(timeout=0.2)
        except Exception:
            pass
