"""The wire envelope: event names, the timestamp format, encoding once, the ``seq`` splice."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.envelope import (
    Event,
    as_event,
    encode,
    encode_decoded,
    is_event_name,
    new_event,
    rfc3339_utc,
    with_seq,
)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 26, 8, 11, 16, 500000, UTC), "2026-11-26T08:11:16.5Z"),
        (datetime(2026, 11, 26, 8, 11, 16, tzinfo=UTC), "2026-11-26T08:11:16Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 123456, UTC), "2026-01-02T03:04:05.123456Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 1000, UTC), "2026-01-02T03:04:05.001Z"),
        (
            datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T03:04:05Z",
        ),
    ],
)
def test_timestamps_are_go_style_rfc3339_in_utc(moment: datetime, text: str) -> None:
    assert rfc3339_utc(moment) == text


@pytest.mark.posix_only("time.tzset (a zone change at run time) exists only on POSIX")
def test_timestamps_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert rfc3339_utc(moment) == "2026-01-02T03:04:05Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_default_timestamp_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = datetime.fromisoformat(rfc3339_utc().replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)
    assert rfc3339_utc().endswith("Z")


@pytest.mark.parametrize("name", ["app:tick", "stream:phase-changed", "a1:b2-c3", "x:y"])
def test_event_names_are_namespace_kebab_case(name: str) -> None:
    assert is_event_name(name)
    assert new_event(name, {}).type == name


@pytest.mark.parametrize(
    "name",
    [
        "app",
        "App:tick",
        "app:Tick",
        "app:tick\n",
        "1app:tick",
        "app:-tick",
        "app:tick-",
        "a:b:c",
        "",
        3,
    ],
)
def test_other_names_are_refused(name: object) -> None:
    assert not is_event_name(name)
    if isinstance(name, str):
        with pytest.raises(ValueError, match="is not namespace:kebab-case"):
            new_event(name, {})


def test_an_event_encodes_once_compactly_and_keeps_unicode() -> None:
    event = Event("app:tick", {"text": "é€", "n": 1}, "2026-01-01T00:00:00Z")
    data = encode(event)
    expected = (
        '{"type":"app:tick","payload":{"text":"é€","n":1},"timestamp":"2026-01-01T00:00:00Z"}'
    )
    assert data == expected.encode()
    assert event.to_dict() == json.loads(data)
    with pytest.raises(ValueError):
        encode(Event("app:tick", {"x": float("nan")}))


def test_the_payload_is_copied_into_the_dict() -> None:
    payload = {"a": 1}
    as_dict = Event("app:tick", payload, "t").to_dict()
    as_dict["payload"]["a"] = 2
    assert payload == {"a": 1}


def test_new_event_is_stamped_now() -> None:
    event = new_event("app:tick", {"a": 1})
    assert event.timestamp.endswith("Z") and event.payload == {"a": 1}


def test_with_seq_appends_the_key_last() -> None:
    data = encode(Event("app:tick", {}, "t"))
    assert with_seq(data, 42) == b'{"type":"app:tick","payload":{},"timestamp":"t","seq":42}'
    assert json.loads(with_seq(b'{"a":1}', 0)) == {"a": 1, "seq": 0}


# -- a plain {type, payload} dict where an Event is expected (issue 19) --------------------------


def test_a_plain_envelope_dict_is_an_event_and_an_event_is_itself() -> None:
    event = new_event("app:done", {"id": 7})
    assert as_event(event) is event
    made = as_event({"type": "chat:ack", "payload": {"ok": True}})
    assert (made.type, dict(made.payload)) == ("chat:ack", {"ok": True})
    assert json.loads(encode(made))["timestamp"].endswith("Z")
    assert dict(as_event({"type": "app:empty"}).payload) == {}


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        ({"type": "Not A Name", "payload": {}}, ValueError, "is not namespace:kebab-case"),
        ({"payload": {}}, ValueError, "None is not namespace:kebab-case"),
        ({"type": "app:x", "payload": [1]}, ValueError, "payload is an object, not list"),
        ({"type": "app:x", "payload": {}, "seq": 4}, ValueError, "only type and payload, not seq"),
        (["app:x", {}], TypeError, "an Event or a {type, payload} dict, not list"),
        ('{"type": "app:x"}', TypeError, "not str"),
    ],
)
def test_what_is_not_an_envelope_is_refused_naming_the_problem(
    value: object, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        as_event(value)  # type: ignore[arg-type]
    assert text in str(caught.value)


# -- the fast encoder of decoded payloads -------------------------------------------------------

#: What a JSON decoder gives and ``json_problem`` accepts: 64-bit ints, finite floats of every
#: magnitude (Python writes some with an exponent), any text without lone surrogates.
_texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e-3, max_value=1e-3)
    | _texts
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_texts, _values, max_size=5))
def test_a_decoded_payload_encodes_to_the_same_bytes_either_way(payload: dict[str, object]) -> None:
    event = Event("x:y", payload, "2026-01-02T03:04:05Z")
    assert encode_decoded(event) == encode(event)


@pytest.mark.parametrize(
    "value",
    [1e-05, 6.447425192009365e-05, 9.9e-05, 1e16, 1.2345678901234568e17, 1e22, -1.5e300, 5e-324],
)
def test_floats_python_writes_with_an_exponent_keep_pythons_form(value: float) -> None:
    event = Event("x:y", {"v": [value, "\u00e9"]}, "2026-01-02T03:04:05Z")
    assert encode_decoded(event) == encode(event)
    assert repr(value).encode() in encode_decoded(event)


@pytest.mark.parametrize("value", [0.0001, 1e15, 0.5, -0.0, 100.0, 2**63 - 1, "1e5", "0.00001"])
def test_other_values_encode_alike(value: object) -> None:
    event = Event("x:y", {"v": value, "w": "caf\u00e9 \u2028 \x1f"}, "2026-01-02T03:04:05Z")
    assert encode_decoded(event) == encode(event)
