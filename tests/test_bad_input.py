"""Bad input over raw sockets: each protocol violation gets the close code RFC 6455 asks for.

Every case runs on the conformance app's ``/echo`` (the machinery of ``/ws``; see
:mod:`sidecar.conformance`) unless it needs ``/ws`` itself. After the server's close frame the
test answers it and then requires EOF with no further bytes. No log record may carry a
traceback and no thread may die of an uncaught exception.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from sidecar.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from tests.conftest import TOKEN, RunningSidecar, wait_for
from tests.rawws import Problems, RawWS, build_frame, close_payload, start_conformance

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

#: Inbound message limit of the test server, in bytes.
LIMIT = 4096


@pytest.fixture(scope="module")
def echo_server() -> Iterator[RunningSidecar]:
    """One conformance server for the module (limit :data:`LIMIT`)."""
    running = start_conformance(max_message_size=LIMIT)
    yield running
    running.close()


@pytest.fixture(autouse=True)
def no_problems() -> Iterator[Problems]:
    """Fail the test if a traceback is logged or a thread dies."""
    problems = Problems().install()
    yield problems
    problems.uninstall()
    assert not problems.found, "\n".join(problems.found)


def connect(server: RunningSidecar, path: str = "/echo", **options: object) -> RawWS:
    """A raw WebSocket to ``server`` with the test token."""
    return RawWS.connect(server.port, path, token=TOKEN, timeout=5.0, **options)  # type: ignore[arg-type]


def expect_close(ws: RawWS, code: int, timeout: float = 2.0, reply: bool = True) -> None:
    """The server closes with ``code``; after our reply the stream ends with no more bytes.

    ``reply=False`` when the client has already sent a close frame of its own (even a bad one).
    """
    with ws:
        got = ws.read_close(timeout=timeout, reply=reply)
        assert got == code, f"expected close {code}, got {'EOF' if got is None else got}"
        assert ws.read_eof(timeout=timeout) == b"", "bytes after the close frame"


def echo_roundtrip(ws: RawWS, opcode: int, payload: bytes) -> None:
    """Send one message and require it back, unchanged."""
    ws.send_frame(opcode, payload)
    frame = ws.read_message(timeout=2.0)
    assert frame is not None, "EOF instead of the echo"
    assert (frame.opcode, frame.payload, frame.fin, frame.rsv) == (opcode, payload, True, 0)


# -- sanity: the same server echoes what is valid ------------------------------------------------


def test_valid_messages_are_echoed_up_to_the_limit(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    echo_roundtrip(ws, OP_TEXT, "κόσμε".encode())
    echo_roundtrip(ws, OP_BINARY, bytes(range(256)) * (LIMIT // 256))
    echo_roundtrip(ws, OP_TEXT, b"")
    ws.send_close(1000)
    expect_close(ws, 1000)


# -- size limits: 1009, before the message ends ----------------------------------------------------


def test_oversized_frame_closes_1009_before_its_end(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    frame = build_frame(OP_BINARY, bytes(1 << 20))
    ws.send_raw(frame[: 14 + 2 * LIMIT])  # header + twice the limit; never the rest
    expect_close(ws, 1009)


def test_oversized_by_fragments_closes_1009_before_fin(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"a" * 1024, fin=False)
    for _ in range(LIMIT // 1024 + 1):
        ws.send_frame(OP_CONT, b"a" * 1024, fin=False)  # never a FIN
    expect_close(ws, 1009)


def test_multibyte_text_limit_counts_bytes(echo_server: RunningSidecar) -> None:
    """The limit is in bytes (``Config.max_message_size``), also for non-ASCII text."""
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, "é".encode() * (LIMIT // 2 + 1))  # LIMIT + 2 bytes
    expect_close(ws, 1009)


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def test_deflate_bomb_closes_1009_with_bounded_memory() -> None:
    """256 MiB of zeros deflated to ~250 KiB: the server stops at the limit, not at the end."""
    server = start_conformance(max_message_size=64 * 1024, compression=True)
    try:
        ws = connect(server, extensions="permessage-deflate; client_max_window_bits")
        assert "permessage-deflate" in ws.headers.get("sec-websocket-extensions", "")
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = bytes(1 << 20)
        bomb = b"".join(squeeze.compress(chunk) for _ in range(256))
        bomb += squeeze.flush(zlib.Z_SYNC_FLUSH)
        assert bomb.endswith(b"\x00\x00\xff\xff")
        bomb = bomb[:-4]
        # A small compressed message first: compression really works on this connection.
        small = zlib.compressobj(9, zlib.DEFLATED, -15)
        hello = small.compress(b"hello") + small.flush(zlib.Z_SYNC_FLUSH)
        ws.send_frame(OP_TEXT, hello[:-4], rsv=4)
        echoed = ws.read_message(timeout=2.0)
        assert echoed is not None and echoed.opcode == OP_TEXT
        sampled = _peak_rss_reset()
        before_kib = _status_kib("VmRSS")
        peak = [before_kib]
        stop = threading.Event()

        def sample() -> None:  # a fallback where the peak cannot be reset
            while not stop.wait(0.002):
                peak[0] = max(peak[0], _status_kib("VmRSS"))

        sampler = None
        if not sampled:
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        ws.send_raw(build_frame(OP_BINARY, bomb, rsv=4))
        expect_close(ws, 1009, timeout=5.0)
        stop.set()
        if sampler:
            sampler.join(1)
        peak_kib = _status_kib("VmHWM") if sampled else peak[0]
        grown_mib = (peak_kib - before_kib) / 1024
        assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB for a 256 MiB bomb"
    finally:
        server.close()


# -- invalid UTF-8: 1007 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"abc\xce",  # truncated at the end of the message
        "κόσμε".encode() + b"\xed\xa0\x80edited",
    ],
    ids=["ff", "overlong", "surrogate", "above-max", "truncated", "mid-text"],
)
def test_invalid_utf8_text_closes_1007(echo_server: RunningSidecar, payload: bytes) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, payload)
    expect_close(ws, 1007)


def test_utf8_character_split_across_fragments_is_valid(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"\xce", fin=False)
    ws.send_frame(OP_PING, b"in between")
    ws.send_frame(OP_CONT, b"\xba", fin=True)
    frames = [ws.read_message(timeout=2.0) for _ in range(1)]
    assert frames[0] is not None and frames[0].payload == "κ".encode()
    ws.send_close(1000)
    expect_close(ws, 1000)


def test_invalid_utf8_split_across_fragments_closes_1007(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"ok \xce", fin=False)
    ws.send_frame(OP_CONT, b"\x41", fin=True)
    expect_close(ws, 1007)


def test_invalid_utf8_fails_fast_before_fin(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"fine so far \xff", fin=False)  # no continuation ever comes
    expect_close(ws, 1007)


def test_invalid_utf8_in_close_reason_closes_1007(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CLOSE, close_payload(1000, b"bye \xff"))
    expect_close(ws, 1007, reply=False)


# -- framing violations: 1002 ----------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING])
def test_reserved_bits_close_1002(echo_server: RunningSidecar, rsv: int, opcode: int) -> None:
    ws = connect(echo_server)
    ws.send_frame(opcode, b"x", rsv=rsv)
    expect_close(ws, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_close_1002(echo_server: RunningSidecar, opcode: int) -> None:
    ws = connect(echo_server)
    ws.send_frame(opcode, b"x")
    expect_close(ws, 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
def test_unmasked_client_frame_closes_1002(echo_server: RunningSidecar, opcode: int) -> None:
    ws = connect(echo_server)
    payload = close_payload(1000) if opcode == OP_CLOSE else b"x"
    ws.send_frame(opcode, payload, mask=False)
    expect_close(ws, 1002, reply=opcode != OP_CLOSE)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frame_over_125_bytes_closes_1002(echo_server: RunningSidecar, opcode: int) -> None:
    ws = connect(echo_server)
    payload = close_payload(1000, b"r" * 124) if opcode == OP_CLOSE else b"p" * 126
    ws.send_frame(opcode, payload)
    expect_close(ws, 1002, reply=opcode != OP_CLOSE)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame_closes_1002(echo_server: RunningSidecar, opcode: int) -> None:
    ws = connect(echo_server)
    payload = close_payload(1000) if opcode == OP_CLOSE else b"frag"
    ws.send_frame(opcode, payload, fin=False)
    expect_close(ws, 1002, reply=opcode != OP_CLOSE)


@pytest.mark.parametrize("fin", [True, False])
def test_orphan_continuation_closes_1002(echo_server: RunningSidecar, fin: bool) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CONT, b"orphan", fin=fin)
    expect_close(ws, 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_new_message_inside_a_fragmented_one_closes_1002(
    echo_server: RunningSidecar, opcode: int
) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"first half", fin=False)
    ws.send_frame(opcode, b"not a continuation")
    expect_close(ws, 1002)


def test_non_minimal_length_closes_1002(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_TEXT, b"hi", length_form=16)
    expect_close(ws, 1002)


def test_length_with_the_high_bit_set_closes_1002(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_raw(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 63) + b"\x00" * 4)
    expect_close(ws, 1002)


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_invalid_close_code_closes_1002(echo_server: RunningSidecar, code: int) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CLOSE, close_payload(code, b"bad code"))
    expect_close(ws, 1002, reply=False)


def test_one_byte_close_payload_closes_1002(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CLOSE, b"\x03")
    expect_close(ws, 1002, reply=False)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 3000, 3999, 4000, 4999])
def test_valid_close_code_is_echoed(echo_server: RunningSidecar, code: int) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CLOSE, close_payload(code, b"fine"))
    with ws:
        frame = ws.read_frame(timeout=2.0)
        assert frame is not None and frame.opcode == OP_CLOSE and frame.close_code == code
        assert ws.read_eof(timeout=2.0) == b""


def test_empty_close_is_answered_with_an_empty_close(echo_server: RunningSidecar) -> None:
    ws = connect(echo_server)
    ws.send_frame(OP_CLOSE, b"")
    with ws:
        frame = ws.read_frame(timeout=2.0)
        assert frame is not None and frame.opcode == OP_CLOSE and frame.payload == b""
        assert ws.read_eof(timeout=2.0) == b""


# -- the peer vanishes: unregistered within 1 s ---------------------------------------------


def _registered_client(server: RunningSidecar, path: str) -> RawWS:
    """A client on ``path`` that the hub has registered (greeted on /ws, echoed on /echo)."""
    before = server.hub.client_count()
    ws = connect(server, path)
    if path == "/echo":
        echo_roundtrip(ws, OP_TEXT, b"registered")
        return ws
    greeting = ws.read_message(timeout=2.0)
    assert greeting is not None and b"connection:status" in greeting.payload
    wait_for(lambda: server.hub.client_count() == before + 1, timeout=1.0)
    return ws


def _wait_gone(server: RunningSidecar, before: int) -> None:
    """The client is out of the hub and its session has ended, within 1 s."""
    wait_for(lambda: server.hub.client_count() == before, timeout=1.0)
    wait_for(lambda: server.sidecar.sessions.active == 0, timeout=1.0)


@pytest.mark.parametrize("path", ["/ws", "/echo"])
@pytest.mark.parametrize("leave", ["reset", "fin"])
def test_a_client_gone_mid_frame_unregisters_within_1s(
    echo_server: RunningSidecar, path: str, leave: str
) -> None:
    """An abrupt RST, or a FIN without a close frame, in the middle of a frame."""
    before = echo_server.hub.client_count()
    with _registered_client(echo_server, path) as ws:
        ws.send_raw(build_frame(OP_TEXT, b"x" * 1000)[:300])  # half a frame
        if leave == "reset":
            ws.reset()
        else:
            ws.shutdown_write()
            rest = ws.read_eof(timeout=1.0)  # the server ends its side too
            assert not rest or rest[0] & 0x0F == OP_CLOSE, rest[:20]
    _wait_gone(echo_server, before)


# -- the closing handshake ends with FIN, never RST ------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (build_frame(OP_TEXT, b"x", rsv=2), 1002),
        (build_frame(OP_TEXT, b"\xff"), 1007),
        (build_frame(OP_BINARY, bytes(LIMIT + 1)), 1009),
        (build_frame(OP_CLOSE, close_payload(1000)), 1000),
    ],
    ids=["1002", "1007", "1009", "peer-initiated-1000"],
)
def test_closing_handshake_completes_without_reset(
    echo_server: RunningSidecar, frame: bytes, code: int
) -> None:
    """The server reads our close reply instead of resetting the connection (RFC 6455 7.1.1).

    A server that shuts its reading side down right after its close frame makes the kernel
    answer the peer's close reply with a RST: the peer sees EPIPE/ECONNRESET, and the WSGI
    server's end-of-request read fails.
    """
    baseline = threading.active_count()
    ws = connect(echo_server)
    with ws:
        ws.send_raw(frame)
        assert ws.read_close(timeout=2.0, reply=False) == code
        assert ws.read_eof(timeout=2.0) == b""  # the server's FIN
        if code != 1000:  # our close reply comes late, but it comes (RFC 6455 5.5.1)
            ws.send_close(code)
        ws.shutdown_write()
        # The request thread ends after the WSGI server has closed its socket.
        wait_for(lambda: threading.active_count() <= baseline, timeout=2.0)
        error = ws.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert error == 0, f"connection reset by the server (SO_ERROR {error})"


# -- the close code of a protocol error, every time ---------------------------------------------

#: One frame per kind of violation, and the close code each must get (a close frame the client
#: sends itself is answered with the code it carries, or 1002 when that code is invalid).
REPEATED: list[tuple[bytes, int]] = [
    (build_frame(OP_TEXT, b"x", rsv=4), 1002),
    (build_frame(0xB, b"x"), 1002),
    (build_frame(OP_BINARY, b"x", mask=False), 1002),
    (build_frame(OP_CONT, b"orphan"), 1002),
    (build_frame(OP_CLOSE, close_payload(1005)), 1002),
    (build_frame(OP_CLOSE, close_payload(4321)), 4321),
]
#: Attempts per kind: the race this guards against lost about 1 attempt in 100.
ROUNDS = 120


def test_protocol_errors_get_their_close_code_every_time_not_just_usually(
    echo_server: RunningSidecar,
) -> None:
    """Hundreds of attempts, with the interpreter switching threads as often as it can.

    The library decides to close (a protocol error, the peer's close frame) and wakes the
    session before it writes its close frame; a session that then wrote its own close frame
    first sent 1000 instead of 1002 (or of the peer's code) in about 1 % of attempts. With a
    tiny switch interval the window opens often enough that this many attempts find it.
    """
    wrong: dict[tuple[int, int | None], int] = {}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    deadline = time.monotonic() + 45
    try:
        for n in range(ROUNDS * len(REPEATED)):
            assert time.monotonic() < deadline, f"only {n} attempts in 45 s"
            frame, code = REPEATED[n % len(REPEATED)]
            with connect(echo_server) as ws:
                ws.send_raw(frame)
                got = ws.read_close(timeout=2.0, reply=False)
            if got != code:
                wrong[code, got] = wrong.get((code, got), 0) + 1
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, f"(expected, got): times, of {ROUNDS} per kind: {wrong}"
