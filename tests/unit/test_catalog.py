"""Publish-body validation at its edges: the exact messages, the limits at their value, the
nesting depth of batches and single events, and how values are named in messages.

The broad cases (and a property test over any body) are in ``tests/test_publish.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from sidecar.catalog import PublishError, parse_publish_body, validate_items
from sidecar.catalog import publish as publish_module
from sidecar.catalog.validate import describe, json_problem, quote
from sidecar.envelope import Event, encode
from sidecar.protocol import SEQ_SPLICE_MAX


def refused(body: bytes, **limits: Any) -> tuple[int, str]:
    with pytest.raises(PublishError) as info:
        parse_publish_body(body, **{"max_event_bytes": 1 << 20, **limits})
    return info.value.status, info.value.message


def test_malformed_json_is_named_in_msgspecs_words() -> None:
    assert refused(b'{"type":') == (400, "body is not JSON: Input data was truncated")
    assert refused(b'{"type": "a:b", "payload": {}}}') == (
        400,
        "body is not JSON: trailing characters (byte 31)",
    )


def test_a_batch_is_named_events_even_after_leading_whitespace() -> None:
    assert refused(b' \n[{"type": 1, "payload": {}}]') == (
        422,
        "events[0].type: expected string, got integer",
    )
    with pytest.raises(PublishError) as info:
        validate_items([{"type": 1, "payload": {}}])
    assert info.value.message == "events[0].type: expected string, got integer"


def test_a_reserved_namespace_is_its_first_part() -> None:
    status, message = refused(b'{"type": "connection:a:b", "payload": {}}')
    assert (status, message) == (
        422,
        "event.type: 'connection:a:b' is reserved: connection:* events come from the hub only",
    )


def test_a_batch_of_exactly_max_batch_events_is_accepted() -> None:
    body = b'[{"type": "a:b", "payload": {}}, {"type": "a:b", "payload": {}}]'
    assert len(parse_publish_body(body, max_event_bytes=1000, max_batch=2)) == 2
    assert refused(body, max_batch=1) == (422, "batch of 2 events; at most 1")


def test_an_event_exactly_at_max_event_bytes_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish_module, "rfc3339_utc", lambda: "2026-01-01T00:00:00Z")
    body = b'{"type": "a:b", "payload": {"k": "' + b"v" * 300 + b'"}}'
    event = parse_publish_body(body, max_event_bytes=1 << 20)[0]
    exact = len(encode(event)) + SEQ_SPLICE_MAX
    assert parse_publish_body(body, max_event_bytes=exact) == [event]
    assert refused(body, max_event_bytes=exact - 1) == (
        413,
        f"event: {exact} bytes encoded (with timestamp and seq); at most {exact - 1}",
    )


def test_a_tiny_event_over_a_tiny_limit_is_measured() -> None:
    body = b'{"type":"a:b","payload":{}}'
    size = len(encode(Event("a:b", {}, "2026-01-01T00:00:00.123456Z"))) + SEQ_SPLICE_MAX
    status, _message = refused(body, max_event_bytes=size - 10)
    assert status == 413


def nested(depth: int, leaf: bytes) -> bytes:
    """A payload whose innermost object, at ``depth`` (the payload is 1), holds ``leaf``."""
    return b'{"a": ' * (depth - 1) + b'{"x": ' + leaf + b"}" * depth


@pytest.mark.parametrize(("batch", "root"), [(False, "event"), (True, "events[0]")])
def test_a_value_at_the_deepest_allowed_level_is_named_not_the_depth(
    batch: bool, root: str
) -> None:
    event = b'{"type": "a:b", "payload": ' + nested(64, b"1e400") + b"}"
    body = b"[" + event + b"]" if batch else event
    status, message = refused(body)
    assert status == 422
    assert message.startswith(root + ".payload.a.a.") and message.endswith(
        ".x: number out of range (larger than a 64-bit float)"
    )
    event = b'{"type": "a:b", "payload": ' + nested(65, b"1e400") + b"}"  # one level more
    status, message = refused(b"[" + event + b"]" if batch else event)
    assert status == 422
    assert message.startswith(root + ".payload.a.a.") and message.endswith(
        ": nested deeper than 64 levels"
    )


# -- how values and keys are named ----------------------------------------------------------------


def test_quote_cuts_at_forty_characters() -> None:
    assert quote("x" * 40) == repr("x" * 40)
    assert quote("x" * 41) == repr("x" * 40) + "..."


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\ud800", "p: lone surrogate in string (not valid Unicode; send the character itself)"),
        (None, None),
        (True, None),
        ({"odd key": "\ud800"}, "p['odd key']: lone surrogate in string"),
        ({"k" * 50 + "\ud800": 1}, f"p: key {quote('k' * 50 + chr(0xD800))} is not a valid"),
    ],
)
def test_json_problem_names_scalars_and_odd_keys(value: object, problem: str | None) -> None:
    found = json_problem(value, "p")
    assert (found if problem is None else (found or "")[: len(problem)]) == problem


def test_a_long_non_string_key_is_cut_at_forty_characters() -> None:
    found = json_problem({10**50: 1}, "p")
    assert found == f"p: key {repr(10**50)[:40]} is not a valid string"


@pytest.mark.parametrize(("path", "shown"), [("p" * 57, "p" * 57 + "[0]"), ("p" * 58, "p" * 57)])
def test_a_too_deep_path_is_cut_at_sixty_characters(path: str, shown: str) -> None:
    found = json_problem([[1]], path, level=64)
    assert found == f"{shown}{'' if len(path) == 57 else '...'}: nested deeper than 64 levels"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "Number out of range - at `$.x`",
            "payload.x: number out of range (larger than a 64-bit float)",
        ),
        (
            "Integer value out of range - at `$.x`",
            "payload.x: integer out of range (64 bits at most)",
        ),
        (
            "Expected `Foo | int`, got `str` - at `$.x`",
            "payload.x: expected Foo or integer, got string",
        ),
        ("Some Odd Problem - at `$.x[...].y`", "payload.x: some Odd Problem"),
    ],
)
def test_describe_words_msgspecs_errors(text: str, message: str) -> None:
    assert describe(msgspec.ValidationError(text), "payload") == message
