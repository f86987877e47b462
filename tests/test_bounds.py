"""Every bound the README promises, pinned over real sockets: each test shows that the named
bound is what acted, and acted first.

For each bound: the close code or HTTP status a client sees, the reason ``/api/v1/hub`` gives
(``sessions.ended``, ``sessions.rejectedHandshakes``, the hub's counters), and timing that no
other bound could explain (the other bounds are set far away: a stalled client meets its
queue bound seconds before a 60 s write deadline). Bounds that protect memory also show the
process's RSS staying within a generous margin while far more than the bound is offered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.envelope import Event, new_event
from tests import wsreader
from tests.conftest import RunningSidecar, recv_close, wait_for
from tests.rawws import rss_bytes

MiB = 1 << 20
#: Far beyond any bound under test: the bounds that must not act are set to these.
FAR = {"write_deadline": 60.0, "ping_interval": 0.0}


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def rss() -> int:
    """This process's RSS once freed memory went back to the OS (``malloc_trim``): what the
    sidecar holds, not what glibc keeps cached after big short-lived buffers."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return rss_bytes()


def counters(running: RunningSidecar) -> dict[str, Any]:
    """``GET /api/v1/hub``, as an operator would read it."""
    request = urllib.request.Request(running.url + "/api/v1/hub")
    request.add_header("Authorization", f"Bearer {running.token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def ended(running: RunningSidecar, reason: str, count: int = 1) -> dict[str, int]:
    """Wait until ``count`` sessions ended for ``reason``; every end reason counted."""
    wait_for(lambda: counters(running)["sessions"]["ended"].get(reason) == count, timeout=10)
    return counters(running)["sessions"]["ended"]


def blob(size: int, i: int = 0) -> Event:
    return new_event("bench:blob", {"i": i, "x": "y" * size})


def stalled(running: RunningSidecar) -> wsreader.RawWS:
    """A client that reads its status, then never reads again (a small TCP window)."""
    ws = wsreader.connect(running.port, token=running.token, rcvbuf=4096)
    assert ws.recv_json()["type"] == "connection:status"
    wait_for(lambda: running.hub.client_count() == 1)
    return ws


class Hold:
    """Keeps the hub thread busy (inside ``hub.call``) until released: its inbox fills up."""

    def __init__(self, running: RunningSidecar) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

        def hold() -> None:
            self.entered.set()
            self.release.wait(30)

        assert running.hub.call(hold)
        assert self.entered.wait(5)


@pytest.fixture
def hold() -> Iterator[Callable[[RunningSidecar], Hold]]:
    """Hold hub threads; each is released at teardown, whatever the test did."""
    holds: list[Hold] = []

    def make(running: RunningSidecar) -> Hold:
        holds.append(Hold(running))
        return holds[-1]

    yield make
    for held in holds:
        held.release.set()


# -- the client queue: items and bytes ------------------------------------------------------------


def hub_idle(running: RunningSidecar) -> None:
    """Return once the hub thread has handled everything submitted so far."""
    done = threading.Event()
    assert running.hub.call(done.set)
    assert done.wait(30)


def flood(running: RunningSidecar, size: int, count: int, *, one_by_one: bool = False) -> None:
    """Broadcast ``count`` events of ``size`` bytes; ``one_by_one``: each its own batch (one
    queue item per event), else as fast as the hub takes them (batches merge)."""
    for i in range(count):
        assert running.hub.broadcast_event(blob(size, i))
        if one_by_one:
            hub_idle(running)
    hub_idle(running)


def test_the_queue_item_bound_evicts_a_stalled_client_with_4008_long_before_the_deadline(
    sidecar_factory: Callable[..., RunningSidecar], caplog: pytest.LogCaptureFixture
) -> None:
    running = sidecar_factory(queue_size=8, max_pending_bytes=1 << 30, **FAR)
    client = stalled(running)
    before = rss()
    started = time.monotonic()
    flood(running, 200_000, 400, one_by_one=True)  # 80 MB offered to a client taking nothing
    assert ended(running, "slow-consumer") == {"slow-consumer": 1}
    assert time.monotonic() - started < 10  # the 60 s write deadline never came into it
    growth = rss() - before
    assert growth < 40 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
    hub = counters(running)["hub"]
    assert (hub["evicted"], hub["clients"]) == (1, 0)
    assert "slow consumer (8 writes queued), close 4008" in caplog.text
    frames = client.read_to_eof()  # the socket was shut down; 4008 if the close frame fitted
    assert all(f.opcode != wsreader.OP_CLOSE or f.close_code == 4008 for f in frames)


def test_the_queue_byte_bound_evicts_before_the_item_bound(
    sidecar_factory: Callable[..., RunningSidecar], caplog: pytest.LogCaptureFixture
) -> None:
    running = sidecar_factory(queue_size=100_000, max_pending_bytes=2 * MiB, **FAR)
    client = stalled(running)
    before = rss()
    started = time.monotonic()
    flood(running, 200_000, 400)
    assert ended(running, "slow-consumer") == {"slow-consumer": 1}
    assert time.monotonic() - started < 10
    assert rss() - before < 40 * MiB
    line = next(r.getMessage() for r in caplog.records if "slow consumer (" in r.getMessage())
    queued = int(line.split("slow consumer (")[1].split()[0])
    assert queued <= 12  # 2 MiB of 200 kB frames (plus a flush marker), nowhere near 100,000
    client.read_to_eof()  # dropped: the socket was shut down


def test_a_client_that_keeps_up_is_never_evicted_by_its_queue(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(queue_size=2, max_pending_bytes=64 * 1024, **FAR)
    ws, _ = running.connect_ready()
    for i in range(200):
        running.hub.broadcast_event(blob(100, i))
        assert json.loads(ws.recv())["payload"]["i"] == i
    assert counters(running)["hub"]["evicted"] == 0


# -- the write deadline ---------------------------------------------------------------------------


def test_the_write_deadline_drops_a_stalled_writer_at_the_deadline(
    sidecar_factory: Callable[..., RunningSidecar], caplog: pytest.LogCaptureFixture
) -> None:
    running = sidecar_factory(
        write_deadline=1.0, queue_size=100_000, max_pending_bytes=1 << 30, ping_interval=0
    )
    client = stalled(running)
    started = time.monotonic()
    flood(running, 60_000, 200)  # 12 MB: three times what the socket buffers take
    assert ended(running, "write-deadline") == {"write-deadline": 1}
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 8, elapsed  # not before the deadline, and by it
    assert counters(running)["hub"]["evicted"] == 0  # not the queue
    assert "write failed (write deadline exceeded), dropped" in caplog.text
    client.read_to_eof()


# -- keepalive ------------------------------------------------------------------------------------


def test_keepalive_pings_every_interval_and_drops_a_silent_peer_at_the_timeout(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(ping_interval=0.3, ping_timeout=0.6)
    silent = wsreader.connect(running.port, token=running.token)  # never answers a ping
    started = time.monotonic()
    assert silent.recv_json()["type"] == "connection:status"
    ping = silent.recv(timeout=5)
    pinged = time.monotonic() - started
    assert ping.opcode == wsreader.OP_PING
    assert 0.2 <= pinged < 0.6, pinged  # at the interval
    frames = silent.read_to_eof(timeout=5)
    dropped = time.monotonic() - started
    assert [f.close_code for f in frames] == [1011]  # no second ping while one is unanswered
    assert 0.8 <= dropped < 2.0, dropped  # the ping's timeout, checked at the next interval
    assert ended(running, "keepalive-timeout") == {"keepalive-timeout": 1}
    assert counters(running)["hub"]["keepalive_drops"] == 1


def test_a_peer_that_answers_pings_outlives_many_timeouts(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(ping_interval=0.1, ping_timeout=0.2)
    ws, _ = running.connect_ready()
    deadline = time.monotonic() + 1.0  # five timeouts
    pings = 0
    while time.monotonic() < deadline:
        frame = ws.recv_data_frame(control_frame=True)[1]  # answers each ping with a pong
        pings += frame.opcode == wsreader.OP_PING
    assert pings >= 5
    assert counters(running)["hub"]["keepalive_drops"] == 0
    assert running.hub.client_count() == 1


# -- the inbound message limit --------------------------------------------------------------------


def test_the_inbound_limit_closes_with_1009_at_one_byte_over(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(max_message_size=1000, close_timeout=0.3, **FAR)
    got: list[int] = []
    running.set_message_handler(lambda client, event: got.append(event["payload"]["n"]))
    ws, _ = running.connect_ready()

    def message(n: int, size: int) -> str:
        """An envelope of exactly ``size`` UTF-8 bytes, mostly two-byte characters."""
        empty = len(json.dumps({"type": "app:x", "payload": {"n": n, "t": ""}}))
        pad = "a" * ((size - empty) % 2) + "é" * ((size - empty) // 2)
        text = json.dumps({"type": "app:x", "payload": {"n": n, "t": pad}}, ensure_ascii=False)
        assert len(text.encode()) == size
        return text

    ws.send(message(1, 1000))  # at the limit: accepted
    wait_for(lambda: got == [1])
    ws.send(message(2, 1001))
    assert recv_close(ws) == 1009
    assert ended(running, "server-close-1009") == {"server-close-1009": 1}
    assert len(got) == 1


def test_the_inbound_limit_counts_bytes_not_characters(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(max_message_size=1000, close_timeout=0.3, **FAR)
    running.set_message_handler(lambda client, event: None)
    ws, _ = running.connect_ready()
    ws.send(json.dumps({"type": "app:x", "payload": {"t": "é" * 600}}, ensure_ascii=False))
    assert recv_close(ws) == 1009  # 630 characters, 1230 bytes
    assert ended(running, "server-close-1009") == {"server-close-1009": 1}


# -- --max-clients and the handshake timeout ------------------------------------------------------


def raw_upgrade(running: RunningSidecar) -> bytes:
    """An upgrade request on a raw socket; the answer (until EOF, or its head after a 101)."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        head = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {running.token}\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
            if answer.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in answer:
                break
        return answer


def test_max_clients_answers_503_and_counts_the_refusal(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(max_clients=2, **FAR)
    first, _ = running.connect_ready()
    running.connect_ready()
    answer = raw_upgrade(running)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
    assert b"too many connections" in answer
    sessions = counters(running)["sessions"]
    assert (sessions["active"], sessions["limit"]) == (2, 2)
    assert sessions["rejectedHandshakes"] == {"capacity": 1}
    first.close()
    wait_for(lambda: running.sidecar.sessions.active == 1)
    assert raw_upgrade(running).startswith(b"HTTP/1.1 101 ")


def test_the_handshake_timeout_bounds_the_whole_request_with_408(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(handshake_timeout=0.6, **FAR)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        started = time.monotonic()
        answer = b""
        for part in (b"GET /ws HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"X-Slow: 1\r\n"):
            sock.sendall(part)  # a byte stream that never stalls long: no read times out
            sock.settimeout(0.25)
            try:
                answer += sock.recv(4096)
                break
            except TimeoutError:
                continue
        sock.settimeout(5)
        while chunk := sock.recv(4096):
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    # the deadline is on the whole request (0.6 s); the per-read backstop would be 2.2 s
    assert 0.5 <= elapsed < 2.0, elapsed
    assert running.server.watchdog is not None and running.server.watchdog.timed_out == 1
    assert counters(running)["sessions"]["active"] == 0


# -- the inbox limit ------------------------------------------------------------------------------


def post_events(running: RunningSidecar, events: list[dict[str, Any]]) -> tuple[int, Any, Any]:
    request = urllib.request.Request(
        running.url + "/api/v1/events", data=json.dumps(events).encode(), method="POST"
    )
    request.add_header("Authorization", f"Bearer {running.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_the_inbox_limit_refuses_publishing_with_503_and_bounds_memory(
    sidecar_factory: Callable[..., RunningSidecar], hold: Callable[[RunningSidecar], Hold]
) -> None:
    running = sidecar_factory(inbox_limit=10, **FAR)
    hold(running)
    tick = {"type": "app:tick", "payload": {"x": 1}}
    status, _headers, body = post_events(running, [tick] * 10)
    assert (status, body["seqs"]) == (202, list(range(1, 11)))
    status, headers, body = post_events(running, [tick])
    assert (status, headers["Retry-After"]) == (503, "1")
    assert body == {
        "error": "not broadcast: the hub is overloaded (10 events waiting); retry",
        "outcome": "not-broadcast",
    }
    before = rss()
    for i in range(400):  # 80 MB offered to a hub that takes nothing
        assert not running.hub.broadcast_event(blob(200_000, i))
    assert rss() - before < 40 * MiB
    hub = counters(running)["hub"]
    assert (hub["pending"], hub["refused_broadcasts"]) == (10, 401)


# -- the history: events and bytes ----------------------------------------------------------------


def test_the_history_bounds_hold_memory_and_the_window(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    running = sidecar_factory(history_size=1000, history_bytes=4 * MiB, **FAR)
    before = rss()
    flood(running, 200_000, 400)  # 80 MB through a 4 MiB window
    assert rss() - before < 40 * MiB
    hub = counters(running)["hub"]
    assert hub["historyBytes"] <= 4 * MiB and hub["historyEvents"] == 20  # bytes bind first
    ws, status = running.connect_ready(f"?since={running.hub.epoch}:{400 - 21}")
    assert status["payload"]["recovered"] is False
    running2 = sidecar_factory(history_size=5, **FAR)
    flood(running2, 10, 50)
    assert counters(running2)["hub"]["historyEvents"] == 5  # events bind first
    _ws, status = running2.connect_ready(f"?since={running2.hub.epoch}:{50 - 5}")
    assert status["payload"]["recovered"] is True
    _ws, status = running2.connect_ready(f"?since={running2.hub.epoch}:{50 - 6}")
    assert status["payload"]["recovered"] is False
    assert counters(running2)["hub"]["unrecovered_resumes"] == 1
    del ws
