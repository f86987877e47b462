"""Black-box helpers for the hardening tests (issues 11 and 12): a sidecar subprocess, raw HTTP.

The sidecar under test runs as ``python -m sidecar`` in a child process, as a desktop app runs
it, and is spoken to over raw sockets on 127.0.0.1. ``SIDECAR_TREE`` (a directory holding a
``sidecar`` package) picks the code the child imports, so the same tests can be run against
an older checkout to see them fail there::

    SIDECAR_TREE=/tmp/before-tree .venv/bin/python -m pytest tests/test_hardening_http.py

Process gauges read ``/proc/<pid>`` (threads, CPU time, RSS). Every read has a deadline. The
helpers belong to the test thread that calls them.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sidecar.launcher import PACKAGE_ROOT, SidecarProcess, launch
from tests.conftest import TOKEN

#: The code under test (default: this checkout).
TREE = os.environ.get("SIDECAR_TREE") or str(PACKAGE_ROOT)
#: The WebSocket key of RFC 6455's example.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def child_environment(**extra: str) -> dict[str, str]:
    """This environment without ``SIDECAR_*``, importing :data:`TREE`, with the test token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = TREE
    env["SIDECAR_TOKEN"] = TOKEN
    env.update(extra)
    return env


def start(
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    **settings: Any,
) -> SidecarProcess:
    """``python -m sidecar --port 0 --ping-interval 0 *args`` from :data:`TREE`, ready.

    ``settings`` become ``SIDECAR_*`` variables (``handshake_timeout=1`` is
    ``SIDECAR_HANDSHAKE_TIMEOUT=1``): an older checkout that lacks a setting still starts,
    and then fails on the behaviour under test rather than on an unknown flag.
    """
    argv = [sys.executable, "-m", "sidecar", "--port", "0", "--ping-interval", "0", *args]
    env = dict(env or child_environment())
    env.update({f"SIDECAR_{name.upper()}": str(value) for name, value in settings.items()})
    # ``-m`` puts the working directory first on sys.path: run from the tree under test
    return launch(argv, env=env, same_package=False, cwd=TREE, preexec_fn=preexec_fn)


@contextmanager
def running(
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    **settings: Any,
) -> Iterator[SidecarProcess]:
    """A sidecar child for the ``with`` block; stopped (SIGTERM, then SIGKILL) after it."""
    child = start(*args, env=env, preexec_fn=preexec_fn, **settings)
    try:
        yield child
    finally:
        child.stop(timeout=3.0)


def start_failure(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], subprocess.CompletedProcess[str]]:
    """Start ``python -m sidecar *args``, which must fail: its status, JSON line and result.

    Checks the start-up failure contract: exactly one JSON ``error`` line on stdout, one line
    on stderr, no traceback.
    """
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env or child_environment(),
        cwd=TREE,
        timeout=20,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result
    line = json.loads(lines[0])
    assert set(line) == {"event", "error", "message"} and line["event"] == "error", line
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.returncode, line, result


# -- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the server sent back on one connection, and how the connection ended."""

    raw: bytes = b""
    #: ``eof`` (the server closed), ``reset``, ``upgraded`` (a 101 head arrived) or ``timeout``.
    ending: str = "timeout"
    elapsed: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bytes:
        """The reply without the interim ``100 Continue`` responses before it."""
        raw = self.raw
        while raw.startswith(_CONTINUE):
            raw = raw[len(_CONTINUE) :]
        return raw

    @property
    def status(self) -> int:
        """The status of the final response line (0: no response at all)."""
        first = self.final.split(b"\r\n", 1)[0].split(b" ")
        return int(first[1]) if len(first) > 1 and first[0].startswith(b"HTTP/") else 0

    @property
    def statuses(self) -> list[int]:
        """Every status line in the reply (interim ``100 Continue`` ones included)."""
        return [
            int(line.split(b" ")[1])
            for line in self.raw.split(b"\r\n")
            if line.startswith(b"HTTP/1.") and len(line.split(b" ")) > 1
        ]

    @property
    def body(self) -> bytes:
        """What follows the final response head."""
        return self.final.partition(b"\r\n\r\n")[2]

    @property
    def closed(self) -> bool:
        """Whether the server ended the connection."""
        return self.ending in ("eof", "reset")

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def _parse_headers(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    out: dict[str, str] = {}
    for line in head:
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def read_reply(sock: socket.socket, timeout: float, started: float | None = None) -> Reply:
    """Read until EOF, a complete ``101`` head, or ``timeout`` seconds."""
    started = time.monotonic() if started is None else started
    reply = Reply()
    deadline = started + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            reply.ending = "reset"
            break
        if not chunk:
            reply.ending = "eof"
            break
        reply.raw += chunk
        if reply.final.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in reply.final:
            reply.ending = "upgraded"
            break
    reply.elapsed = time.monotonic() - started
    reply.headers = _parse_headers(reply.final)
    return reply


def exchange(port: int, data: bytes, timeout: float = 5.0, source: str | None = None) -> Reply:
    """Send ``data`` on a new connection and read the reply (see :func:`read_reply`).

    ``source`` binds the client end to another loopback address (``127.0.0.2``): the server
    sees another peer (its log rate limits are per peer).
    """
    address = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout, address) as sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
        except OSError:  # the server refused before reading it all: read what it said
            pass
        return read_reply(sock, timeout, started)


def trickle(sock: socket.socket, data: bytes, pace: float, timeout: float) -> Reply:
    """Send ``data`` one byte per ``pace`` seconds until the server answers; its reply.

    The pacing is a wait for the socket to become readable (the server's answer), so the
    loop reacts to the server at once.
    """
    started = time.monotonic()
    for i in range(len(data)):
        try:
            sock.send(data[i : i + 1])
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], pace)
        if readable or time.monotonic() - started > timeout:
            break
    return read_reply(sock, timeout, started)


def upgrade_head(
    port: int,
    path: str = "/ws",
    *,
    token: str | None = TOKEN,
    headers: Iterable[str] = (),
    upgrade: str = "websocket",
    connection: str = "Upgrade",
) -> bytes:
    """A WebSocket upgrade head; ``headers`` are extra raw header lines (without CRLF)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Upgrade: {upgrade}",
        f"Connection: {connection}",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request_head(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    headers: Iterable[str] = (),
) -> bytes:
    """A plain HTTP/1.1 request head; ``headers`` are extra raw header lines."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post_events(port: int, body: bytes, headers: Iterable[str] = (), timeout: float = 5.0) -> Reply:
    """``POST /api/v1/events`` with ``body`` (a correct ``Content-Length`` unless given)."""
    extra = list(headers)
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in extra):
        extra.append(f"Content-Length: {len(body)}")
    head = request_head(port, "POST", "/api/v1/events", headers=extra)
    return exchange(port, head + body, timeout)


def counters(url: str) -> dict[str, Any]:
    """``/api/v1/hub`` of the sidecar at ``url``."""
    request = urllib.request.Request(url + "/api/v1/hub")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.loads(response.read()))


def rejected_handshakes(url: str) -> int:
    """How many handshakes the sidecar has refused, over every reason."""
    return sum(counters(url)["sessions"]["rejectedHandshakes"].values())


# -- process gauges -----------------------------------------------------------------------------


def threads_of(pid: int) -> int:
    """Threads of process ``pid`` now."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no RSS for {pid}")


def cpu_seconds_of(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float = 1.0) -> float:
    """The share of one core process ``pid`` used over the next ``seconds``."""
    before, started = cpu_seconds_of(pid), time.monotonic()
    threading.Event().wait(seconds)  # the measurement window
    return (cpu_seconds_of(pid) - before) / (time.monotonic() - started)
