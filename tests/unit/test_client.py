"""The client: fast path, the pending tail of a partial write, the writer thread, closing.

Over a real :class:`~sidecar.core.connection.Connection` on a socketpair where the bytes on
the wire matter (partial writes, aborts, the write deadline), over a
:class:`~tests.unit.fakes.FakeTransport` where the test must stop a write half-way (its gate)
or script what the peer sends (the read loop).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from sidecar import frames
from sidecar.config import Config
from sidecar.core import client as client_module
from sidecar.core.client import Client, Close
from sidecar.core.connection import Ended, MessageTooBig, SendResult
from sidecar.protocol import CloseCode
from tests.unit.conftest import WireFactory
from tests.unit.fakes import PATIENCE, new_client, wait_until
from tests.unit.wire import TINY_BUFFER, Peer, Wire, Writer

BIG = frames.text_frame(b"x" * (1 << 20))


def text(n: int) -> bytes:
    return frames.text_frame(b'{"n":%d}' % n)


def numbers(got: list[frames.Frame]) -> list[int]:
    return [f.json()["n"] for f in got if f.opcode == frames.OP_TEXT and f.payload[:4] == b'{"n"']


def writer_of(client: Client) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sidecar-writer-{client.id}"]


def on_wire(make_wire: WireFactory, **config: object) -> tuple[Client, Wire, Peer]:
    wire, peer = make_wire(sndbuf=TINY_BUFFER, write_deadline=config.pop("deadline", 5.0))
    return Client(wire.conn, Config(**config), remote="peer"), wire, peer  # type: ignore[arg-type]


# -- the fast path and the writer -----------------------------------------------------------------


@pytest.mark.posix_only("the fast path needs MSG_DONTWAIT; on Windows every frame has a writer")
def test_the_fast_path_writes_at_once_and_starts_no_writer(make_wire: WireFactory) -> None:
    client, _wire, peer = on_wire(make_wire)
    assert client.offer(text(1))
    assert client.offer((text(2), text(3)))
    assert numbers(peer.frames(3)) == [1, 2, 3]
    assert client.backlog() == 0
    assert writer_of(client) == []


def test_a_partial_write_leaves_its_tail_to_the_writer_and_order_holds(
    make_wire: WireFactory,
) -> None:
    client, _wire, peer = on_wire(make_wire)
    assert client.offer(BIG)  # partial: the tail stays in the transport
    assert client.backlog() == 1 and writer_of(client)
    assert client.offer(text(1))  # behind the tail, through the queue
    assert client.offer(text(2))
    got = peer.frames(3)
    assert len(got[0].payload) == 1 << 20 and numbers(got) == [1, 2]
    wait_until(lambda: client.backlog() == 0)
    assert client.offer(text(3))  # the fast path again
    assert numbers(peer.frames(1)) == [3]


def test_a_busy_transport_hands_over_to_the_writer_in_order() -> None:
    client, transport = new_client()
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    assert client.offer(text(1))
    assert transport.in_send_all.wait(PATIENCE)
    transport.outcome = SendResult.SENT  # free again, but the queue is not empty
    assert client.offer(text(2))
    assert client.offer((text(3), text(4)))
    assert transport.try_sends == 1
    transport.gate.set()
    wait_until(lambda: client.backlog() == 0)
    assert numbers(transport.frames()) == [1, 2, 3, 4]
    assert client.offer(text(5)) and transport.try_sends == 2


def test_a_dead_transport_takes_offers_without_queueing() -> None:
    client, transport = new_client(queue_size=1)
    transport.outcome = SendResult.DEAD
    for n in range(5):
        assert client.offer(text(n))
    assert client.backlog() == 0 and writer_of(client) == []


def test_without_the_fast_path_every_write_goes_through_the_writer() -> None:
    client, transport = new_client(fast_path=False)
    for n in range(3):
        assert client.offer(text(n))
    wait_until(lambda: len(transport.frames()) == 3)
    assert transport.try_sends == 0 and writer_of(client)


def test_the_writer_sends_everything_queued_in_one_write() -> None:
    client, transport = new_client(fast_path=False)
    transport.gate.clear()
    calls: list[int] = []
    original = transport.send_all

    def counting(buffers: object) -> None:
        calls.append(1)
        original(buffers)  # type: ignore[arg-type]

    transport.send_all = counting  # type: ignore[method-assign]
    client.offer(text(0))
    assert transport.in_send_all.wait(PATIENCE)
    for n in range(1, 6):
        client.offer(text(n))
    transport.gate.set()
    wait_until(lambda: client.backlog() == 0)
    assert len(calls) == 2 and numbers(transport.frames()) == list(range(6))


@pytest.mark.parametrize(("queue_size", "refused_at"), [(1, 1), (4, 4)])
def test_offer_refuses_past_queue_size_items(queue_size: int, refused_at: int) -> None:
    client, transport = new_client(queue_size=queue_size, max_pending_bytes=1 << 30)
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    results = [client.offer(text(n)) for n in range(refused_at + 1)]
    assert results == [True] * refused_at + [False]
    assert client.backlog() == queue_size
    transport.gate.set()


def test_offer_refuses_past_max_pending_bytes() -> None:
    size = len(text(1))
    client, transport = new_client(queue_size=100, max_pending_bytes=3 * size)
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    assert [client.offer(text(n)) for n in range(4)] == [True, True, True, False]
    assert not client.offer((text(1),))
    transport.gate.set()
    wait_until(lambda: client.backlog() == 0)
    assert client.offer((text(1), text(2), text(3), text(4)))  # one item, over the bound: taken


# -- closing ----------------------------------------------------------------------------------


def test_close_while_writing_flushes_the_queue_then_closes_once() -> None:
    client, transport = new_client()
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    client.offer(text(1))
    assert transport.in_send_all.wait(PATIENCE)  # the writer is inside a write
    client.offer(text(2))
    client.offer(text(3))
    client.request_close(CloseCode.GOING_AWAY, "bye")
    client.request_close(CloseCode.NORMAL, "again")  # the first request stands
    assert client.offer(text(4))  # closing: accepted, never written
    transport.gate.set()
    transport.wait_closed()
    assert numbers(transport.frames()) == [1, 2, 3]
    assert transport.closes == [(CloseCode.GOING_AWAY, "bye", True)]


def test_close_without_a_writer_is_immediate_when_it_cannot_block() -> None:
    client, transport = new_client()
    client.request_close(4001, "resume")
    assert transport.closes == [(4001, "resume", False)]
    assert writer_of(client) == []


def test_a_close_that_would_block_is_left_to_a_writer_thread(make_wire: WireFactory) -> None:
    client, wire, peer = on_wire(make_wire)
    with wire.conn.socket.lock:  # a write in progress elsewhere: the close cannot go now
        client.request_close(4001, "resume")  # returns: it would deadlock if it waited
        assert peer.quiet()
    assert [f.close_code for f in peer.frames(1)] == [4001]


def test_request_close_may_block_on_the_request_thread() -> None:
    client, transport = new_client()
    client.request_close(CloseCode.NORMAL, "", may_block=True)
    assert transport.closes == [(CloseCode.NORMAL, "", True)]


def test_abort_while_the_writer_holds_the_lock(
    make_wire: WireFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # POSIX: the abort's shutdown wakes the blocked writer; Windows: it does not (Winsock), and
    # the writer ends at its write deadline: a short one, so that both end within PATIENCE
    client, wire, peer = on_wire(make_wire, deadline=1.0)
    client.offer(BIG)
    client.offer(BIG)
    wait_until(lambda: wire.conn.socket.lock.locked())  # the writer is blocked in its write
    started = time.monotonic()
    client.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    assert time.monotonic() - started < 0.5
    writer = writer_of(client)
    if writer:
        writer[0].join(PATIENCE)
        assert not writer[0].is_alive()
    data = b"".join(iter(lambda: peer.sock.recv(1 << 20), b""))
    assert len(data) < 2 * len(BIG)
    assert all(f.opcode == frames.OP_TEXT for f in frames.FrameParser().feed(data))
    assert client.ended_by == "slow-consumer"
    assert "write failed" not in caplog.text  # the abort already said why


def test_abort_keeps_the_first_reason() -> None:
    client, transport = new_client()
    client.abort(CloseCode.INTERNAL_ERROR, "keepalive timeout")
    client.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    assert client.ended_by == "keepalive-timeout"
    assert transport.aborts[0] == (CloseCode.INTERNAL_ERROR, "keepalive timeout")


def test_the_write_deadline_drops_a_stalled_client(
    make_wire: WireFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client, _wire, peer = on_wire(make_wire, deadline=0.1)
    started = time.monotonic()
    client.offer(BIG)
    writer = writer_of(client)
    assert writer
    writer[0].join(PATIENCE)
    assert 0.08 <= time.monotonic() - started < 3
    assert client.ended_by == "write-deadline"
    assert f"client {client.id}: write failed (write deadline exceeded), dropped" in caplog.text
    data = b"".join(iter(lambda: peer.sock.recv(1 << 20), b""))  # shut down: EOF
    assert len(data) < len(BIG)


def test_a_failed_write_is_named(caplog: pytest.LogCaptureFixture) -> None:
    client, transport = new_client(fast_path=False)

    def broken(buffers: object) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    transport.send_all = broken  # type: ignore[method-assign]
    client.offer(text(1))
    wait_until(lambda: transport.shutdowns == 1)
    assert client.ended_by == "write-failed"
    assert messages(caplog) == [
        f"client {client.id}: write failed (Connection reset by peer), dropped"
    ]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sidecar.client"]


# -- the read loop and the end of a session -----------------------------------------------------


def test_the_read_loop_hands_over_each_message_until_the_end() -> None:
    client, transport = new_client()
    for item in ("a", b"b", "c"):
        transport.incoming.put(item)
    transport.incoming.put(Ended())
    seen: list[object] = []
    client.read_loop(lambda c, m: seen.append((c, m)), poll=0.01)
    assert seen == [(client, "a"), (client, b"b"), (client, "c")]
    assert transport.closes == []


@pytest.mark.parametrize(
    ("failure", "close"),
    [
        (Close(4000, "go away"), (4000, "go away", True)),
        (ValueError("the app's bug"), (1011, "internal error", True)),
    ],
)
def test_a_handler_failure_closes_the_connection(
    failure: Exception, close: tuple[int, str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    client, transport = new_client()
    transport.incoming.put("x")
    transport.incoming.put("never read")

    def handler(_client: Client, _message: str | bytes) -> None:
        raise failure

    caplog.set_level(logging.INFO, "sidecar.client")
    client.read_loop(handler, poll=0.01)
    assert transport.closes == [close]
    assert transport.incoming.qsize() == 1
    if isinstance(failure, ValueError):
        assert messages(caplog) == [
            f"message handler failed for client {client.id}: closing with 1011"
        ]
        assert "the app's bug" in caplog.text  # with its traceback
    else:
        assert messages(caplog) == [f"client {client.id}: closing with 4000 (go away)"]


def test_a_message_over_the_limit_closes_with_1009(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sidecar.client")
    client, transport = new_client()
    transport.incoming.put(MessageTooBig(13, 12))
    client.read_loop(lambda c, m: None, poll=0.01)
    assert transport.closes == [(CloseCode.TOO_BIG, "message too big", True)]
    assert messages(caplog) == [
        f"client {client.id}: closing with 1009 (message of 13 bytes; the limit is 12)"
    ]


def test_finish_closes_lingers_and_returns() -> None:
    client, transport = new_client()
    client.finish(close_timeout=2.0)
    assert transport.closes == [(CloseCode.NORMAL, "", True)]
    assert transport.shutdowns == 0 and len(transport.lingered) == 1


def test_finish_shuts_down_a_reader_that_does_not_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "SHUTDOWN_WAKES_READERS", True)  # POSIX
    client, transport = new_client()
    transport.reader_done = False
    client.finish(close_timeout=0.01)
    assert transport.shutdowns == 1 and transport.lingered == []
    assert messages(caplog) == [f"client {client.id}: reader thread still running after shutdown"]


def test_on_windows_finish_leaves_a_silent_peers_reader_to_the_servers_close(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Winsock's shutdown wakes no blocked recv: waiting for the reader after it only delayed
    the request (whose end closes the socket, which does wake it) and logged a false alarm."""
    monkeypatch.setattr(client_module, "SHUTDOWN_WAKES_READERS", False)  # Windows
    client, transport = new_client()
    transport.reader_done = False
    started = time.monotonic()
    client.finish(close_timeout=0.2)
    assert time.monotonic() - started < 0.2 + PATIENCE / 10
    assert transport.shutdowns == 1 and transport.lingered == []
    assert len(transport.joins) == 1  # the close timeout only, no second wait
    assert messages(caplog) == []


def test_finish_waits_for_the_writer_to_flush_and_close() -> None:
    client, transport = new_client(fast_path=False)
    transport.gate.clear()
    client.offer(text(1))
    assert transport.in_send_all.wait(PATIENCE)
    finishing = Writer(lambda: client.finish(close_timeout=5.0))
    transport.gate.set()
    assert finishing.wait() is None
    assert numbers(transport.frames()) == [1]
    assert transport.closes == [(CloseCode.NORMAL, "", True)]
    assert not writer_of(client)


# -- details a user can see -------------------------------------------------------------------


def test_the_byte_count_follows_tuples_through_the_writer() -> None:
    size = len(text(1))
    client, transport = new_client(fast_path=False, queue_size=100, max_pending_bytes=3 * size - 1)
    for _ in range(3):  # tuples written by the writer: their bytes are counted out again
        assert client.offer((text(1), text(2)))
        wait_until(lambda: client.backlog() == 0)
    transport.gate.clear()
    assert client.offer(text(1))
    assert transport.in_send_all.wait(PATIENCE)
    assert client.offer(text(2))  # 2 frames queued: within the bound
    assert not client.offer(text(3))  # 3 frames: one byte over it
    assert not client.offer((text(3),))
    transport.gate.set()


def test_a_second_item_over_the_byte_bound_is_refused() -> None:
    size = len(text(1))
    client, transport = new_client(queue_size=100, max_pending_bytes=size)
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    assert client.offer(text(1))
    assert not client.offer(text(2))
    assert not client.offer((text(2), text(3)))
    transport.gate.set()


def test_a_client_remembers_where_it_came_from() -> None:
    transport = new_client()[1]
    assert Client(transport).remote == "?"
    assert Client(transport, remote="10.0.0.1:9").remote == "10.0.0.1:9"


def test_the_writer_is_a_named_daemon() -> None:
    client, transport = new_client(fast_path=False)
    transport.gate.clear()
    client.offer(text(1))
    assert [(t.name, t.daemon) for t in writer_of(client)] == [
        (f"sidecar-writer-{client.id}", True)
    ]
    transport.gate.set()


def test_a_write_error_without_a_message_is_named_by_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, transport = new_client(fast_path=False)

    def broken(buffers: object) -> None:
        raise OSError

    transport.send_all = broken  # type: ignore[method-assign]
    client.offer(text(1))
    wait_until(lambda: transport.shutdowns == 1)
    assert "write failed (OSError), dropped" in caplog.text


def test_the_read_loop_polls_and_goes_on_after_a_quiet_poll() -> None:
    client, transport = new_client()
    for item in ("", "a", "", "b", Ended()):
        transport.incoming.put(item)
    seen: list[str | bytes] = []
    client.read_loop(lambda c, m: seen.append(m), poll=0.25)
    assert seen == ["a", "b"]
    assert set(transport.receives) == {0.25}


def test_the_read_loop_waits_with_no_timeout_by_default() -> None:
    """An idle connection's request thread never wakes (a 5 s poll woke 2,000 threads a
    second at 10,000 connections)."""
    client, transport = new_client()
    transport.incoming.put(Ended())
    client.read_loop(lambda c, m: None)
    assert transport.receives == [None]


def test_a_close_on_the_request_thread_carries_its_reason() -> None:
    client, transport = new_client()
    client.request_close(4000, "bye", may_block=True)
    assert transport.closes == [(4000, "bye", True)]


def test_close_carries_its_code_and_reason() -> None:
    close = Close(4000, "go away")
    assert (close.code, close.reason, close.args) == (4000, "go away", (4000, "go away"))


def test_finish_bounds_each_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "SHUTDOWN_WAKES_READERS", True)  # POSIX
    client, transport = new_client()
    transport.reader_done = False
    started = time.monotonic()
    client.finish(close_timeout=0.5)
    assert time.monotonic() - started < 0.5
    first, second = transport.joins
    assert 0.3 < first <= 0.5 and second == 1.0


def test_finish_lingers_only_for_what_is_left_of_the_close_timeout() -> None:
    client, transport = new_client()
    client.finish(close_timeout=0.5)
    assert len(transport.lingered) == 1 and 0.3 < transport.lingered[0] <= 0.5


def test_finish_gives_up_on_a_writer_that_never_ends() -> None:
    client, transport = new_client(fast_path=False)
    stuck = threading.Event()

    def never(buffers: object) -> None:
        transport.in_send_all.set()
        stuck.wait(2 * PATIENCE)  # ignores the shutdown, as a wedged write would

    transport.send_all = never  # type: ignore[method-assign]
    client.offer(text(1))
    assert transport.in_send_all.wait(PATIENCE)
    started = time.monotonic()
    client.finish(close_timeout=0.05)
    elapsed = time.monotonic() - started
    stuck.set()
    assert 1.0 <= elapsed < 1.5  # the close timeout, then one more second after the shutdown
    assert transport.shutdowns == 1


@pytest.mark.parametrize(
    ("failure", "fields"),
    [
        (Close(4000, "go away"), {"code": 4000, "reason": "go away"}),
        (MessageTooBig(13, 12), {"code": CloseCode.TOO_BIG, "reason": None}),
    ],
)
def test_a_close_from_the_read_loop_is_logged_with_the_client_and_code(
    failure: Exception, fields: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    client, transport = new_client()
    if isinstance(failure, MessageTooBig):
        transport.incoming.put(failure)
    else:
        transport.incoming.put("x")

    def handler(_client: Client, _message: str | bytes) -> None:
        raise failure

    caplog.set_level(logging.INFO, "sidecar.client")
    client.read_loop(handler, poll=0.01)
    [record] = [r for r in caplog.records if r.name == "sidecar.client"]
    found = {key: getattr(record, key, None) for key in ("client", "code", "reason")}
    assert found == {"client": client.id, **fields}
