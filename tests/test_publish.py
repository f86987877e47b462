"""Publish bodies (sidecar.catalog.publish): every hostile class gets one clear 4xx, never more.

Each class of issue 11 (items 3 and 4) has the reported case and a sibling; a property test
then throws generated bodies at :func:`parse_publish_body`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.catalog import MAX_DEPTH, PublishError, parse_publish_body, validate_items
from sidecar.envelope import encode, is_event_name
from sidecar.protocol import RESERVED_NAMESPACES, SEQ_SPLICE_MAX

LIMIT = 1 << 20
STREAM: dict[str, Any] = {
    "type": "stream:created",
    "payload": {"projectId": "p", "streamId": "s", "name": "n"},
}


def _refused(body: bytes, max_event_bytes: int = LIMIT) -> PublishError:
    with pytest.raises(PublishError) as info:
        parse_publish_body(body, max_event_bytes=max_event_bytes)
    return info.value


def _app(payload_json: bytes) -> bytes:
    return b'{"type":"app:x","payload":' + payload_json + b"}"


def _batch(*items: bytes) -> bytes:
    return b"[" + json.dumps(STREAM).encode() + b"," + b",".join(items) + b"]"


def test_valid_bodies_become_events_with_one_server_timestamp() -> None:
    extra = {"type": "stream:created", "payload": {**STREAM["payload"], "later": [1]}}
    body = json.dumps([STREAM, extra, {"type": "my-app:done", "payload": {"n": 1.5}}]).encode()
    events = parse_publish_body(body, max_event_bytes=LIMIT)
    assert [e.type for e in events] == ["stream:created", "stream:created", "my-app:done"]
    assert events[1].payload["later"] == [1]  # extra keys pass through (forward compatible)
    assert len({e.timestamp for e in events}) == 1
    assert parse_publish_body(json.dumps(STREAM).encode(), max_event_bytes=LIMIT)[0].type == (
        "stream:created"
    )


@pytest.mark.parametrize(
    "body",
    [b"{nope", b"", b"\xff", b'{"type":"app:x","payload":{"s":"\xc3"}}', b"[1,]", b"{} x"],
)
def test_not_json_is_400(body: bytes) -> None:
    error = _refused(body)
    assert (error.status, error.message.startswith("body is not JSON")) == (400, True)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_400(literal: bytes) -> None:
    for body in (literal, _app(b'{"a":[1,' + literal + b"]}")):
        error = _refused(body)
        assert error.status == 400
        assert literal.decode() in error.message and "not a JSON number" in error.message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"[" * 100_000, "events"),
        (b"[" + b'{"a":' * 100_000, "events"),
        (_app(b'{"a":' + b"[" * 100_000 + b"}"), "event"),
        (_app(b"[" * 65 + b"]" * 65), "event"),  # valid JSON, but the payload is not an object
        (_app(b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"), "event.payload.a"),
        (_batch(_app(b'{"a":' * 70 + b"1" + b"}" * 70)), "events[1].payload.a.a"),
    ],
)
def test_deep_nesting_is_a_4xx_naming_the_depth(body: bytes, where: str) -> None:
    error = _refused(body)
    assert 400 <= error.status < 500
    assert error.message.startswith(where)
    if "expected object" not in error.message:
        assert f"nested deeper than {MAX_DEPTH} levels" in error.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_DEPTH - 1  # the payload object is level 1
    body = _app(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    nested = parse_publish_body(body, max_event_bytes=LIMIT)[0].payload["a"]
    for _ in range(depth - 1):
        (nested,) = nested
    assert nested == []


@pytest.mark.parametrize(
    ("number", "where"),
    [
        (b"1e400", "event.payload.n"),
        (b"-1e400", "event.payload.n"),
        (b"18446744073709551616", "event.payload.n"),  # 2**64
        (b"-9223372036854775809", "event.payload.n"),  # -2**63 - 1
        (b"9" * 5000, "event.payload.n"),  # beyond Python's int-from-string limit too
    ],
)
def test_numbers_beyond_float_or_64_bits_are_422_naming_the_field(
    number: bytes, where: str
) -> None:
    for body, path in (
        (_app(b'{"n":' + number + b"}"), where),
        (_batch(_app(b'{"m":{"n":[0,' + number + b"]}}")), "events[1].payload.m.n[1]"),
    ):
        error = _refused(body)
        assert error.status == 422
        assert error.message.startswith(f"{path}: "), error.message
        assert "out of range" in error.message


def test_numbers_at_the_edges_are_accepted() -> None:
    body = _app(b'{"a":18446744073709551615,"b":-9223372036854775808,"c":1.7976931348623157e308}')
    payload = parse_publish_body(body, max_event_bytes=LIMIT)[0].payload
    assert payload == {"a": 2**64 - 1, "b": -(2**63), "c": 1.7976931348623157e308}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (_app(b'{"s":"\\ud800"}'), "event.payload.s: "),
        (_app(b'{"s":["ok","x\\udc00y"]}'), "event.payload.s[1]: "),
        (_batch(_app(b'{"s":"\xed\xa0\x80"}')), "events[1].payload.s: "),  # encoded surrogate
        (_app(b'{"\\udfff":1}'), "event.payload: key"),
    ],
)
def test_lone_surrogates_are_a_4xx_naming_the_field(body: bytes, where: str) -> None:
    error = _refused(body)
    assert 400 <= error.status < 500
    assert error.message.startswith(where), error.message


def test_surrogate_pairs_are_characters() -> None:
    body = _app(b'{"s":"\\ud83d\\ude00"}')
    assert parse_publish_body(body, max_event_bytes=LIMIT)[0].payload["s"] == "\U0001f600"


def _sized(total: int) -> bytes:
    """One event whose envelope is ``total`` bytes encoded with the longest timestamp (27
    characters; one whose microseconds end in zeros is up to 7 shorter)."""
    fixed = len(_app(b'{"x":""}')) + len(',"timestamp":"2026-11-26T08:19:42.381801Z"')
    return _app(b'{"x":"' + b"y" * (total - fixed) + b'"}')


def test_one_event_near_the_limit_is_accepted_or_413_never_more() -> None:
    limit = 4096
    fits = parse_publish_body(_sized(limit - SEQ_SPLICE_MAX), max_event_bytes=limit)
    assert len(encode(fits[0])) + SEQ_SPLICE_MAX <= limit
    for total in (limit - SEQ_SPLICE_MAX + 8, limit, limit + 1):
        error = _refused(_sized(total), max_event_bytes=limit)
        assert error.status == 413 and error.message.startswith("event: "), error.message
    error = _refused(_batch(_sized(2 * limit)), max_event_bytes=limit)
    assert error.status == 413 and error.message.startswith("events[1]: ")


def test_an_event_that_grows_when_re_encoded_is_413() -> None:
    # 1e15 is 4 bytes in the body and 18 once encoded (1000000000000000.0)
    floats = b"[" + b",".join([b"1e15"] * 1000) + b"]"
    body = _app(b'{"x":' + floats + b"}")
    assert len(body) < 6000
    error = _refused(body, max_event_bytes=6000)
    assert error.status == 413 and "bytes encoded" in error.message
    assert len(parse_publish_body(body, max_event_bytes=20_000)) == 1


@pytest.mark.parametrize(
    "name", ["stream:created\n", "app:x\n", "\nstream:created", "stream:created ", "Stream:Created"]
)
def test_type_names_must_match_as_a_whole(name: str) -> None:
    item = {"type": name, "payload": STREAM["payload"]}
    for body, where in ((item, "event.type: "), ([STREAM, item], "events[1].type: ")):
        error = _refused(json.dumps(body).encode())
        assert error.status == 422 and error.message.startswith(where)
        assert repr(name) in error.message


@pytest.mark.parametrize(
    ("event_type", "payload", "needle"),
    [
        ("connection:status", {"status": "connected"}, "reserved"),
        ("connection:anything", {}, "reserved"),
        ("chat:send", {"conversationId": "c", "content": "x"}, "client-to-server"),
        ("chat:cancel", {"conversationId": "c"}, "client-to-server"),
    ],
)
def test_publishers_may_not_send_hub_or_client_types(
    event_type: str, payload: dict[str, Any], needle: str
) -> None:
    body = json.dumps([STREAM, {"type": event_type, "payload": payload}]).encode()
    error = _refused(body)
    assert error.status == 422
    assert error.message.startswith("events[1].type: ") and event_type in error.message
    assert needle in error.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "empty batch: send at least one event"),
        (b'"x"', "event: expected object or array, got string"),
        (b"[1]", "events[0]: expected object, got integer"),
        (b'{"payload":{}}', "event.type: required field missing"),
        (b'{"type":"app:x","payload":[]}', "event.payload: expected object, got array"),
        (b'{"type":"app:x","payload":{},"seq":3}', "event: unexpected key 'seq'"),
        (b'{"type":"app:x","payload":{},"a\\nb`":1}', "event: unexpected key 'a\\nb`'"),
        (
            _batch(b'{"type":"artifact:deleted","payload":{"id":"a"}}'),
            "events[1].payload.path: required field missing",
        ),
        (
            b'{"type":"chat:tool-result","payload":{"conversationId":"c","messageId":"m",'
            b'"toolId":"t","output":"o","isError":"false"}}',
            "event.payload.isError: expected boolean, got string",
        ),
    ],
)
def test_invalid_events_are_422_naming_the_field(body: bytes, message: str) -> None:
    error = _refused(body)
    assert (error.status, error.message) == (422, message)


def test_batch_limit() -> None:
    body = json.dumps([STREAM] * 3).encode()
    with pytest.raises(PublishError, match="batch of 3 events; at most 2") as info:
        parse_publish_body(body, max_event_bytes=LIMIT, max_batch=2)
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "app:x", "payload": {"x": float("nan")}}, "event.payload.x: NaN is not"),
        ({"type": "app:x", "payload": {"x": float("inf")}}, "event.payload.x: number out of"),
        ([STREAM, {"type": "app:x", "payload": {"x": {1, 2}}}], "events[1].payload.x: set is"),
        ({"type": "app:x", "payload": {"x": {2: "y"}}}, "event.payload.x: key 2"),
        ({"type": "app:x", "payload": {1: "y"}}, "event.payload: keys must be strings"),
        ({"type": "app:x", "payload": {"x": "\ud800"}}, "event.payload.x: lone surrogate"),
        ({"type": "app:x", "payload": {"x": 2**64}}, "event.payload.x: integer out of range"),
        ({"type": "chat:send", "payload": {}}, "event.type: chat:send is a client-to-server"),
        ("stream:created", "event: expected object or array, got string"),
    ],
)
def test_validate_items_refuses_what_json_cannot_carry(data: object, message: str) -> None:
    with pytest.raises(PublishError) as info:
        validate_items(data)
    assert info.value.status == 422
    assert info.value.message.startswith(message), info.value.message


def test_validate_items_accepts_decoded_events_and_checks_sizes() -> None:
    assert [e.type for e in validate_items([STREAM, STREAM])] == ["stream:created"] * 2
    with pytest.raises(PublishError) as info:
        validate_items({"type": "app:x", "payload": {"x": "y" * 500}}, max_event_bytes=400)
    assert info.value.status == 413


# -- the property: any bytes give events that fit, or one PublishError with a 4xx ------------

_NAMES = st.sampled_from(
    [
        "stream:created",
        "artifact:created",
        "chat:text-delta",
        "connection:status",
        "chat:send",
        "app:x",
        "my-app:thing-done",
        "stream:created\n",
        "Bad Name",
        "a:b ",
        "",
    ]
)
_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1e15", "18446744073709551616", "-0", "0.0e0", "1E+2", "NaN", "9" * 30]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.sampled_from(["name", "projectId"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@st.composite
def _json_bodies(draw: st.DrawFn) -> bytes:
    """JSON-ish bodies: events (good, bad, odd) or anything, with literals spliced in."""
    payload = draw(_VALUES)
    if isinstance(payload, dict) and draw(st.booleans()):  # close to a catalogued shape
        payload = {**STREAM["payload"], **payload}
    item: Any = {"type": draw(_NAMES), "payload": payload}
    data: Any = draw(st.sampled_from([item, [STREAM, item], [item] * 3, draw(_VALUES)]))
    text = json.dumps(data, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if draw(st.booleans()):  # splice an odd number in place of the last digit run
        text = text.replace("0", draw(_NUMBERS), 1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _nested_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=3000))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opening * depth + b"1" + (closing * depth if draw(st.booleans()) else b"")
    return _app(b'{"x":' + inner + b"}") if draw(st.booleans()) else inner


@st.composite
def _sized_bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """One event near ``limit``: a long string (in escapes that shrink when re-encoded, or
    not), or an array of numbers that grow (``1e15`` becomes ``1000000000000000.0``)."""
    limit = draw(st.integers(min_value=SEQ_SPLICE_MAX, max_value=4000))
    if draw(st.booleans()):
        unit = draw(st.sampled_from(["y", "é", "\\n", "\\u00e9", '\\"', "\\ud83d\\ude00"]))
        count = max(0, limit + draw(st.integers(min_value=-80, max_value=40))) // len(unit)
        value = '"' + unit * count + '"'
    else:
        number = draw(st.sampled_from(["1e15", "-1e15", "9e15", "1e9", "1e-7", "0e0", "12"]))
        value = "[" + ",".join([number] * draw(st.integers(0, limit // 4))) + "]"
    return _app(b'{"x":' + value.encode() + b"}"), limit


_BODIES = st.one_of(
    st.binary(max_size=300).map(lambda b: (b, LIMIT)),
    _json_bodies().map(lambda b: (b, LIMIT)),
    _json_bodies().map(lambda b: (b, 200)),
    _nested_bodies().map(lambda b: (b, LIMIT)),
    _sized_bodies(),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODIES)
def test_any_body_gives_events_that_fit_or_a_4xx(case: tuple[bytes, int]) -> None:
    body, limit = case
    try:
        events = parse_publish_body(body, max_event_bytes=limit)
    except PublishError as exc:
        assert exc.status in (400, 413, 422), exc.status
        assert exc.message and "\n" not in exc.message
        return
    assert events
    for event in events:
        encoded = encode(event)
        assert len(encoded) + SEQ_SPLICE_MAX <= limit
        assert json.loads(encoded)["payload"] == json.loads(json.dumps(event.payload))
        assert is_event_name(event.type)
        assert event.type.partition(":")[0] not in RESERVED_NAMESPACES
        assert event.type not in ("chat:send", "chat:cancel")
