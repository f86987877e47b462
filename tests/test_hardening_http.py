"""Issue 11, classes 1 and 2: request heads that never end, and heads the parser refuses.

Black box: a sidecar child process (see :mod:`tests.hardening`; ``SIDECAR_TREE`` runs the same
tests against another checkout) spoken to over raw sockets.

* The whole request, head or body, must arrive within ``--handshake-timeout``: a trickle of
  one byte every 0.2 s gets ``408`` and a closed socket by then. Connections still sending
  their request are capped (``--max-pending-handshakes``): beyond the cap a connection gets
  ``503`` at once and no thread, and real clients get in again once the others are gone.
* Header values compare the way RFC 7230 says (tokens case-insensitively, optional whitespace
  ignored); every head that is not valid HTTP/1.1 gets a ``4xx`` and a closed socket (never a
  ``500``, never silence) and is counted in ``/api/v1/hub``; ``Expect: 100-continue`` gets no
  ``100 Continue`` on a request without a body.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.launcher import SidecarProcess
from tests.conftest import TOKEN, wait_for
from tests.hardening import (
    Reply,
    exchange,
    read_reply,
    rejected_handshakes,
    request_head,
    running,
    threads_of,
    trickle,
    upgrade_head,
)
from tests.rawws import RawWS

TIMEOUT = 1.0
#: Seconds the server may take beyond the deadline (the watchdog's own latency, a busy CI).
SLACK = 1.0
PACE = 0.2
HEAD_EXAMPLES = int(os.environ.get("SIDECAR_HEAD_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def child() -> Iterator[SidecarProcess]:
    """One sidecar for the module, with a short request deadline."""
    with running(handshake_timeout=TIMEOUT) as sidecar:
        yield sidecar


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5.0)


def settled_threads(pid: int) -> int:
    """The thread count of ``pid`` once two reads 0.1 s apart agree."""
    seen: list[int] = []

    def settled() -> int:
        """The count if it equals the one before, else 0 (poll again)."""
        seen.append(threads_of(pid))
        return seen[-1] if len(seen) > 1 and seen[-1] == seen[-2] else 0

    return int(wait_for(settled, timeout=5.0, interval=0.1))


def _assert_no_traceback(child: SidecarProcess) -> None:
    assert not child.tracebacks(), child.tracebacks()


# -- class 1: a request that never ends ----------------------------------------------------------


def _assert_timed_out(reply: Reply) -> None:
    assert reply.status == 408, reply
    assert reply.closed, reply
    assert reply.elapsed < TIMEOUT + SLACK, f"answered after {reply.elapsed:.2f} s"


def test_a_head_trickled_a_byte_at_a_time_gets_408_within_the_timeout(child):
    with _connect(child.port) as sock:
        _assert_timed_out(trickle(sock, upgrade_head(child.port), PACE, TIMEOUT + SLACK))


def test_a_post_body_trickled_a_byte_at_a_time_gets_408_within_the_timeout(child):
    body = json.dumps({"type": "app:slow", "payload": {"x": "y" * 100}}).encode()
    head = request_head(
        child.port, "POST", "/api/v1/events", headers=[f"Content-Length: {len(body)}"]
    )
    with _connect(child.port) as sock:
        sock.sendall(head)
        _assert_timed_out(trickle(sock, body, PACE, TIMEOUT + SLACK))


def test_a_body_shorter_than_its_content_length_gets_408_not_silence(child):
    head = request_head(child.port, "POST", "/api/v1/events", headers=["Content-Length: 500"])
    _assert_timed_out(exchange(child.port, head + b'{"type":', TIMEOUT + SLACK))


def test_pending_connections_are_capped_without_threads_and_real_clients_get_back_in():
    cap = 8
    with running(handshake_timeout=20, max_pending_handshakes=cap) as child:
        RawWS.connect(child.port, token=TOKEN).close()  # warm up
        baseline = settled_threads(child.pid)
        pending = [_connect(child.port) for _ in range(cap)]
        for sock in pending:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        wait_for(lambda: threads_of(child.pid) >= baseline + cap, timeout=5.0)
        for _ in range(2 * cap):
            reply = exchange(child.port, b"GET /ws HTTP/1.1\r\n", timeout=2.0)
            assert reply.status == 503 and reply.closed, reply
            assert reply.elapsed < 0.5, f"refused after {reply.elapsed:.2f} s"
            assert reply.headers.get("retry-after"), reply
        assert threads_of(child.pid) <= baseline + cap
        for sock in pending:
            sock.close()
        wait_for(lambda: threads_of(child.pid) <= baseline, timeout=5.0)
        ws = RawWS.connect(child.port, token=TOKEN)
        with ws:
            greeting = ws.read_message()
            assert greeting is not None and b"connection:status" in greeting.payload
        _assert_no_traceback(child)


# -- class 2: values compared as RFC 7230 says ---------------------------------------------------


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        ("websocket ", "Upgrade"),  # the reported case: trailing whitespace
        (" WebSocket", "Upgrade"),  # two spaces after the colon, another case
        ("websocket\t", "Upgrade"),
        ("WEBSOCKET", "upgrade"),
        ("websocket", "keep-alive, Upgrade"),
        ("websocket", "Upgrade ,keep-alive"),
    ],
)
def test_upgrade_values_compare_as_tokens(child, upgrade, connection):
    head = upgrade_head(child.port, upgrade=upgrade, connection=connection)
    with _connect(child.port) as sock:
        sock.sendall(head)
        reply = read_reply(sock, 3.0)
        assert reply.status == 101, reply
        ws = RawWS(sock, 3.0, 101, buffer=bytearray(reply.raw))
        ws.finish_upgrade()  # the greeting may come with the head
        greeting = ws.read_message()
        assert greeting is not None and b"connection:status" in greeting.payload
    _assert_no_traceback(child)


# -- class 2: heads the parser refuses -----------------------------------------------------------


def _with_header(port: int, line: str) -> bytes:
    return upgrade_head(port, headers=[line])


MALFORMED = {
    "nul-in-value": lambda p: _with_header(p, "X-Note: a\x00b"),
    "control-in-value": lambda p: _with_header(p, "X-Note: a\x1bb"),
    "paren-in-name": lambda p: _with_header(p, "X(Note): b"),
    "space-in-name": lambda p: _with_header(p, "X Note: b"),
    "space-before-colon": lambda p: _with_header(p, "X-Note : b"),
    "no-colon": lambda p: _with_header(p, "X-Note"),
    "empty-name": lambda p: _with_header(p, ": b"),
    "obs-fold": lambda p: _with_header(p, "X-Note: a\r\n b"),
    "obs-fold-tab": lambda p: _with_header(p, "X-Note: a\r\n\tb"),
    "bare-lf-header": lambda p: upgrade_head(p).replace(b"Version: 13\r\n", b"Version: 13\n"),
    "bare-lf-end": lambda p: upgrade_head(p)[:-4] + b"\r\n\n",
    "bare-cr-in-value": lambda p: _with_header(p, "X-Note: a\rb"),
    "bare-lf-request-line": lambda p: upgrade_head(p).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n", 1),
    "http-0.9": lambda p: b"GET /ws\r\n\r\n",
    "double-space-request-line": lambda p: upgrade_head(p).replace(b"GET /ws", b"GET  /ws", 1),
    "control-in-target": lambda p: upgrade_head(p).replace(b"GET /ws", b"GET /ws?x=\x01", 1),
    "oversized-header": lambda p: _with_header(p, "X-Big: " + "a" * 70_000),
    "oversized-head": lambda p: upgrade_head(
        p, headers=[f"X-Pad-{i}: {'b' * 1000}" for i in range(90)]
    ),
    "too-many-headers": lambda p: upgrade_head(p, headers=[f"X-{i}: 1" for i in range(120)]),
    "bad-content-length": lambda p: _with_header(p, "Content-Length: 1x"),
    "two-content-lengths": lambda p: upgrade_head(
        p, headers=["Content-Length: 0", "Content-Length: 5"]
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_head_gets_a_4xx_and_a_closed_socket_and_is_counted(child, case):
    before = rejected_handshakes(child.url)
    reply = exchange(child.port, MALFORMED[case](child.port), timeout=3.0)
    assert 400 <= reply.status < 500, reply
    assert reply.closed, reply
    assert b"Traceback" not in reply.raw
    wait_for(lambda: rejected_handshakes(child.url) > before, timeout=2.0)
    _assert_no_traceback(child)


#: An independent model of an RFC 9112 field line: token ":" OWS value, no CTL but HTAB, CRLF.
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_INSERTS = [b"\x00", b"\r", b"\n", b" ", b"\t", b":", b"(", b"\x7f", b"\x80", b"\xff", b",", b"@"]
_FOLDS = [b"\r\n ", b"\r\n\t"]


@settings(max_examples=HEAD_EXAMPLES, deadline=None)
@given(
    data=st.data(),
    inserts=st.lists(st.sampled_from(_INSERTS + _FOLDS), min_size=1, max_size=3),
)
def test_mutated_header_lines_get_101_only_when_valid_and_never_5xx(child, data, inserts):
    head = upgrade_head(child.port, headers=["X-Extra: some value"])
    request_line, _, rest = head.partition(b"\r\n")
    lines = [line + b"\r\n" for line in rest[:-4].split(b"\r\n")]
    for insert in inserts:
        index = data.draw(st.integers(0, len(lines) - 1))
        at = data.draw(st.integers(0, len(lines[index]) - 2))  # before the CRLF
        lines[index] = lines[index][:at] + insert + lines[index][at:]
    # the head is what comes before the first empty line: an insert may end it early
    sent = b"".join(lines)
    # the field lines before the first empty line (the request ends with one more CRLF)
    fields = (b"\r\n" + sent + b"\r\n").split(b"\r\n\r\n", 1)[0]
    head_lines = [line + b"\r\n" for line in fields.split(b"\r\n")[1:]]
    valid = all(_FIELD_LINE.fullmatch(line) for line in head_lines)
    reply = exchange(child.port, request_line + b"\r\n" + sent + b"\r\n", 3.0)
    assert reply.status in range(400, 500) or (reply.status == 101 and valid), (lines, reply)
    assert reply.closed or reply.status == 101, reply


def test_a_refused_head_still_leaves_the_server_serving(child):
    for case in ("nul-in-value", "space-in-name", "obs-fold"):
        exchange(child.port, MALFORMED[case](child.port), timeout=3.0)
    with RawWS.connect(child.port, token=TOKEN) as ws:
        greeting = ws.read_message()
        assert greeting is not None and b"connection:status" in greeting.payload


# -- class 2: Expect: 100-continue ---------------------------------------------------------------


def test_expect_100_continue_on_an_upgrade_gets_the_101_alone(child):
    head = upgrade_head(child.port, headers=["Expect: 100-continue"])
    with _connect(child.port) as sock:
        sock.sendall(head)
        reply = read_reply(sock, 3.0)
    assert reply.statuses == [101], reply


def test_expect_100_continue_on_a_get_gets_the_200_alone(child):
    head = request_head(child.port, "GET", "/health", headers=["Expect: 100-continue"])
    reply = exchange(child.port, head, timeout=3.0)
    assert reply.statuses == [200], reply


def test_expect_100_continue_with_a_body_gets_one_100_then_the_answer(child):
    body = b'{"type":"app:expect","payload":{}}'
    head = request_head(
        child.port,
        "POST",
        "/api/v1/events",
        headers=["Expect: 100-continue", f"Content-Length: {len(body)}"],
    )
    with _connect(child.port) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            assert chunk, interim
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(body)
        reply = read_reply(sock, 3.0)
    assert Reply(raw=interim + reply.raw).statuses == [100, 202], interim + reply.raw


def test_the_request_watchdog_is_woken_once_not_for_every_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar import server as server_module

    notified: list[object] = []

    class Counting(threading.Condition):
        def notify(self, n: int = 1) -> None:
            notified.append(self)
            super().notify(n)

    monkeypatch.setattr(server_module.threading, "Condition", Counting)
    watchdog = server_module.RequestWatchdog(timeout=0.2, limit=100)
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        assert all(watchdog.admit(ours) for ours, _theirs in pairs)
        wakeups = [c for c in notified if c is watchdog._cond]
        assert len(wakeups) == 1  # the first deadline wakes it; later ones never come first
        for _ours, peer in pairs:  # and each still gets its 408 at its deadline
            peer.settimeout(5)
            assert peer.recv(64).startswith(b"HTTP/1.1 408")
    finally:
        watchdog.stop()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
