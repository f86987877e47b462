"""An app with an ``EventHub`` under real gunicorn, with and without ``sidecar.gunicorn_conf``.

Issue 19's gunicorn traps, each made to work or refused with one clear line:

* ``-w 2`` without a broker and without our config split the hub silently (each client saw
  only its worker's events): now the workers fail to boot and gunicorn stops (with
  ``--preload``: every hub request 503, naming the cause);
* ``--threads 32``: the 33rd WebSocket hung, and ``/health`` and publishes waited until
  sessions left: sessions are capped below the thread count (503 with ``Retry-After``), with
  a warning when ``--max-clients`` is higher;
* without our config, SIGTERM took gunicorn's 30 s graceful timeout and clients got no close
  frame: they get 1001 at once;
* ``?token=`` in gunicorn's access log (the README's command with ``--access-logfile``) and
  error log: redacted;
* gunicorn workers did not cap the allocator's arenas (499 MiB against the CLI's 97 MiB for the
  same load): they do, counted with glibc's ``malloc_info``;
* like the CLI, a worker keeps long-lived objects out of full garbage collections (issue 24).

The app is ``tests/gunicorn_app.py``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websocket

from sidecar.launcher import PACKAGE_ROOT
from sidecar.platform import glibc_version
from sidecar.web.gunicorn_worker import current_worker, session_cap
from tests.conftest import TOKEN, recv_close, recv_json, wait_for
from tests.needs import needs_module
from tests.test_process import _env

needs_module("gunicorn", "pip install '.[gunicorn]'")

APP = "tests.gunicorn_app:create_app()"
OUR_CONFIG = ("-c", "python:sidecar.gunicorn_conf")
#: The README's command for an EventHub app, without our config (and 8 threads).
PLAIN = ("-k", "gthread", "--threads", "8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``gunicorn *args tests.gunicorn_app:create_app()`` on a free port; its log in a file."""

    def __init__(self, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        command = [sys.executable, "-m", "gunicorn", *args, "--bind", f"127.0.0.1:{self.port}"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*command, APP],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PACKAGE_ROOT,
                env=_env(**{"SIDECAR_TOKEN": TOKEN, "SIDECAR_PING_INTERVAL": "0", **(env or {})}),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0, method: str = "GET") -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.log()
        try:
            return self.get("/health", timeout=1.0)[0] == 200
        except OSError:
            return False

    def ready(self) -> Served:
        wait_for(self.healthy, timeout=20)
        return self

    def connect(self, query: str = "", *, bearer: bool = True) -> websocket.WebSocket:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/ws{query}",
            header=[f"Authorization: Bearer {TOKEN}"] if bearer else [],
            timeout=5,
            suppress_origin=True,
        )
        assert recv_json(ws)["type"] == "connection:status"
        return ws

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, **options: Any) -> Served:
        started.append(Served(tmp_path, *args, **options))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def _handshake_status(served: Served, query: str = "", *, bearer: bool = True) -> int:
    try:
        served.connect(query, bearer=bearer).close()
    except websocket.WebSocketBadStatusException as exc:
        return int(exc.status_code)
    return 101


# -- no silent split ---------------------------------------------------------------------------


def test_plain_gunicorn_with_two_workers_and_no_broker_stops_instead_of_splitting(
    serve: Callable[..., Served],
) -> None:
    served = serve(*PLAIN, "-w", "2")
    code = served.process.wait(20)  # it started and served 202s before, each worker a hub
    log = served.log()
    assert code != 0, log
    assert "--broker is required with 2 gunicorn worker processes" in log, log


def test_with_preload_every_worker_refuses_the_hub_and_says_why(
    serve: Callable[..., Served],
) -> None:
    """The app is loaded in the master, before the workers exist: they refuse at first use."""
    served = serve(*PLAIN, "-w", "2", "--preload").ready()
    statuses = {_handshake_status(served) for _ in range(6)}
    assert statuses == {503}, statuses
    assert {served.get("/broadcast", method="POST")[0] for _ in range(6)} == {503}
    status, headers = served.get("/api/v1/hub")
    assert status == 503 and headers["Retry-After"]
    assert {served.get("/hub-health/ready")[0] for _ in range(6)} == {503}  # never ready
    log = served.log()
    assert "sidecar: --broker is required with 2 gunicorn worker processes" in log, log


# -- the thread budget -------------------------------------------------------------------------


@pytest.mark.parametrize("config", [PLAIN, (*OUR_CONFIG, "--threads", "8")], ids=["plain", "ours"])
def test_sessions_are_capped_below_the_threads_and_http_stays_answered(
    serve: Callable[..., Served], config: tuple[str, ...]
) -> None:
    """8 threads: 6 WebSockets, then 503 with Retry-After; /health still answers at once."""
    served = serve(*config, "-w", "1", env={"SIDECAR_MAX_CLIENTS": "100"}).ready()
    held = [served.connect() for _ in range(6)]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            served.connect()
        assert refused.value.status_code == 503
        assert (refused.value.resp_headers or {})["retry-after"]
        started = time.monotonic()
        assert served.get("/health", timeout=2.0)[0] == 200
        assert served.get("/broadcast", timeout=2.0, method="POST")[0] == 202
        assert time.monotonic() - started < 2.0
        for ws in held:
            assert recv_json(ws)["type"] == "app:broadcast"
    finally:
        for ws in held:
            ws.close()
    log = served.log()
    assert "--max-clients 100 is more than this worker's threads allow: at most 6" in log, log


# -- a graceful stop without our config ----------------------------------------------------------


def test_sigterm_closes_every_client_with_1001_at_once_without_our_config(
    serve: Callable[..., Served],
) -> None:
    served = serve(*PLAIN, "-w", "1").ready()
    clients = [served.connect() for _ in range(3)]
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    assert [recv_close(ws, timeout=3.0) for ws in clients] == [1001] * 3
    for ws in clients:
        ws.close()
    assert served.process.wait(10) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"SIGTERM took {elapsed:.1f} s (gunicorn's graceful timeout is 30 s)"
    assert "Traceback" not in served.log()


# -- the token in gunicorn's logs ----------------------------------------------------------------


@pytest.mark.parametrize("config", [PLAIN, OUR_CONFIG], ids=["plain", "ours"])
def test_the_token_never_shows_in_gunicorns_access_or_error_log(
    serve: Callable[..., Served], config: tuple[str, ...]
) -> None:
    served = serve(
        *config, "-w", "1", "--access-logfile", "-", "--access-logformat", '"%(r)s" %(s)s'
    ).ready()
    served.connect(f"?token={TOKEN}", bearer=False).close()
    assert _handshake_status(served, "?token=wrong-but-secret-0123", bearer=False) == 401
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
        raw.sendall(f"GET /ws?token={TOKEN}\r\n\r\n".encode())  # no version
        raw.recv(4096)  # gunicorn's 400, after its "Invalid request" line in the error log
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(10)
    log = served.log()
    assert "GET /ws?token=[redacted]" in log, log  # the access log is there, redacted
    assert log.count("token=[redacted]") >= 2, log  # and so is the error log's line
    assert TOKEN not in log and "wrong-but-secret" not in log, log


# -- the allocator's arenas ------------------------------------------------------------------------


@pytest.mark.parametrize("config", [PLAIN, OUR_CONFIG], ids=["plain", "ours"])
def test_gunicorn_workers_cap_the_allocators_arenas_as_the_cli_does(
    serve: Callable[..., Served], config: tuple[str, ...]
) -> None:
    if glibc_version() is None:
        pytest.skip("glibc only: other C libraries have no arenas to cap")
    served = serve(*config, "-w", "1").ready()
    with ThreadPoolExecutor(8) as pool:  # the worker's threads busy before any hub request
        assert set(pool.map(lambda _: served.get("/health")[0], range(32))) == {200}
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/arenas", timeout=20) as answer:
        arenas = int(answer.read().decode().split(":")[1].strip(" }\n"))
    assert 0 < arenas <= 2, f"{arenas} malloc arenas after 16 threads allocated"


@pytest.mark.parametrize("config", [PLAIN, OUR_CONFIG], ids=["plain", "ours"])
def test_gunicorn_workers_keep_long_lived_objects_out_of_full_collections(
    serve: Callable[..., Served], config: tuple[str, ...]
) -> None:
    served = serve(*config, "-w", "1").ready()
    served.connect().close()  # the hub runs in this worker now

    def freezes() -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{served.port}/api/v1/hub",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(json.loads(answer.read())["hub"]["gcFreezes"])

    assert wait_for(lambda: freezes() >= 1)  # as the CLI: start-up frozen (gc.freeze)


# -- the rules, without a server -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "sessions"), [(1, 0), (2, 0), (3, 1), (8, 6), (32, 28), (64, 56), (256, 224)]
)
def test_the_sizing_rule_keeps_threads_for_http_requests(threads: int, sessions: int) -> None:
    """The README's rule: sessions <= threads - max(2, threads / 8)."""
    assert session_cap(threads) == sessions


def test_outside_a_gunicorn_worker_nothing_is_adopted() -> None:
    assert current_worker() is None  # pytest's process: no gunicorn worker's SIGTERM handler
