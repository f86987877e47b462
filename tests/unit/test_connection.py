"""The guarded socket and the connection over a socketpair, with a real simple-websocket Server.

The rule under test is "nothing is written after a close frame", whoever writes: our own
writes (the fast path, the writer, the request thread's close), and the library's (its close
reply, its pongs, its 1009). Also: the outcomes of a non-blocking write, one close frame per
connection, aborts, the write deadline, and ``receive`` (its end, the UTF-8 size limit).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from sidecar import frames
from sidecar.core.connection import Ended, GuardedSocket, MessageTooBig, SendResult
from sidecar.platform import nonblocking_send_flag
from sidecar.protocol import CloseCode
from tests.unit.conftest import WireFactory
from tests.unit.fakes import PATIENCE, FakeClock
from tests.unit.wire import TINY_BUFFER, Writer, fill, socket_pair

BIG = frames.text_frame(b"x" * (1 << 20))
SMALL = frames.text_frame(b'{"small":1}')
#: The non-blocking fast path (``try_send``, a non-blocking close, an abort's close frame)
#: exists only where a send can be made non-blocking per call.
FAST_PATH = pytest.mark.posix_only(
    "the fast path needs MSG_DONTWAIT; Windows has none: try_send is always BUSY there and"
    " every frame goes through send_all (test_on_windows_* below)"
)
#: What ``try_send`` answers once the connection is dead: DEAD, or BUSY without a fast path.
DEAD = SendResult.DEAD if nonblocking_send_flag() is not None else SendResult.BUSY


def opcodes(got: list[frames.Frame]) -> list[int]:
    return [f.opcode for f in got]


# -- try_send -----------------------------------------------------------------------------------


@FAST_PATH
def test_try_send_writes_whole_frames_at_once(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    assert wire.conn.try_send(SMALL) is SendResult.SENT
    assert wire.conn.try_send((SMALL, SMALL)) is SendResult.SENT
    assert [f.payload for f in peer.frames(3)] == [b'{"small":1}'] * 3


@FAST_PATH
def test_a_partial_write_leaves_a_tail_that_blocks_later_writes(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    assert wire.conn.try_send(BIG) is SendResult.PARTIAL
    assert wire.conn.try_send(SMALL) is SendResult.BUSY  # the tail goes first
    assert wire.conn.try_send((SMALL,)) is SendResult.BUSY
    flush = Writer(lambda: wire.conn.send_all([SMALL]))
    got = peer.frames(2)
    assert flush.wait() is None
    assert [len(f.payload) for f in got] == [1 << 20, len(b'{"small":1}')]
    assert wire.conn.try_send(SMALL) is SendResult.SENT


@FAST_PATH
def test_a_partial_write_of_several_buffers_keeps_their_order(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    assert wire.conn.try_send((SMALL, BIG, SMALL)) is SendResult.PARTIAL
    flush = Writer(lambda: wire.conn.send_all([]))
    got = peer.frames(3)
    assert flush.wait() is None
    assert [len(f.payload) for f in got] == [11, 1 << 20, 11]


@FAST_PATH
def test_a_full_buffer_keeps_the_whole_frame_pending(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    filler = fill(wire.raw)
    assert wire.conn.try_send(SMALL) is SendResult.PARTIAL  # nothing went: all of it waits
    assert wire.conn.try_send((SMALL,)) is SendResult.BUSY
    flush = Writer(lambda: wire.conn.send_all([]))
    peer.discard(filler)
    assert [f.payload for f in peer.frames(1)] == [b'{"small":1}']
    assert flush.wait() is None and peer.quiet()


@FAST_PATH
def test_a_full_buffer_keeps_several_buffers_pending(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    filler = fill(wire.raw)
    assert wire.conn.try_send((SMALL, SMALL)) is SendResult.PARTIAL
    flush = Writer(lambda: wire.conn.send_all([]))
    peer.discard(filler)
    assert len(peer.frames(2)) == 2
    assert flush.wait() is None


@FAST_PATH
def test_try_send_is_busy_while_another_thread_holds_the_lock(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    with wire.conn.socket.lock:
        assert wire.conn.try_send(SMALL) is SendResult.BUSY
    assert peer.quiet()
    assert wire.conn.try_send(SMALL) is SendResult.SENT


@FAST_PATH
def test_try_send_after_the_peer_is_gone_is_dead() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    theirs.close()
    assert guarded.try_send(SMALL) is SendResult.DEAD
    assert guarded.closed
    assert guarded.try_send((SMALL, SMALL)) is SendResult.DEAD
    other, gone = socket_pair()
    gone.close()
    assert GuardedSocket(other, write_deadline=1).try_send((SMALL,)) is SendResult.DEAD
    ours.close()
    other.close()


# -- one close frame, nothing after it ----------------------------------------------------------


@FAST_PATH
def test_nothing_is_written_after_our_close_frame(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    assert wire.conn.close(CloseCode.GOING_AWAY, "bye")
    assert not wire.conn.is_open
    assert wire.conn.try_send(SMALL) is SendResult.DEAD
    wire.conn.send_all([SMALL])
    assert wire.conn.close(CloseCode.NORMAL) is True  # once: the second writes nothing
    peer.send(frames.OP_PING, b"are you there")  # the library's pong must not follow either
    peer.close()
    assert wire.conn.join_reader(PATIENCE)
    wire.conn.shutdown()
    got = peer.to_eof()
    assert opcodes(got) == [frames.OP_CLOSE]
    assert got[0].payload == frames.close_payload(1001, b"bye")
    assert wire.conn.ended_by() == "server-close-1001"


@FAST_PATH
def test_nothing_is_written_after_the_librarys_close_reply(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.close(4321)
    assert wire.conn.join_reader(PATIENCE)
    assert wire.conn.socket.closed_by_library
    assert wire.conn.try_send(SMALL) is SendResult.DEAD
    assert wire.conn.close(CloseCode.NORMAL)  # nothing left to write: done
    wire.conn.shutdown()
    got = peer.to_eof()
    assert [f.close_code for f in got] == [4321]
    assert wire.conn.ended_by() == "client-close-4321"
    with pytest.raises(Ended):
        wire.conn.receive(timeout=1)
    assert wire.conn.peer_close is None or wire.conn.peer_close == 4321


def test_the_librarys_writes_are_cut_after_a_close_frame() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + frames.close_frame(1000)
    assert guarded.send(head) == len(head)  # the 101 is written whole, whatever it holds
    pong = frames.frame(frames.OP_PONG, b"p")
    burst = pong + frames.close_frame(1002) + SMALL
    assert guarded.send(bytearray(burst)) == len(burst)  # reported as sent in full
    assert guarded.send(pong) == len(pong)
    assert (guarded.sent_close, guarded.closed_by_library) == (1002, True)
    ours.shutdown(socket.SHUT_RDWR)
    data = b"".join(iter(lambda: theirs.recv(65536), b""))
    assert data == head + pong + frames.close_frame(1002)
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (frames.build_frame(frames.OP_TEXT, b"x", rsv=4), CloseCode.PROTOCOL_ERROR),
        (frames.build_frame(0xB, b"x"), CloseCode.PROTOCOL_ERROR),
        (frames.build_frame(frames.OP_CLOSE, frames.close_payload(4321)), 4321),
    ],
    ids=["rsv", "reserved-opcode", "peer-close"],
)
def test_a_close_after_the_library_decided_to_close_never_overtakes_its_close_frame(
    make_wire: WireFactory, frame: bytes, code: int
) -> None:
    """The library wakes ``receive`` before it writes its close frame; ours must wait for it.

    The library's write is held at a gate, so the window that a busy machine opens about once
    in a hundred sessions stays open here every time.
    """
    wire, peer = make_wire()
    guarded = wire.conn.socket
    library_send, entered, gate = guarded.send, threading.Event(), threading.Event()

    def held(data: bytes | bytearray) -> int:
        if bytes(data[:1]) == bytes((0x80 | frames.OP_CLOSE,)):
            entered.set()
            gate.wait(PATIENCE)
        return library_send(data)

    guarded.send = held  # type: ignore[method-assign]

    def session_end() -> None:
        with pytest.raises(Ended):
            while True:
                wire.conn.receive(timeout=PATIENCE)
        wire.conn.close(CloseCode.NORMAL)  # what the session does once receive has ended

    peer.sock.sendall(frame)
    assert entered.wait(PATIENCE), "the library never wrote a close frame"
    ending = Writer(session_end)
    assert not ending.done.wait(0.2), "receive ended before the library's close frame was out"
    gate.set()
    assert ending.wait() is None
    wire.conn.shutdown()
    assert [f.close_code for f in peer.to_eof()] == [code]


def test_the_librarys_1009_counts_as_the_servers_close(make_wire: WireFactory) -> None:
    wire, peer = make_wire(max_message_size=10)
    peer.send(frames.OP_TEXT, b"x" * 11)
    assert [f.close_code for f in peer.frames(1)] == [CloseCode.TOO_BIG]
    assert wire.conn.join_reader(PATIENCE)
    assert wire.conn.ended_by() == "server-close-1009"


def test_a_session_without_close_frames_ended_by_eof(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.sock.shutdown(socket.SHUT_WR)
    assert wire.conn.join_reader(PATIENCE)
    assert wire.conn.ended_by() == "eof"
    with pytest.raises(Ended):
        wire.conn.receive(timeout=1)


@FAST_PATH
def test_a_blocking_close_flushes_the_pending_tail_first(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    assert wire.conn.try_send(BIG) is SendResult.PARTIAL
    assert not wire.conn.close(CloseCode.NORMAL, block=False)  # a tail waits: not now
    assert wire.conn.is_open
    closing = Writer(lambda: wire.conn.close(4000, "later", block=True))
    got = peer.frames(2)
    assert closing.wait() is None
    assert opcodes(got) == [frames.OP_TEXT, frames.OP_CLOSE]
    assert got[1].close_code == 4000


def test_a_non_blocking_close_gives_up_while_the_lock_is_held(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    with wire.conn.socket.lock:
        assert not wire.conn.close(CloseCode.NORMAL, block=False)
    assert wire.conn.is_open and peer.quiet()


@FAST_PATH
def test_a_close_frame_that_does_not_fit_is_flushed_by_the_next_blocking_write(
    make_wire: WireFactory,
) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    filler = fill(wire.raw)
    assert not wire.conn.close(4001, "resume", block=False)  # written later, by send_all
    assert not wire.conn.is_open
    assert wire.conn.try_send(SMALL) is SendResult.DEAD
    flush = Writer(lambda: wire.conn.send_all([SMALL]))  # SMALL is dropped, the tail is not
    peer.discard(filler)
    assert flush.wait() is None
    wire.conn.shutdown()
    got = peer.to_eof()
    assert [(f.opcode, f.close_code) for f in got] == [(frames.OP_CLOSE, 4001)]


# -- abort and the write deadline -----------------------------------------------------------------


@FAST_PATH
def test_abort_sends_a_close_frame_and_shuts_down(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    got = peer.to_eof()
    assert [f.close_code for f in got] == [CloseCode.SLOW_CONSUMER]
    assert wire.conn.try_send(SMALL) is SendResult.DEAD
    assert wire.conn.ended_by() == "server-close-4008"


@FAST_PATH
def test_abort_while_a_writer_holds_the_lock_wakes_it_and_adds_nothing(
    make_wire: WireFactory,
) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    blocked = Writer(lambda: wire.conn.send_all([BIG, BIG]))
    while not wire.conn.socket.lock.locked():
        pass
    started = time.monotonic()
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    assert time.monotonic() - started < 0.5  # never waits for the lock
    assert isinstance(blocked.wait(), OSError)
    peer.sock.settimeout(5)
    data = b"".join(iter(lambda: peer.sock.recv(1 << 20), b""))
    assert len(data) < 2 * len(BIG)
    assert all(f.opcode == frames.OP_TEXT for f in frames.FrameParser().feed(data))
    assert wire.conn.try_send(SMALL) is SendResult.DEAD


@FAST_PATH
def test_abort_with_a_tail_pending_sends_no_close_frame(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    assert wire.conn.try_send(BIG) is SendResult.PARTIAL
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    data = b"".join(iter(lambda: peer.sock.recv(1 << 20), b""))
    assert 0 < len(data) < len(BIG)  # cut, but no close frame inside a frame
    assert wire.conn.socket.sent_close is None  # the client says why (client.ended_by)


def test_a_write_that_makes_no_progress_fails_at_the_deadline(make_wire: WireFactory) -> None:
    wire, _peer = make_wire(sndbuf=TINY_BUFFER, write_deadline=0.1)
    started = time.monotonic()
    writer = Writer(lambda: wire.conn.send_all([BIG]))
    assert isinstance(writer.wait(), OSError)
    assert 0.08 <= time.monotonic() - started < 3


# -- receive ------------------------------------------------------------------------------------


def test_receive_returns_messages_and_none_after_the_timeout(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.send(frames.OP_TEXT, "héllo".encode())
    peer.send(frames.OP_BINARY, b"\x00\x01")
    assert wire.conn.receive(timeout=PATIENCE) == "héllo"
    assert wire.conn.receive(timeout=PATIENCE) == b"\x00\x01"
    assert wire.conn.receive(timeout=0.01) is None


def test_the_inbound_limit_counts_utf8_bytes_not_characters(make_wire: WireFactory) -> None:
    wire, peer = make_wire(max_message_size=12)
    peer.send(frames.OP_TEXT, ("é" * 6).encode())  # 12 bytes: at the limit
    assert wire.conn.receive(timeout=PATIENCE) == "é" * 6
    peer.send(frames.OP_TEXT, "aé€".encode() * 2)  # 6 characters, 12 bytes
    assert wire.conn.receive(timeout=PATIENCE) == "aé€" * 2
    peer.send(frames.OP_TEXT, ("é" * 6 + "a").encode())  # 7 characters, 13 bytes
    with pytest.raises(MessageTooBig) as info:
        wire.conn.receive(timeout=PATIENCE)
    assert (info.value.size, info.value.limit) == (13, 12)
    assert str(info.value) == "message of 13 bytes; the limit is 12"
    peer.send(frames.OP_TEXT, b"a" * 3)  # the connection itself is still usable
    assert wire.conn.receive(timeout=PATIENCE) == "aaa"


def test_receive_ends_when_the_peer_closes(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.close(1000)
    with pytest.raises(Ended):
        while True:
            wire.conn.receive(timeout=PATIENCE)
    assert [f.close_code for f in peer.frames(1)] == [1000]


def test_receive_ends_at_once_after_our_close(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    waiting = Writer(lambda: wire.conn.receive(timeout=10))
    wire.conn.close(CloseCode.NORMAL)
    assert isinstance(waiting.wait(2), Ended)
    peer.send(frames.OP_TEXT, b"late")
    with pytest.raises(Ended):
        wire.conn.receive(timeout=10)


def test_receive_before_the_handshake_is_over_is_the_end() -> None:
    from sidecar.core.connection import Connection

    ours, theirs = socket_pair()
    conn = Connection(ours, write_deadline=1, max_message_size=10)
    with pytest.raises(Ended):
        conn.receive(timeout=1)
    assert not conn.join_reader(0) and conn.ended_by() == "eof"
    ours.close()
    theirs.close()


def test_last_received_follows_the_injected_clock(make_wire: WireFactory) -> None:
    clock = FakeClock(50.0)
    wire, peer = make_wire(clock=clock)
    assert wire.conn.last_received == 50.0
    clock.advance(7)
    peer.send(frames.OP_PONG)
    deadline = time.monotonic() + 5
    while wire.conn.last_received != 57.0 and time.monotonic() < deadline:
        wire.conn.receive(timeout=0.01)
    assert wire.conn.last_received == 57.0


def test_linger_reads_to_the_peers_eof_and_is_bounded(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.close(1000)
    assert wire.conn.join_reader(PATIENCE)
    started = time.monotonic()
    wire.conn.linger(0.1)  # the peer never hangs up: the timeout ends it
    assert 0.08 <= time.monotonic() - started < 2
    assert [f.close_code for f in peer.to_eof()] == [1000]


def test_the_peers_hangup_ends_linger_at_once() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    theirs.sendall(b"trailing bytes")
    theirs.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    guarded.linger(5)
    assert time.monotonic() - started < 1
    assert theirs.recv(10) == b""  # our FIN
    assert guarded.try_send(SMALL) is DEAD
    ours.close()
    theirs.close()


def test_linger_stops_reading_after_max_bytes() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    theirs.sendall(b"x" * 3000)
    started = time.monotonic()
    guarded.linger(5, max_bytes=1000)
    assert time.monotonic() - started < 1
    ours.close()
    theirs.close()


# -- details a peer can see -----------------------------------------------------------------------


@FAST_PATH
def test_a_close_by_default_carries_no_reason_and_waits_for_a_tail(
    make_wire: WireFactory,
) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    assert wire.conn.try_send(BIG) is SendResult.PARTIAL
    closing = Writer(lambda: wire.conn.close(4000))  # blocks until the tail is out
    got = peer.frames(2)
    assert closing.wait() is None
    assert got[1].payload == frames.close_payload(4000)
    wire2, peer2 = make_wire()
    assert wire2.conn.socket.send_close(1000, block=True)
    assert peer2.frames(1)[0].payload == frames.close_payload(1000)


@FAST_PATH
def test_a_non_blocking_close_on_an_idle_connection_goes_at_once(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    assert wire.conn.close(4001, "resume", block=False) is True
    assert peer.frames(1)[0].payload == frames.close_payload(4001, b"resume")
    assert wire.conn.close(CloseCode.NORMAL, block=False) is True  # done already: nothing more
    wire.conn.shutdown()
    assert peer.to_eof() == []


@FAST_PATH
def test_non_blocking_writes_on_a_full_buffer_never_wait(make_wire: WireFactory) -> None:
    wire, peer = make_wire(sndbuf=TINY_BUFFER)
    filler = fill(wire.raw)
    started = time.monotonic()
    assert wire.conn.try_send((SMALL, SMALL)) is SendResult.PARTIAL
    assert time.monotonic() - started < 1.0  # the write deadline (5 s) is not waited for
    flush = Writer(lambda: wire.conn.send_all([]))
    peer.discard(filler)
    assert flush.wait() is None
    filler = fill(wire.raw)
    started = time.monotonic()
    assert not wire.conn.close(4001, block=False)
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    assert time.monotonic() - started < 1.0
    assert not wire.conn.is_open


@FAST_PATH
def test_thousands_of_buffers_go_out_in_order(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    many = tuple(frames.text_frame(b"%d" % i) for i in range(2000))
    assert wire.conn.try_send(many) in (SendResult.SENT, SendResult.PARTIAL)
    flush = Writer(lambda: wire.conn.send_all(many))
    got = peer.frames(4000)
    assert flush.wait() is None
    assert [int(f.payload) for f in got] == list(range(2000)) * 2


@FAST_PATH
def test_abort_sends_its_reason_and_counts_as_closed(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    wire.conn.abort(4008, "slow consumer")
    assert peer.to_eof()[0].payload == frames.close_payload(4008, b"slow consumer")
    wire2, _peer2 = make_wire(sndbuf=TINY_BUFFER)
    assert wire2.conn.try_send(BIG) is SendResult.PARTIAL
    wire2.conn.abort(4008, "slow consumer")  # no close frame fits behind the tail
    assert not wire2.conn.is_open


def test_a_library_write_to_a_dead_socket_closes_the_guard() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    guarded.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    theirs.close()
    pong = frames.frame(frames.OP_PONG, b"")
    assert guarded.send(pong) == len(pong)  # swallowed
    assert guarded.closed
    ours.close()


def test_linger_returns_at_the_peers_hangup_and_leaves_the_socket_closed() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    theirs.shutdown(socket.SHUT_WR)  # nothing more to read: only the EOF
    started = time.monotonic()
    guarded.linger(5)
    assert time.monotonic() - started < 1
    assert guarded.closed and guarded.try_send(SMALL) is DEAD
    ours.close()
    theirs.close()


def test_binary_messages_are_the_librarys_to_limit(make_wire: WireFactory) -> None:
    wire, peer = make_wire(max_message_size=12)
    peer.send(frames.OP_BINARY, b"\x00" * 10)
    assert wire.conn.receive(timeout=PATIENCE) == b"\x00" * 10


def test_an_eof_is_reported_after_receive_has_seen_it(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    peer.sock.shutdown(socket.SHUT_WR)
    assert wire.conn.join_reader(PATIENCE)
    with pytest.raises(Ended):
        wire.conn.receive(timeout=1)
    assert wire.conn.peer_close == CloseCode.NO_STATUS
    assert wire.conn.ended_by() == "eof"


def test_join_reader_with_no_time_left_does_not_wait() -> None:
    from sidecar.core.connection import Connection

    ours, theirs = socket_pair()
    conn = Connection(ours, write_deadline=1, max_message_size=10)
    started = time.monotonic()
    assert not conn.join_reader(0) and not conn.join_reader(-1)
    assert time.monotonic() - started < 0.5
    ours.close()
    theirs.close()


def test_the_reader_thread_is_a_named_daemon_that_logs_how_it_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sidecar.core.connection import Connection

    caplog.set_level(logging.DEBUG, "sidecar.connection")
    ours, theirs = socket_pair()
    conn = Connection(ours, write_deadline=1, max_message_size=10)

    def target() -> None:
        raise ValueError("the library's race")

    thread = conn.reader_thread(target)
    assert (thread.name, thread.daemon) == ("sidecar-reader", True)
    thread.start()
    assert conn.join_reader(PATIENCE)
    assert [r.getMessage() for r in caplog.records] == [
        'reader thread ended: ValueError("the library\'s race")'
    ]
    ours.close()
    theirs.close()


def test_linger_reads_on_until_the_peer_hangs_up() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    lingering = Writer(lambda: guarded.linger(PATIENCE))
    theirs.sendall(b"the rest of a message")  # input before the peer's EOF: read and dropped
    assert not lingering.done.wait(0.1)  # still waiting for the EOF
    theirs.sendall(b"more")
    assert not lingering.done.wait(0.05)
    theirs.shutdown(socket.SHUT_WR)
    assert lingering.wait() is None
    ours.close()
    theirs.close()


def test_linger_gives_up_after_max_bytes_of_input() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    stop = threading.Event()

    def flood() -> None:
        chunk = b"x" * 16384
        try:
            while not stop.is_set():
                theirs.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    started = time.monotonic()
    guarded.linger(PATIENCE, max_bytes=200_000)
    elapsed = time.monotonic() - started
    stop.set()
    theirs.close()
    sender.join(PATIENCE)
    ours.close()
    assert elapsed < PATIENCE / 2  # the byte budget ended it, not the timeout


@FAST_PATH
def test_abort_on_a_full_buffer_never_waits(make_wire: WireFactory) -> None:
    wire, _peer = make_wire(sndbuf=TINY_BUFFER)
    fill(wire.raw)
    started = time.monotonic()
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")  # the close frame cannot go
    assert time.monotonic() - started < 1.0  # the write deadline (5 s) is not waited for
    assert not wire.conn.is_open


@pytest.mark.posix_only(
    "after a shutdown Winsock's recv fails (WSAESHUTDOWN) and select never reports the socket"
    " readable; werkzeug's last read selects for 0.01 s first, so it does not wait there either"
)
def test_after_linger_reads_see_the_end_at_once() -> None:
    ours, theirs = socket_pair()
    guarded = GuardedSocket(ours, write_deadline=1)
    guarded.linger(0.05)  # the peer never hangs up
    ours.settimeout(PATIENCE)
    assert ours.recv(1) == b""  # what the WSGI server's last read gets: no wait, no error
    ours.close()
    theirs.close()


# -- Windows: no fast path ------------------------------------------------------------------


@pytest.mark.windows_only("what replaces the fast path where there is no MSG_DONTWAIT")
def test_on_windows_try_send_never_writes_and_send_all_keeps_the_close_rule(
    make_wire: WireFactory,
) -> None:
    wire, peer = make_wire()
    assert wire.conn.try_send(SMALL) is SendResult.BUSY
    assert peer.quiet()
    wire.conn.send_all([SMALL])
    assert [f.payload for f in peer.frames(1)] == [b'{"small":1}']
    assert wire.conn.close(CloseCode.GOING_AWAY, "bye")
    wire.conn.send_all([SMALL])  # after our close frame: nothing
    assert [f.close_code for f in peer.frames(1)] == [CloseCode.GOING_AWAY]
    assert peer.quiet()


@pytest.mark.windows_only("an abort writes nothing where a write cannot be non-blocking")
def test_on_windows_abort_shuts_down_without_a_close_frame(make_wire: WireFactory) -> None:
    wire, peer = make_wire()
    started = time.monotonic()
    wire.conn.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    assert time.monotonic() - started < 0.5
    assert peer.to_eof() == []
    assert not wire.conn.is_open and wire.conn.try_send(SMALL) is SendResult.BUSY


class Quiet:
    """The library's ``Server`` when its wait ended with no message (a wake-up, a timeout)."""

    def receive(self, timeout: float | None = None) -> bytes | str | None:
        return None


def test_receive_ends_once_the_reader_thread_has_ended_even_if_the_library_says_nothing() -> None:
    from sidecar.core.connection import Connection

    ours, theirs = socket_pair()
    conn = Connection(ours, write_deadline=1, max_message_size=10)
    conn.attach(Quiet())
    assert conn.receive(timeout=0.01) is None  # no reader has ended: only a poll
    thread = conn.reader_thread(lambda: None)  # its loop returned (the library stopped)
    thread.start()
    assert conn.join_reader(PATIENCE)
    with pytest.raises(Ended):
        conn.receive(timeout=0.01)
    ours.close()
    theirs.close()


def test_join_reader_waits_no_longer_than_it_is_given() -> None:
    from sidecar.core.connection import Connection

    ours, theirs = socket_pair()
    conn = Connection(ours, write_deadline=1, max_message_size=10)
    release = threading.Event()
    conn.reader_thread(lambda: release.wait(2 * PATIENCE)).start()
    started = time.monotonic()
    assert not conn.join_reader(0.05)
    assert time.monotonic() - started < 0.5
    release.set()
    assert conn.join_reader(PATIENCE)
    ours.close()
    theirs.close()
