"""Issue 11, class 3: the publish API never answers 500, whatever it is sent.

Black box: a sidecar child process (``SIDECAR_TREE`` picks the code, see
:mod:`tests.hardening`) and raw sockets, so that every framing a client can produce reaches
the server as sent: ``Content-Length`` that lies either way, ``Transfer-Encoding: chunked``
with good and malformed chunk sizes, other transfer codings, both framings at once, any
``Content-Type`` and charset, bodies that are JSON, almost JSON, or not at all.

Properties, for every generated request (hypothesis):

* the answer is ``202`` or a ``4xx`` whose body names the problem; never a ``5xx``, never
  silence; a ``202`` lists the events accepted;
* a WebSocket client (the sentinel) receives every accepted event, then a probe event
  published afterwards: the server still broadcasts;
* the child's log never shows a traceback or an ``ERROR`` line.

Hand-picked cases beside it: deep nesting, ``NaN``/``Infinity``, ``1e400``, lone surrogates,
one event at every size around the limit, a malformed chunk size; under ``/api/v1``, 404 and
405 are JSON.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.launcher import SidecarProcess
from tests.conftest import TOKEN, wait_for
from tests.hardening import Reply, exchange, post_events, read_reply, request_head, running
from tests.rawws import RawWS

#: The event limit of the fuzzed sidecar (small, so that 413 is easy to reach).
LIMIT = 4096
EXAMPLES = int(os.environ.get("SIDECAR_PUBLISH_FUZZ_EXAMPLES", "150"))
#: What a half-closed lying request may take: the server reads EOF at once.
ANSWER_TIMEOUT = 3.0


@dataclass
class Target:
    """The fuzzed sidecar and its sentinel WebSocket client."""

    child: SidecarProcess
    sentinel: RawWS
    probes: int = 0

    def drain_until_probe(self, accepted: int) -> None:
        """Publish a probe; the sentinel gets ``accepted`` events, then the probe."""
        self.probes += 1
        marker = f"probe-{self.probes}"
        body = json.dumps({"type": "test:probe", "payload": {"marker": marker}}).encode()
        reply = post_events(self.child.port, body)
        assert reply.status == 202, reply
        seen = 0
        while True:
            frame = self.sentinel.read_message(timeout=3.0)
            assert frame is not None, "the sentinel lost its connection"
            event = json.loads(frame.payload)
            if event["type"] == "test:probe" and event["payload"]["marker"] == marker:
                break
            seen += 1
        assert seen == accepted, f"the sentinel got {seen} events, {accepted} were accepted"

    def assert_clean_log(self) -> None:
        """No traceback and no ``ERROR`` line in the child's log, up to now."""
        marker = uuid.uuid4().hex
        exchange(self.child.port, request_head(self.child.port, "GET", f"/ws?mark={marker}"))
        wait_for(lambda: marker in self.child.log_text(), timeout=5.0)  # the log is in order
        assert not self.child.tracebacks(), self.child.tracebacks()
        assert not self.child.error_lines(), self.child.error_lines()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A sidecar with a small event limit and a short request deadline, and its sentinel."""
    with running(max_event_bytes=LIMIT, handshake_timeout=2, log_level="debug") as child:
        sentinel = RawWS.connect(child.port, token=TOKEN, timeout=3.0)
        greeting = sentinel.read_message()
        assert greeting is not None and b"connection:status" in greeting.payload
        yield Target(child, sentinel)
        sentinel.close()


def _assert_answer(reply: Reply) -> int:
    """Check one answer by the properties above; the number of events accepted."""
    assert reply.status != 0, f"no answer at all: {reply}"
    assert reply.status < 500, reply
    assert reply.status == 202 or 400 <= reply.status < 500, reply
    body = reply.body.decode("utf-8", "replace")
    if reply.status == 202:
        return int(json.loads(body)["accepted"])
    if reply.headers.get("content-type", "").startswith("application/json"):
        message = json.loads(body)["error"]
    else:  # refused by the server before the app: a plain-text line
        message = body.partition(": ")[2]
    assert isinstance(message, str) and message.strip(), reply
    return 0


# -- strategies -----------------------------------------------------------------------------------

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_type_names = st.sampled_from(
    [
        "app:thing",
        "stream:created",
        "connection:status",
        "chat:send",
        "app:x\n",
        "App:X",
        "app:",
        "a:b-c",
        "app:\u00e9",
    ]
) | st.text(max_size=12)
_event = st.fixed_dictionaries({"type": _type_names, "payload": _json}) | st.dictionaries(
    st.sampled_from(["type", "payload", "seq", "timestamp", "x"]), _json, max_size=4
)
_document = _event | st.lists(_event, max_size=4) | _json
_specials = st.sampled_from(
    [
        b'{"type":"app:x","payload":{"a":NaN}}',
        b'{"type":"app:x","payload":{"a":-Infinity}}',
        b'{"type":"app:x","payload":{"a":1e400}}',
        b'{"type":"app:x","payload":{"a":"\\ud800"}}',
        b'{"type":"app:x","payload":{"a":"\\udfff\\ud800"}}',
        b'{"type":"app:x","payload":{"a":' + b"9" * 5000 + b"}}",
        b'{"type":"app:x","payload":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}",
        b'{"type":"app:x","payload":{"a":"' + b"\xff\xfe" + b'"}}',
        b"\xef\xbb\xbf" + b'{"type":"app:x","payload":{}}',
        b'{"type":"app:x","payload":{"a":"' + b"y" * (LIMIT - 60) + b'"}}',
        b'[{"type":"app:x","payload":{}},' * 50 + b"]",
        b"",
    ]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Bytes of a body: JSON documents, encoded oddly or mutated, specials, or noise."""
    kind = draw(st.sampled_from(["json", "json", "special", "mutated", "noise"]))
    if kind == "special":
        return draw(_specials)
    if kind == "noise":
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(_document), ensure_ascii=draw(st.booleans()))
    data = text.encode(draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-32"])))
    if kind == "mutated" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.binary(max_size=3)) + data[at + draw(st.integers(0, 3)) :]
    return data


_CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=utf-16",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "*/*",
    "application/json; charset=nonsense",
]
_BAD_CHUNK_SIZES = ["zz", "-1", "0x10", "+a", "1_0", " a", "f" * 20, "", "a b", "10\x00"]
_TRANSFER_ENCODINGS = ["gzip", "chunked, gzip", "gzip, chunked", "identity", "CHUNKED", "chunked "]


@dataclass(frozen=True)
class Framing:
    """How a body goes on the wire: the framing headers, the bytes, whether to half-close."""

    headers: tuple[str, ...]
    payload: bytes
    half_close: bool


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if a < b]


@st.composite
def framings(draw: st.DrawFn, body: bytes) -> Framing:
    """Content-Length (true, short, long, junk), chunked (good or broken), other codings."""
    kind = draw(
        st.sampled_from(["length"] * 4 + ["chunked"] * 3 + ["bad-chunk", "coding", "both", "lie"])
    )
    if kind == "length":
        return Framing((f"Content-Length: {len(body)}",), body, draw(st.booleans()))
    if kind == "lie":
        length = draw(st.sampled_from(["0", "1", str(len(body) + 7), "-1", "1x", "1,2", "\xb2"]))
        return Framing((f"Content-Length: {length}",), body, True)
    pieces = _chunks(body, draw(st.lists(st.integers(0, len(body)), max_size=4)))
    encoded = [f"{len(p):x}".encode() + b"\r\n" + p + b"\r\n" for p in pieces]
    if kind == "bad-chunk":
        encoded.insert(
            draw(st.integers(0, len(encoded))),
            draw(st.sampled_from(_BAD_CHUNK_SIZES)).encode() + b"\r\nxx\r\n",
        )
    payload = b"".join(encoded) + b"0\r\n\r\n"
    if kind == "coding":
        coding = draw(st.sampled_from(_TRANSFER_ENCODINGS))
        return Framing((f"Transfer-Encoding: {coding}",), payload, True)
    headers: tuple[str, ...] = ("Transfer-Encoding: chunked",)
    if kind == "both":
        headers += (f"Content-Length: {len(payload)}",)
    return Framing(headers, payload, kind != "chunked" or draw(st.booleans()))


@st.composite
def requests(draw: st.DrawFn) -> tuple[tuple[str, ...], bytes, bool]:
    """A whole publish request: extra headers, the bytes after the head, the half-close."""
    body = draw(bodies())
    framing = draw(framings(body))
    content_type = draw(st.sampled_from(_CONTENT_TYPES))
    headers = framing.headers + ((f"Content-Type: {content_type}",) if content_type else ())
    if draw(st.integers(0, 9)) == 0:
        headers += (draw(st.sampled_from(["Expect: 100-continue", "Content-Encoding: gzip"])),)
    return headers, framing.payload, framing.half_close


def _send(port: int, headers: tuple[str, ...], payload: bytes, half_close: bool) -> Reply:
    head = request_head(port, "POST", "/api/v1/events", headers=headers)
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        try:
            sock.sendall(head + payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_reply(sock, ANSWER_TIMEOUT)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_any_publish_request_gets_202_or_a_4xx_and_broadcasting_goes_on(
    target: Target, request: tuple[tuple[str, ...], bytes, bool]
) -> None:
    headers, payload, half_close = request
    reply = _send(target.child.port, headers, payload, half_close)
    accepted = _assert_answer(reply)
    target.drain_until_probe(accepted)


def test_the_fuzzed_sidecar_logged_no_traceback(target: Target) -> None:
    """Run after the fuzzer (file order): the whole log so far is clean."""
    target.assert_clean_log()


# -- hand-picked bodies ---------------------------------------------------------------------------


def _event_with(value: bytes) -> bytes:
    return b'{"type":"app:x","payload":{"a":' + value + b"}}"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (_event_with(b"[" * 1500 + b"]" * 1500), 422, "nested deeper"),
        (b"[" * 4000, 422, "nested deeper"),
        (_event_with(b"NaN"), 400, "NaN"),
        (_event_with(b"Infinity"), 400, "Infinity"),
        (_event_with(b"-Infinity"), 400, "Infinity"),
        (_event_with(b"1e400"), 422, "out of range"),
        (_event_with(b"-1e400"), 422, "out of range"),
        (_event_with(b"1" * 400), 422, "out of range"),
        (_event_with(b'"\\ud800"'), 422, "lone surrogate"),
        (_event_with(b'"\\udc00\\ud800"'), 422, "lone surrogate"),
        (b'{"type":"app:x","payload":{"\\ud800":1}}', 422, "ud800"),
        (_event_with(b'"' + b"y" * 2 * LIMIT + b'"'), 413, "at most"),
    ],
    ids=[
        "deep-payload",
        "deep-body",
        "nan",
        "infinity",
        "minus-infinity",
        "1e400",
        "minus-1e400",
        "400-digits",
        "lone-high-surrogate",
        "reversed-pair",
        "surrogate-key",
        "too-large",
    ],
)
def test_bodies_the_decoder_chokes_on_get_a_4xx_naming_the_problem(
    target: Target, body: bytes, status: int, needle: str
) -> None:
    reply = post_events(target.child.port, body)
    assert reply.status == status, reply
    assert needle in reply.json()["error"], reply.json()
    assert reply.closed and reply.elapsed < 1.0, f"closed after {reply.elapsed:.2f} s"  # not 2
    target.drain_until_probe(0)


def test_one_event_at_every_size_around_the_limit_is_202_or_413(target: Target) -> None:
    """The body limit and the event limit differ by the envelope (timestamp, seq)."""
    empty = len(b'{"type":"app:big","payload":{"x":""}}')
    statuses = set()
    for size in range(LIMIT - 140, LIMIT + 8):
        body = b'{"type":"app:big","payload":{"x":"' + b"y" * (size - empty) + b'"}}'
        reply = post_events(target.child.port, body)
        statuses.add(reply.status)
        assert reply.status in (202, 413), (size, reply)
        if reply.status == 413:
            assert "at most" in reply.json()["error"], reply.json()
            continue
        frame = target.sentinel.read_message(timeout=3.0)
        assert frame is not None and len(frame.payload) <= LIMIT, (size, frame)
        assert len(json.loads(frame.payload)["payload"]["x"]) == size - empty
    assert statuses == {202, 413}, "the window should straddle the limit"


@pytest.mark.parametrize(
    ("size_line", "status", "needle"),
    [
        (b"zz", 400, "malformed chunk size"),
        (b"f" * 20, 400, "malformed chunk size"),
        (b"0x10", 400, "malformed chunk size"),
        (b"1_0", 400, "malformed chunk size"),
        (b"-1", 400, "malformed chunk size"),
        (b"%x" % (LIMIT * 4), 413, "chunk of"),
    ],
)
def test_a_malformed_or_oversized_chunk_size_is_a_4xx_at_once(
    target: Target, size_line: bytes, status: int, needle: str
) -> None:
    body = b'{"type":"app:x","payload":{}}'
    payload = b"%x\r\n%s\r\n" % (len(body), body) + size_line + b"\r\nxx\r\n0\r\n\r\n"
    head = request_head(
        target.child.port, "POST", "/api/v1/events", headers=["Transfer-Encoding: chunked"]
    )
    reply = exchange(target.child.port, head + payload, timeout=ANSWER_TIMEOUT)
    assert reply.status == status, reply
    assert reply.elapsed < 1.0, f"answered after {reply.elapsed:.2f} s"
    assert needle in reply.json()["error"], reply.json()
    target.drain_until_probe(0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nope", 404),
        ("POST", "/api/v1/nope/deeper", 404),
        ("GET", "/api/v1/", 404),
        ("GET", "/api/v1/events", 405),
        ("DELETE", "/api/v1/events", 405),
        ("POST", "/api/v1/hub", 405),
    ],
)
def test_api_404_and_405_are_json(target: Target, method: str, path: str, status: int) -> None:
    head = request_head(target.child.port, method, path, headers=["Content-Length: 0"])
    reply = exchange(target.child.port, head)
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/json"), reply
    assert reply.json()["error"], reply
    if status == 405:
        assert reply.headers["allow"], reply
