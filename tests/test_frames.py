"""The raw WebSocket codec (:mod:`sidecar.frames`), without sockets."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sidecar import frames
from sidecar.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, Frame, FrameParser, build_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 0xFFFF, 0x10000])
def test_an_unmasked_client_frame_is_the_server_frame(size: int) -> None:
    payload = os.urandom(size)
    assert build_frame(OP_BINARY, payload, mask=False) == frames.frame(OP_BINARY, payload)


def test_build_frame_sets_every_header_field() -> None:
    data = build_frame(0x3, b"abc", fin=False, rsv=5, mask=b"\x01\x02\x03\x04", length_form=64)
    assert data[0] == 0x50 | 0x3  # no FIN, RSV1 and RSV3, opcode 3
    assert data[1] == 0x80 | 127
    assert int.from_bytes(data[2:10], "big") == 3
    assert data[10:14] == b"\x01\x02\x03\x04"
    assert frames.mask_bytes(data[14:], b"\x01\x02\x03\x04") == b"abc"


def test_build_frame_refuses_a_length_form_that_cannot_hold_the_payload() -> None:
    with pytest.raises(ValueError):
        build_frame(OP_TEXT, b"x" * 126, length_form=7)
    with pytest.raises(ValueError):
        build_frame(OP_TEXT, b"x" * 0x10000, length_form=16)
    with pytest.raises(ValueError):
        build_frame(OP_TEXT, b"x", length_form=32)


def test_the_parser_reads_any_frame_split_anywhere() -> None:
    sent: list[tuple[int, bytes, dict[str, Any]]] = [
        (OP_TEXT, b"hello", {"mask": False}),
        (OP_BINARY, os.urandom(300), {}),
        (OP_PING, b"", {"fin": True, "rsv": 2}),
        (OP_TEXT, b"frag", {"fin": False, "length_form": 16}),
        (OP_BINARY, os.urandom(70_000), {"mask": False, "length_form": 64}),
        (OP_CLOSE, frames.close_payload(1001, b"bye"), {}),
    ]
    stream = b"".join(build_frame(op, payload, **options) for op, payload, options in sent)
    for step in (1, 7, 1000, len(stream)):
        parser = FrameParser()
        got: list[Frame] = []
        for i in range(0, len(stream), step):
            got += parser.feed(stream[i : i + step])
        assert parser.buffered == 0
        assert [(f.opcode, f.payload) for f in got] == [(op, p) for op, p, _ in sent]
        assert sum(f.wire_size for f in got) == len(stream)
        assert [f.masked for f in got] == [o.get("mask", True) is not False for *_, o in sent]
        assert (got[2].rsv, got[3].fin, got[5].close_code, got[0].close_code) == (
            2,
            False,
            1001,
            None,
        )


def test_pop_takes_one_frame_at_a_time_and_take_bytes_the_rest() -> None:
    parser = FrameParser()
    parser.append(frames.text_frame(b'{"a":1}') + frames.close_frame(1000) + b"\x81")
    first = parser.pop()
    assert first is not None and first.json() == {"a": 1}
    second = parser.pop()
    assert second is not None and second.close_code == 1000
    assert parser.pop() is None
    assert parser.take_bytes() == b"\x81" and parser.buffered == 0


def test_the_parser_is_bounded() -> None:
    parser = FrameParser(max_buffer=100)
    parser.feed(b"\x82\x7e\x01\x00" + bytes(90))  # a 256-byte frame, incomplete
    with pytest.raises(BufferError):
        parser.feed(bytes(20))


def test_split_frames_stops_at_a_masked_or_incomplete_frame() -> None:
    data = frames.text_frame(b"one") + frames.frame(OP_PING, b"") + build_frame(OP_TEXT, b"m")
    assert list(frames.split_frames(data)) == [(OP_TEXT, 2, 5), (OP_PING, 7, 7)]
    assert list(frames.split_frames(frames.text_frame(b"x" * 200)[:-1])) == []


def test_handshake_helpers() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
    assert frames.accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    request = frames.upgrade_request("/ws", "127.0.0.1:1", token="t", key=key).decode()
    assert request.startswith("GET /ws HTTP/1.1\r\n") and request.endswith("\r\n\r\n")
    assert f"Sec-WebSocket-Key: {key}\r\n" in request and "Authorization: Bearer t\r\n" in request
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Y:  z "
    assert frames.parse_response_head(head) == (
        101,
        "HTTP/1.1 101 Switching Protocols",
        {"upgrade": "websocket", "x-y": "z"},
    )
    assert frames.parse_response_head(b"garbage")[0] == 0
