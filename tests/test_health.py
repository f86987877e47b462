"""Liveness, readiness and the drain (``--drain``), as a load balancer and Kubernetes see them.

The drain tests run the sidecar as a child process (``python -m sidecar``) and send it real
signals; the readiness tests read ``/health/ready`` over real sockets. Every wait has a
deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import websocket
from flask import Flask

from sidecar import EventHub
from sidecar.broker.relay import RelayStats
from sidecar.config import Config
from sidecar.core.hub import Hub
from sidecar.server import Server, bind
from sidecar.web.state import SidecarState
from tests.conftest import TOKEN, recv_close, recv_json, wait_for
from tests.hardening import counters, exchange, running, upgrade_head
from tests.needs import needs_module
from tests.test_process import _env


def get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any], Any]:
    """``GET url``: the status, the JSON body and the headers (4xx and 5xx included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), exc.headers


def publish(url: str, payload: dict[str, Any]) -> int:
    body = json.dumps({"type": "app:tick", "payload": payload}).encode()
    request = urllib.request.Request(
        url + "/api/v1/events", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def connect(ws_url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: Bearer {TOKEN}"], timeout=5, suppress_origin=True
    )
    assert recv_json(ws)["type"] == "connection:status"
    return ws


# -- the routes --------------------------------------------------------------------------------


def test_live_its_alias_and_ready_answer_200_without_a_token_or_a_secret(sidecar):
    for path in ("/health", "/health/live"):
        status, body, headers = get(sidecar.url + path)
        assert status == 200 and body["status"] == "ok"
        assert set(body) == {"status", "version", "uptime"}
        assert headers["Cache-Control"] == "no-store"
    status, body, _ = get(sidecar.url + "/health/ready")
    assert (status, body) == (200, {"status": "ready"})
    assert TOKEN not in json.dumps(body)


def test_ready_is_503_stopping_once_the_hub_has_stopped_and_live_stays_200(sidecar):
    sidecar.hub.stop(timeout=5)
    status, body, _ = get(sidecar.url + "/health/ready")
    assert (status, body) == (503, {"status": "unavailable", "reason": "stopping"})
    status, body, _ = get(sidecar.url + "/health/live")
    assert (status, body["status"]) == (200, "stopping")


def test_event_hub_mounts_both_routes_in_an_app_only_when_asked(sidecar_factory):
    plain = Flask("plain")
    EventHub(plain, token=TOKEN)
    assert not any(rule.rule.startswith("/health") for rule in plain.url_map.iter_rules())

    app = Flask("mine")
    EventHub(app, token=TOKEN, health_path="/healthz")
    running_app = sidecar_factory(app)
    assert get(running_app.url + "/healthz")[0] == 200
    assert get(running_app.url + "/healthz/live")[1]["status"] == "ok"
    assert get(running_app.url + "/healthz/ready")[:2] == (200, {"status": "ready"})


def test_a_probe_alone_starts_the_hub_of_a_fresh_app_and_makes_it_ready():
    """A fresh gunicorn worker of an ``EventHub`` app gets probes before any client."""
    app = Flask("fresh")
    hub = EventHub(app, token=TOKEN, health_path="/health")
    server = Server(bind(Config(port=0, token=TOKEN)), app, Config(port=0, token=TOKEN))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert get(url + "/health/live")[0] == 200
        assert get(url + "/health/ready")[:2] == (200, {"status": "ready"})
        assert hub.state.hub.is_running()
    finally:
        hub.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- readiness with a broker ---------------------------------------------------------------------


class _Broker:
    """Stands in for the Redis broker: only ``relay_stats`` is read by readiness."""

    def __init__(self, stats: RelayStats) -> None:
        self.stats = stats

    def relay_stats(self) -> RelayStats:
        return self.stats


def _state_with(stats: RelayStats, **options: Any) -> SidecarState:
    config = Config(token=TOKEN, **options)
    state = SidecarState(config, Hub(config, autostart=True), broker=_Broker(stats))
    state._started_pid = os.getpid()  # as ensure_started leaves it (with a real broker)
    return state


@pytest.mark.parametrize(
    ("stats", "options", "reason"),
    [
        (RelayStats(running=True, connected=True), {}, None),
        (RelayStats(running=True, connected=False), {}, "broker-disconnected"),
        (RelayStats(running=False, connected=False), {}, "broker-disconnected"),
        (RelayStats(connected=True, last_published_seq=1001), {}, "broker-lagging"),
        (RelayStats(connected=True, last_published_seq=1000), {}, None),
        (RelayStats(connected=True, last_published_seq=30, last_delivered_seq=20), {}, None),
        (
            RelayStats(connected=True, last_published_seq=30, last_delivered_seq=20),
            {"ready_max_lag": 9},
            "broker-lagging",
        ),
        (RelayStats(connected=True, last_published_seq=10**6), {"ready_max_lag": 0}, None),
    ],
)
def test_readiness_follows_the_relay(stats, options, reason):
    state = _state_with(stats, **options)
    try:
        assert state.not_ready() == reason
    finally:
        state.hub.stop()


def test_ready_is_503_while_redis_is_down_and_200_once_it_is_back(redis_server, sidecar_factory):
    running_app = sidecar_factory(broker=redis_server.url)
    assert get(running_app.url + "/health/ready")[:2] == (200, {"status": "ready"})
    redis_server.stop()
    wait_for(lambda: get(running_app.url + "/health/ready")[0] == 503, timeout=10)
    assert get(running_app.url + "/health/ready")[1]["reason"] == "broker-disconnected"
    assert get(running_app.url + "/health/live")[:2][0] == 200  # never restart it for Redis
    redis_server.start()
    wait_for(lambda: get(running_app.url + "/health/ready")[0] == 200, timeout=15)


def test_ready_says_starting_while_the_broker_was_never_reached_and_live_says_ok(redis_server):
    url = redis_server.url
    redis_server.stop()
    app = Flask("boot")
    hub = EventHub(app, token=TOKEN, broker=url, health_path="/health")
    config = Config(port=0, token=TOKEN)
    server = Server(bind(config), app, config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert get(base + "/health/ready")[:2] == (
            503,
            {"status": "unavailable", "reason": "starting"},
        )
        assert get(base + "/health/live")[:2][0] == 200
        redis_server.start()
        assert get(base + "/health/ready")[:2] == (200, {"status": "ready"})
    finally:
        hub.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the drain -----------------------------------------------------------------------------------


def _first_503(url: str, since: float, timeout: float = 5.0) -> float:
    """Seconds from ``since`` until ``/health/ready`` first answered 503."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(url + "/health/ready", timeout=1)[0] == 503:
            return time.monotonic() - since
    raise AssertionError("/health/ready never answered 503")


def test_sigterm_with_a_drain_turns_readiness_503_at_once_and_serves_open_sessions():
    drain = 2.0
    with running(drain=drain) as child:
        ws = connect(child.ws)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert _first_503(child.url, sent) < 0.1  # the bound: within 100 ms
        status, body, _ = get(child.url + "/health/ready")
        assert (status, body) == (503, {"status": "unavailable", "reason": "draining"})
        assert get(child.url + "/health/live")[:2][0] == 200
        refused = exchange(child.port, upgrade_head(child.port))  # a new client: elsewhere
        assert refused.status == 503 and int(refused.headers["retry-after"]) >= 1
        assert counters(child.url)["sessions"]["rejectedHandshakes"] == {"draining": 1}
        for n in range(3):  # the open session keeps receiving through the window
            assert publish(child.url, {"n": n}) == 202
            assert recv_json(ws)["payload"] == {"n": n}
        assert recv_close(ws, timeout=drain + 3) == 1001
        closed = time.monotonic() - sent
        assert drain - 0.1 <= closed < drain + 1.5, closed
        ws.close()
        assert child.wait(5) == 0
        log = child.log_text()
        assert "draining for up to 2 s (1 sessions open" in log
        assert "drain over: closing 1 sessions with 1001" in log


def test_a_drain_ends_as_soon_as_no_session_is_open():
    with running(drain=30) as child:
        ws = connect(child.ws)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        _first_503(child.url, sent)
        ws.close()  # the last client leaves on its own
        assert child.wait(5) == 0
        assert time.monotonic() - sent < 5


def test_a_second_signal_ends_the_drain_with_1001():
    with running(drain=30) as child:
        ws = connect(child.ws)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        _first_503(child.url, sent)
        child.send_signal(signal.SIGINT)
        assert recv_close(ws, timeout=5) == 1001
        assert time.monotonic() - sent < 5
        ws.close()
        assert child.wait(5) == 0
        assert "received SIGINT again: ending the drain" in child.log_text()


def test_without_a_drain_sigterm_closes_every_client_with_1001_at_once():
    with running() as child:
        ws = connect(child.ws)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert recv_close(ws, timeout=5) == 1001
        assert time.monotonic() - sent < 1.5
        ws.close()
        assert child.wait(5) == 0


def test_the_drain_is_refused_when_negative():
    with pytest.raises(Exception, match="--drain must be at least 0"):
        Config(drain=-1)


# -- under gunicorn ------------------------------------------------------------------------------


def _gunicorn(port: int, **env: str) -> subprocess.Popen[str]:
    needs_module("gunicorn", "pip install '.[gunicorn]'")
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:sidecar.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--threads", "16", "sidecar.wsgi:create_app()"]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(SIDECAR_TOKEN=TOKEN, **env),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gunicorns_graceful_timeout_follows_the_drain():
    code = "import sidecar.gunicorn_conf as c; print(c.graceful_timeout)"
    for drain, expected in (("", 5), ("30", 35), ("2.5", 8)):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=_env(SIDECAR_DRAIN=drain) if drain else _env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert out.strip() == str(expected)  # gunicorn wants an int


def test_gunicorn_serves_open_sessions_for_the_drain_then_closes_them_with_1001():
    drain = 2.0
    port = _free_port()
    server = _gunicorn(port, SIDECAR_DRAIN=str(drain))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_or_none(url) == 200 or server.poll() is not None, timeout=20)
        assert server.poll() is None, server.communicate(timeout=5)[1]
        ws = connect(f"ws://127.0.0.1:{port}/ws")
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert recv_close(ws, timeout=drain + 5) == 1001
        closed = time.monotonic() - sent
        assert drain - 0.1 <= closed < drain + 2, closed
        ws.send_close()
        ws.shutdown()
        assert server.wait(10) == 0
        log = server.communicate(timeout=5)[1]
        assert "sidecar: draining for up to 2 s" in log
        assert "Traceback" not in log and "[ERROR]" not in log, log
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=5)


def get_or_none(url: str) -> int | None:
    try:
        return get(url + "/health/ready", timeout=1)[0]
    except OSError:
        return None
