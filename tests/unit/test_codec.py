"""The edges of the raw WebSocket codec (``sidecar.frames``): lengths at each form's limit,
close payloads, truncated reasons, the client's handshake, and the parser's bound.

The broad round trips are in ``tests/test_frames.py``; these pin what those leave open.
"""

from __future__ import annotations

import base64

import pytest

from sidecar import frames
from sidecar.frames import FrameParser


@pytest.mark.parametrize(
    ("form", "size", "message"),
    [
        (7, 126, "payload too long for the 7-bit length form"),
        (16, 0x10000, "payload too long for the 16-bit length form"),
        (32, 1, "length_form must be 7, 16 or 64, not 32"),
    ],
)
def test_build_frame_names_a_length_form_that_cannot_be_used(
    form: int, size: int, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        frames.build_frame(frames.OP_TEXT, b"x" * size, length_form=form)
    assert str(info.value) == message


def test_build_frame_defaults_and_the_fin_bit() -> None:
    assert frames.build_frame(frames.OP_PING, mask=False) == b"\x89\x00"
    assert frames.build_frame(frames.OP_BINARY, b"a", fin=False, mask=False) == b"\x02\x01a"


def test_close_frames_and_payloads() -> None:
    assert frames.close_frame(1000) == b"\x88\x02\x03\xe8"
    assert frames.close_payload() == b""
    assert frames.close_payload(4008, b"x") == b"\x0f\xa8x"
    assert frames.close_code(b"") == 1005 and frames.close_code(b"\x03") == 1005
    assert frames.close_code(b"\x0f\xa8reason") == 4008


def test_a_reason_is_cut_on_a_character_boundary() -> None:
    reason = "a" * 122 + "é"  # 124 bytes: the cut at 123 falls inside the "é"
    assert frames.truncate_reason(reason) == b"a" * 122
    assert frames.truncate_reason("b" * 123) == b"b" * 123


def test_the_client_handshake_is_exactly_rfc_6455() -> None:
    request = frames.upgrade_request(
        "/ws", "h:1", token="t", origin="http://o", extensions="permessage-deflate", key="k"
    )
    assert request == (
        b"GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer t\r\n"
        b"Origin: http://o\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    assert len(base64.b64decode(frames.new_key(), validate=True)) == 16


def test_response_heads_without_a_reason_or_with_colons_in_values() -> None:
    status, line, headers = frames.parse_response_head(b"HTTP/1.1 101\r\nHost: a:b")
    assert (status, line, headers) == (101, "HTTP/1.1 101", {"host": "a:b"})
    assert frames.parse_response_head(b"HTTP/1.1\t101 OK")[0] == 0  # fields are space-separated


@pytest.mark.parametrize("form", [16, 64])
def test_a_header_only_frame_in_a_long_length_form_is_whole(form: int) -> None:
    data = frames.build_frame(frames.OP_TEXT, b"", mask=False, length_form=form)
    assert list(frames.split_frames(data)) == [(frames.OP_TEXT, len(data), len(data))]
    incomplete = frames.text_frame(b"ok") + data[:-1]  # a whole frame, then a cut-off header
    assert [opcode for opcode, _, _ in frames.split_frames(incomplete)] == [frames.OP_TEXT]


def test_walk_frames_stops_at_end() -> None:
    data = frames.text_frame(b"one") + frames.text_frame(b"two")
    assert len(list(frames.walk_frames(data, 0, len(data) - 1))) == 1


def test_the_parser_takes_exactly_max_buffer_bytes() -> None:
    parser = FrameParser(max_buffer=10)
    parser.append(b"\x81\x08" + b"x" * 8)  # exactly 10 bytes: fine
    with pytest.raises(BufferError) as info:
        FrameParser(max_buffer=10).append(b"x" * 11)
    assert str(info.value) == "more than 10 bytes without a complete frame"
    frame = parser.pop()
    assert frame is not None and (frame.fin, frame.wire_size, frame.payload) == (
        True,
        10,
        b"x" * 8,
    )


def test_only_a_text_frame_is_json() -> None:
    with pytest.raises(ValueError) as info:
        frames.Frame(frames.OP_BINARY, b"{}").json()
    assert str(info.value) == "expected a text frame, got opcode 2"
