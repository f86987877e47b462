"""Issue 11, class 9: the edges of the process.

* A second sidecar on the same port and the same host form fails with one ``port-in-use``
  JSON line (``127.0.0.1``, ``localhost``, ``::1``). ``--host ::1`` next to one on
  ``127.0.0.1`` is another socket: both run, and each client reaches the one it dialled
  (documented behaviour, pinned here).
* SIGHUP is a stop signal like SIGTERM: every client gets 1001 and the process exits 0.
* Flask's default ``/static/…`` route is gone; the app has exactly the README's routes.
* The debug page carries a Content-Security-Policy that allows no inline script.
* Sessions that end with a reset leave no epoll descriptor behind, with the garbage
  collector off (in this process: the descriptors are counted in ``/proc/self/fd``).

The process tests are black box (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
from collections.abc import Callable

import pytest

from sidecar.web.extension import create_app
from tests.conftest import TOKEN, RunningSidecar, wait_for
from tests.hardening import exchange, request_head, running, start_failure
from tests.rawws import OP_TEXT, RawWS, build_frame


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", pytest.param("::1", marks=needs_ipv6)])
def test_a_second_sidecar_on_the_same_host_and_port_fails_with_one_line(host):
    with running("--host", host) as first:
        code, line, _ = start_failure("--host", host, "--port", str(first.port))
    assert code == 3, line
    assert line == {
        "event": "error",
        "error": "port-in-use",
        "message": f"{host}:{first.port} is in use",
    }


def _epoch_at(host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(5.0)
        sock.connect((host, port))
        url_host = f"[{host}]" if ":" in host else host
        ws = RawWS(sock, 5.0)
        ws.handshake(
            f"{url_host}:{port}", "/ws", token=TOKEN, origin=None, headers=None, extensions=None
        )
        frame = ws.read_message()
        assert frame is not None
        return str(json.loads(frame.payload)["payload"]["epoch"])


@needs_ipv6
def test_ipv6_loopback_next_to_ipv4_loopback_is_another_socket():
    with (
        running("--host", "127.0.0.1") as v4,
        running("--host", "::1", "--port", str(v4.port)) as v6,
    ):
        v4_epoch, v6_epoch = _epoch_at("127.0.0.1", v4.port), _epoch_at("::1", v4.port)
        assert v4_epoch == v4.ready["epoch"] and v6_epoch == v6.ready["epoch"]
        assert v4_epoch != v6_epoch


def test_sighup_closes_every_client_with_1001_and_exits_0():
    with running() as child:
        clients = [RawWS.connect(child.port, token=TOKEN) for _ in range(3)]
        for ws in clients:
            assert ws.read_message() is not None  # connection:status
        child.send_signal(signal.SIGHUP)
        for ws in clients:
            assert ws.read_close(timeout=5.0) == 1001
            ws.close()
        assert child.wait(5.0) == 0
        assert "SIGHUP" in child.log_text()


# -- routes and the debug page -------------------------------------------------------------------

README_ROUTES = {
    "/ws",
    "/health",
    "/health/live",
    "/health/ready",
    "/",
    "/client/<name>",
    "/api/v1/events",
    "/api/v1/hub",
    "/api/v1/",
    "/api/v1/<path:rest>",
    "/metrics",
}


def test_the_app_has_exactly_the_readme_routes():
    app = create_app(token=TOKEN)
    assert {rule.rule for rule in app.url_map.iter_rules()} == README_ROUTES
    assert app.static_folder is None


@pytest.mark.parametrize(
    "path",
    ["/static/debug.js", "/static/index.html", "/static/sidecar-client.js", "/static/"],
)
def test_flasks_static_route_is_gone(path):
    with running() as child:
        assert exchange(child.port, request_head(child.port, "GET", path)).status == 404
        debug_js = exchange(child.port, request_head(child.port, "GET", "/client/debug.js"))
        assert debug_js.status == 200


def test_the_debug_page_has_a_strict_content_security_policy():
    with running() as child:
        reply = exchange(child.port, request_head(child.port, "GET", f"/?token={TOKEN}"))
        assert reply.status == 200 and b"<html" in reply.body.lower(), reply
        csp = reply.headers["content-security-policy"]
        directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";"))
        assert directives["default-src"] == "'none'", csp
        assert directives["script-src"] == "'self'", csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        assert directives["frame-ancestors"] == "'none'", csp
        assert reply.headers["referrer-policy"] == "no-referrer"


# -- epoll descriptors ---------------------------------------------------------------------------


def _eventpolls() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        except OSError:
            pass
    return count


def _reset_after_status(port: int) -> None:
    ws = RawWS.connect(port, token=TOKEN)
    assert ws.read_message() is not None
    ws.reset()


def _reset_mid_frame(port: int) -> None:
    ws = RawWS.connect(port, token=TOKEN)
    ws.send_raw(build_frame(OP_TEXT, b"x" * 1000)[:200])
    ws.reset()


def _reset_during_drain(port: int) -> None:
    """A publish with bytes after its body, reset once answered (while the server drains)."""
    body = b'{"type":"app:drained","payload":{}}'
    head = request_head(port, "POST", "/api/v1/events", headers=[f"Content-Length: {len(body)}"])
    ws = RawWS(socket.create_connection(("127.0.0.1", port), timeout=5.0), 5.0)
    ws.send_raw(head + body + b"x" * 100)
    assert ws.sock.recv(12) == b"HTTP/1.1 202"
    ws.reset()


def _clean(port: int) -> None:
    with RawWS.connect(port, token=TOKEN) as ws:
        assert ws.read_message() is not None
        ws.send_close(1000)
        assert ws.read_close(reply=False) == 1000


KINDS: list[Callable[[int], None]] = [_reset_after_status, _reset_mid_frame, _clean]


def test_sessions_ended_by_a_reset_leave_no_epoll_descriptor(
    sidecar_factory: Callable[..., RunningSidecar],
):
    running_sidecar = sidecar_factory(ping_interval=0)
    _clean(running_sidecar.port)  # warm up
    gc.collect()
    gc.disable()
    try:
        baseline = _eventpolls()
        for n in range(60):
            KINDS[n % len(KINDS)](running_sidecar.port)
        for _ in range(20):
            _reset_during_drain(running_sidecar.port)
        wait_for(lambda: running_sidecar.sidecar.sessions.active == 0, timeout=10.0)
        wait_for(lambda: _eventpolls() <= baseline, timeout=5.0)
    finally:
        gc.enable()
