"""A frame fuzzer: generated frame streams over raw sockets after a valid handshake.

Hypothesis builds streams of frames, valid and not: random FIN/RSV/opcode/mask/length forms,
fragmented messages split at random points with control frames inside, invalid UTF-8, close
frames with any code and reason, and random TCP segmentation of the byte stream. Each stream
goes to the conformance app's ``/echo`` (the machinery of ``/ws``, see :mod:`sidecar.conformance`).

A small model of RFC 6455 (:func:`expect`) says what the server must do with a stream: the
messages it echoes and the pings it answers before the first violation, and the close codes
it may end with. Properties, for every example:

* the echoes and pongs received are a prefix of the model's (a close may overtake an echo);
* the connection ends within 2 s with the model's close code (1000, 1002, 1007, 1009, or the
  peer's own valid code echoed back) or EOF, and then nothing but EOF follows;
* no log record carries a traceback and no thread dies of an uncaught exception;
* threads and file descriptors return to their baseline;
* a sentinel client on ``/ws`` receives a broadcast after every example, in order.

A second fuzzer mutates the opening handshake: never a 500, and a 101 only when it is valid.
"""

from __future__ import annotations

import codecs
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.envelope import new_event
from sidecar.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from tests.conftest import TOKEN, RunningSidecar, recv_json, wait_for
from tests.rawws import (
    Problems,
    RawWS,
    build_frame,
    close_payload,
    open_fds,
    start_conformance,
    wait_for_baseline,
)

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

#: Inbound limit of the fuzzed server (small, so that 1009 is reachable).
LIMIT = 1024
RESERVED_OPCODES = (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)
#: Close codes a client may send (RFC 6455 7.4, IANA registry as wsproto knows it).
VALID_CLOSE = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999)
INVALID_CLOSE = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
#: Registered (IANA: Bad Gateway) but unknown to wsproto, which parses the peer's close frame:
#: answered 1002. Either answer is acceptable; a hard-coded one would assert wsproto's table.
EITHER_CLOSE = {1014: {1014, 1002}}
MAX_EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "300"))


# -- the stream model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One frame to send."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    mask: bool = True
    length_form: int | None = None

    def encode(self) -> bytes:
        """The frame's bytes."""
        return build_frame(
            self.opcode,
            self.payload,
            fin=self.fin,
            rsv=self.rsv,
            mask=self.mask,
            length_form=self.length_form,
        )


@dataclass
class Expected:
    """What the server must do with a stream of frames."""

    echoes: list[tuple[int, bytes]] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    #: Acceptable close codes once the stream ends the connection; ``None``: it stays open.
    codes: set[int] | None = None
    #: How many frames the server reads before it closes (the rest need not be sent).
    used: int = 0


def _close_codes(payload: bytes) -> set[int]:
    if not payload:
        return {1005}  # answered with an empty close
    if len(payload) == 1:
        return {1002}
    (code,) = struct.unpack("!H", payload[:2])
    if code in EITHER_CLOSE:
        return EITHER_CLOSE[code] if _utf8(payload[2:]) else {1002, 1007}
    if code not in VALID_CLOSE and not 3000 <= code <= 4999:
        return {1002}
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return {1007}
    return {code}


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def expect(specs: list[Spec], limit: int = LIMIT) -> Expected:
    """Run the stream through a model of RFC 6455 as the sidecar implements it."""
    out = Expected()
    message_op: int | None = None
    message = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")()
    for index, spec in enumerate(specs):
        out.used = index + 1
        op, n = spec.opcode, len(spec.payload)
        control = op >= 8
        if (
            op in RESERVED_OPCODES
            or (control and (not spec.fin or n > 125))
            or (spec.length_form == 16 and n <= 125)
            or (spec.length_form == 64 and n <= 0xFFFF)
            or spec.rsv
            or not spec.mask
        ):
            out.codes = {1002}
            return out
        if control:
            if op == OP_PING:
                out.pongs.append(spec.payload)
            elif op == OP_CLOSE:
                out.codes = _close_codes(spec.payload)
                return out
            continue
        if (message_op is None) == (op == OP_CONT):
            out.codes = {1002}  # orphan continuation, or a new message inside one
            return out
        if message_op is None:
            message_op, message = op, bytearray()
            decoder = codecs.getincrementaldecoder("utf-8")()
        message += spec.payload
        bad_utf8 = False
        if message_op == OP_TEXT:
            try:
                decoder.decode(spec.payload, spec.fin)
            except UnicodeDecodeError:
                bad_utf8 = True
        too_big = len(message) > limit
        if bad_utf8 or too_big:
            # Within one frame the order depends on TCP segmentation: either code is right.
            out.codes = ({1007} if bad_utf8 else set()) | ({1009} if too_big else set())
            return out
        if spec.fin:
            out.echoes.append((message_op, bytes(message)))
            message_op = None
    return out


# -- strategies -------------------------------------------------------------------------------

_small_bytes = st.binary(max_size=40)
_repeated = st.tuples(st.binary(min_size=1, max_size=6), st.integers(1, 700)).map(
    lambda t: (t[0] * t[1])[:2200]
)
_valid_text = st.text(max_size=60).map(str.encode)
_invalid_text = st.tuples(
    _valid_text,
    st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xce"]),
    _valid_text,
).map(b"".join)
_payloads = st.one_of(_small_bytes, _valid_text, _invalid_text, _repeated)


@st.composite
def random_frame(draw: st.DrawFn) -> Spec:
    """Any frame: mostly plausible, sometimes broken in one or more ways."""
    opcode = draw(
        st.sampled_from(
            [OP_TEXT] * 4 + [OP_BINARY] * 3 + [OP_CONT] * 4 + [OP_PING] * 2 + [OP_PONG, OP_CLOSE]
        )
        | st.sampled_from(RESERVED_OPCODES)
    )
    if opcode == OP_CLOSE:
        code = draw(st.none() | st.sampled_from((*VALID_CLOSE, *INVALID_CLOSE, *EITHER_CLOSE)))
        reason = draw(st.just(b"") | _valid_text | _invalid_text)
        payload = close_payload(code, reason[:123] if code is not None else b"")
        if draw(st.integers(0, 20)) == 0:
            payload = payload[:1]
    else:
        payload = draw(_payloads)
    n = len(payload)
    forms: list[int | None] = [None] * 10 + ([16] if n <= 0xFFFF else []) + [64]
    return Spec(
        opcode,
        payload,
        fin=draw(st.sampled_from([True] * 3 + [False])),
        rsv=draw(st.sampled_from([0] * 12 + [1, 2, 4, 7])),
        mask=draw(st.sampled_from([True] * 20 + [False])),
        length_form=draw(st.sampled_from(forms)),
    )


@st.composite
def fragmented_message(draw: st.DrawFn) -> list[Spec]:
    """A valid message split into fragments (at any byte, UTF-8 included), pings between."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    payload = draw(_valid_text | _small_bytes | _repeated | _invalid_text)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    specs: list[Spec] = []
    for i, piece in enumerate(pieces):
        specs.append(Spec(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1))
        if i < len(pieces) - 1 and draw(st.booleans()):
            control = draw(st.sampled_from([OP_PING, OP_PONG]))
            specs.append(Spec(control, draw(st.binary(max_size=20))))
    return specs


streams = st.lists(
    st.one_of(random_frame().map(lambda s: [s]), fragmented_message()), min_size=1, max_size=6
).map(lambda groups: [spec for group in groups for spec in group])


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    """The server under test, its sentinel client and the baselines."""

    server: RunningSidecar
    sentinel: websocket.WebSocket
    problems: Problems
    threads: int
    fds: int
    broadcasts: int = 0

    def check_sentinel(self) -> None:
        """Broadcast one event; the sentinel must receive it next, in order."""
        self.broadcasts += 1
        assert self.server.hub.broadcast_event(new_event("test:fuzz", {"n": self.broadcasts}))
        event = recv_json(self.sentinel)
        assert event["type"] == "test:fuzz" and event["payload"]["n"] == self.broadcasts, event

    def check_baseline(self) -> None:
        """Threads and fds return to their baseline (within 2 s)."""
        wait_for_baseline(self.threads, self.fds, timeout=2.0)
        assert not self.problems.found, "\n".join(self.problems.found)


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    """A conformance server with a sentinel on ``/ws`` (module-wide: hypothesis reuses it)."""
    server = start_conformance(max_message_size=LIMIT)
    problems = Problems().install()
    try:
        sentinel, _status = server.connect_ready(timeout=2.0)
        probe = RawWS.connect(server.port, "/echo", token=TOKEN)  # warm up lazy imports
        probe.send_close(1000)
        probe.read_close(timeout=2.0)
        probe.read_eof(timeout=2.0)
        probe.close()
        wait_for(lambda: server.sidecar.sessions.active == 1, timeout=2.0)
        yield FuzzTarget(server, sentinel, problems, threading.active_count(), open_fds())
    finally:
        problems.uninstall()
        server.close()
    assert not problems.found, "\n".join(problems.found)


# -- the frame fuzzer -------------------------------------------------------------------------


def _send_stream(ws: RawWS, data: bytes, splits: list[int]) -> None:
    cuts = sorted({min(s, len(data)) for s in splits})
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        if a < b and not ws.send_raw(data[a:b]):
            return  # the server has closed: the rest is moot


def _run_stream(target: FuzzTarget, specs: list[Spec], splits: list[int]) -> None:
    expected = expect(specs)
    data = b"".join(spec.encode() for spec in specs[: expected.used])
    ws = RawWS.connect(target.server.port, "/echo", token=TOKEN, timeout=2.0)
    with ws:
        _send_stream(ws, data, splits)
        sent_close = any(spec.opcode == OP_CLOSE for spec in specs[: expected.used])
        if expected.codes is None:
            ws.send_close(1000)  # a valid stream: end it ourselves
            sent_close = True
            codes = {1000}
        else:
            codes = expected.codes
        echoes: list[tuple[int, bytes]] = []
        pongs: list[bytes] = []
        while True:
            frame = ws.read_frame(timeout=2.0)
            if frame is None:
                code = None
                break
            assert not frame.masked and frame.rsv == 0 and frame.fin, frame
            if frame.opcode == OP_CLOSE:
                code = frame.close_code
                if not sent_close:  # the server started the closing handshake: answer it
                    ws.send_close(None if code == 1005 else 1000)
                break
            if frame.opcode == OP_PONG:
                pongs.append(frame.payload)
            else:
                assert frame.opcode in (OP_TEXT, OP_BINARY), frame
                echoes.append((frame.opcode, frame.payload))
        assert code is None or code in codes, f"close {code}, expected one of {codes}"
        assert echoes == expected.echoes[: len(echoes)], "echoes differ from the messages sent"
        assert pongs == expected.pongs[: len(pongs)], "pongs differ from the pings sent"
        assert ws.read_eof(timeout=2.0) == b"", "bytes after the close frame"


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(specs=streams, splits=st.lists(st.integers(0, 5000), max_size=5))
def test_frame_streams(target: FuzzTarget, specs: list[Spec], splits: list[int]) -> None:
    _run_stream(target, specs, splits)
    target.check_baseline()
    target.check_sentinel()


def test_model_examples(target: FuzzTarget) -> None:
    """A few hand-written streams through the same checks (the model's sanity)."""
    cases = [
        [Spec(OP_TEXT, b"hello")],
        [Spec(OP_TEXT, b"\xce", fin=False), Spec(OP_PING, b"p"), Spec(OP_CONT, b"\xba")],
        [Spec(OP_BINARY, b"x" * (LIMIT + 1))],
        [Spec(OP_TEXT, b"a", fin=False), Spec(OP_TEXT, b"b")],
        [Spec(OP_CLOSE, close_payload(3000, b"bye")), Spec(OP_TEXT, b"after")],
        [Spec(OP_PING, b"x" * 126, length_form=16)],
    ]
    assert [sorted(expect(c).codes or {0}) for c in cases] == [
        [0],
        [0],
        [1009],
        [1002],
        [3000],
        [1002],
    ]
    for case in cases:
        _run_stream(target, case, [])
        target.check_baseline()
        target.check_sentinel()


# -- the handshake fuzzer ----------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["dGhlIHNhbXBsZSBub25jZQ==", "", "short", "!!!notbase64!!!", "dGhlIHNhbXBsZSBub25jZQ", None]
)


@settings(max_examples=max(20, MAX_EXAMPLES // 2), deadline=None)
@given(
    method=st.sampled_from(["GET"] * 6 + ["POST", "HEAD"]),
    path=st.sampled_from(["/echo", "/ws", "/ws?since=x:1", "/echo?token=bad"]),
    upgrade=st.sampled_from(["websocket", "WebSocket", "", "h2c", None]),
    connection=st.sampled_from(["Upgrade", "keep-alive, Upgrade", "close", None]),
    version=st.sampled_from(["13", "8", "", "13, 8", "abc", None]),
    key=_KEYS,
    origin=st.sampled_from([None, "own", "null", "http://evil.example", "http://localhost:5173"]),
    token=st.sampled_from(["good", "wrong", None]),
    protocols=st.sampled_from([None, "sidecar.v1", "other", "sidecar.v1, auth.TOKEN", ""]),
)
def test_handshakes(
    target: FuzzTarget,
    method: str,
    path: str,
    upgrade: str | None,
    connection: str | None,
    version: str | None,
    key: str | None,
    origin: str | None,
    token: str | None,
    protocols: str | None,
) -> None:
    port = target.server.port
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    optional = {
        "Upgrade": upgrade,
        "Connection": connection,
        "Sec-WebSocket-Version": version,
        "Sec-WebSocket-Key": key,
        "Origin": f"http://127.0.0.1:{port}" if origin == "own" else origin,
        "Authorization": {"good": f"Bearer {TOKEN}", "wrong": "Bearer nope"}.get(token or ""),
        "Sec-WebSocket-Protocol": protocols.replace("TOKEN", TOKEN) if protocols else protocols,
    }
    lines += [f"{name}: {value}" for name, value in optional.items() if value is not None]
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        assert status not in (0, 500), head[:300]
        assert status in (101, 400, 401, 403, 404, 405, 426), head[:300]
        if status != 101:  # read the whole response: the server closes after it
            while sock.recv(65536):
                pass
        else:
            ws = RawWS(sock, 5.0, 101, buffer=bytearray(head))
            ws.finish_upgrade()  # the greeting may come with the head
            if path.startswith("/ws"):
                greeting = ws.read_message()
                assert greeting is not None and json.loads(greeting.payload)["type"] == (
                    "connection:status"
                )
            ws.send_close(1000)
            assert ws.read_close(reply=False) == 1000
            assert ws.read_eof() == b""
    target.check_baseline()
