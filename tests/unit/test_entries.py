"""The relay's input check, without Redis: a stream entry in, an event or a kind of malformed out.

:func:`parse_entry` takes what redis-py returns for one entry (an ID and a dict of fields), so
these tests build exactly that. What it accepts is also pinned against what the hub itself
accepts (:meth:`Hub.broadcast`), so that nothing a hub publishes is skipped by a relay.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.broker.entries import (
    MAX_SEQ,
    Entry,
    Malformed,
    entry_position,
    parse_entry,
    parse_head,
)
from sidecar.envelope import Event, encode, loads_strict, with_seq
from sidecar.protocol import check_broadcast_type

LIMIT = 1 << 20
GOOD = with_seq(encode(Event("stream:created", {"projectId": "p"}, "2026-01-01T00:00:00Z")), 12)


def d(data: bytes) -> dict[bytes, bytes]:
    return {b"d": data}


def test_an_entry_as_publish_lua_writes_it_is_an_event() -> None:
    assert parse_entry(b"12-0", d(GOOD), LIMIT) == Entry(12, GOOD)
    assert parse_entry(b"1-0", d(b'{"type":"app:x","seq":1}'), LIMIT) == Entry(
        1, b'{"type":"app:x","seq":1}'
    )
    # what Hub.broadcast takes as given: whitespace, no payload, extra keys
    spaced = b'{"type": "app:x", "extra": [1] ,"seq":7}'
    assert parse_entry(b"7-0", d(spaced), LIMIT) == Entry(7, spaced)
    top = b'{"type":"app:x","seq":%d}' % MAX_SEQ
    assert parse_entry(b"%d-0" % MAX_SEQ, d(top), LIMIT) == Entry(MAX_SEQ, top)


@pytest.mark.parametrize(
    ("entry_id", "fields", "kind"),
    [
        (b"12-1", d(GOOD), Malformed.ID),  # a sub-ID: never written by a publish
        (b"0-0", d(GOOD), Malformed.ID),
        (b"%d-0" % (MAX_SEQ + 1), d(GOOD), Malformed.ID),  # beyond what JSON numbers hold
        (b"18446744073709551615-0", d(GOOD), Malformed.ID),
        (b"12", d(GOOD), Malformed.ID),
        ("12-0", d(GOOD), Malformed.ID),  # not bytes
        (b"12-0", {}, Malformed.FIELDS),  # the entry of issue 19, item 3: no "d"
        (b"12-0", {b"x": b"y"}, Malformed.FIELDS),
        (b"12-0", {b"d": GOOD, b"x": b"y"}, Malformed.FIELDS),
        (b"12-0", None, Malformed.FIELDS),
        (b"12-0", {b"d": None}, Malformed.FIELDS),
        (b"12-0", {"d": GOOD}, Malformed.FIELDS),  # a str key: not what redis-py returns
        (b"12-0", d(b""), Malformed.NOT_JSON),
        (b"12-0", d(b"not json"), Malformed.NOT_JSON),
        (b"12-0", d(b'{"type":"app:x","n":NaN,"seq":12}'), Malformed.NOT_JSON),
        (b"12-0", d(b'{"type":"app:x","n":Infinity,"seq":12}'), Malformed.NOT_JSON),
        (b"12-0", d(b'{"type":"connection:status","type":"app:x","seq":12}'), Malformed.NOT_JSON),
        (b"12-0", d('{"type":"app:x","seq":12}'.encode("utf-16")), Malformed.NOT_JSON),
        (b"12-0", d(b'{"type":"app:\xff","seq":12}'), Malformed.NOT_JSON),
        (b"12-0", d(b'{"type":"app:x","s":"\xed\xa0\x80","seq":12}'), Malformed.NOT_JSON),
        (b"12-0", d(b"[" * 100_000 + b"]" * 100_000), Malformed.NOT_JSON),
        (b"12-0", d(b'[{"type":"app:x","seq":12}]'), Malformed.NOT_ENVELOPE),
        (b"12-0", d(b'{"seq":12}'), Malformed.NOT_ENVELOPE),
        (b"12-0", d(b'{"type":"Bad Name","seq":12}'), Malformed.NOT_ENVELOPE),
        (b"12-0", d(b'{"type":"app:x\\n","seq":12}'), Malformed.NOT_ENVELOPE),
        (b"12-0", d(b'{"type":7,"seq":12}'), Malformed.NOT_ENVELOPE),
        (b"12-0", d(b'{"type":"connection:status","seq":12}'), Malformed.RESERVED_TYPE),
        (b"12-0", d(b'{"type":"connection:other","seq":12}'), Malformed.RESERVED_TYPE),
        (b"12-0", d(b'{"type":"chat:send","seq":12}'), Malformed.RESERVED_TYPE),
        (b"12-0", d(b'{"type":"chat:cancel","seq":12}'), Malformed.RESERVED_TYPE),
        (b"12-0", d(b'{"type":"app:x","seq":13}'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"type":"app:x"}'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","seq":"12"}'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","seq":12.0}'), Malformed.SEQ_MISMATCH),
        (b"1-0", d(b'{"type":"app:x","seq":true}'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"seq":12,"type":"app:x"}'), Malformed.SEQ_MISMATCH),  # not the last key
        (b"12-0", d(b'{"type":"app:x","seq":12 }'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","p":{"seq":12}}'), Malformed.SEQ_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","channel":"chat:c1","seq":12}'), Malformed.CHANNEL_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","channel":"","seq":12}'), Malformed.CHANNEL_MISMATCH),
        (b"12-0", d(b'{"type":"app:x","seq":12,"channel":"chat:c1"}'), Malformed.CHANNEL_MISMATCH),
        (b"12-0", d(b'{"type":"channel:subscribed","seq":12}'), Malformed.RESERVED_TYPE),
    ],
)
def test_each_kind_of_malformed_entry_is_named(entry_id: Any, fields: Any, kind: Malformed) -> None:
    assert parse_entry(entry_id, fields, LIMIT) is kind


def test_an_entry_over_the_limit_is_too_large_and_the_limit_itself_is_not() -> None:
    assert parse_entry(b"12-0", d(GOOD), len(GOOD)) == Entry(12, GOOD)
    assert parse_entry(b"12-0", d(GOOD), len(GOOD) - 1) is Malformed.TOO_LARGE
    huge = b'{"type":"app:x","p":"' + b"x" * (2 << 20) + b'","seq":12}'
    assert parse_entry(b"12-0", d(huge), LIMIT) is Malformed.TOO_LARGE  # not even decoded


def test_the_kinds_are_the_metric_labels() -> None:
    assert [kind.value for kind in Malformed] == [
        "id",
        "fields",
        "too-large",
        "not-json",
        "not-envelope",
        "reserved-type",
        "seq-mismatch",
        "channel-mismatch",
        "ahead",
    ]


@pytest.mark.parametrize(
    ("epoch", "seq", "head"),
    [
        (b"3f2a9c1d", b"42", ("3f2a9c1d", 42)),
        (b"e", b"0", ("e", 0)),
        (b"A_z-9" * 12 + b"abcd", b"9" * 15, ("A_z-9" * 12 + "abcd", 10**15 - 1)),
        (None, b"1", None),  # Redis lost the data
        (b"e1", None, None),
        (b"", b"1", None),
        (b"e" * 65, b"1", None),  # a client could not send it back in since
        (b"bad epoch", b"1", None),
        (b"\xff", b"1", None),
        (b"e1", b"", None),
        (b"e1", b"abc", None),
        (b"e1", b"-1", None),
        (b"e1", b"1e3", None),
        (b"e1", b"1" * 16, None),
        ("e1", b"1", None),
    ],
)
def test_the_head_is_read_as_publish_lua_checks_it(epoch: Any, seq: Any, head: Any) -> None:
    assert parse_head(epoch, seq) == head


def test_entry_positions() -> None:
    assert entry_position(b"12-0") == (12, 0)
    assert entry_position(b"1796526106415-3") == (1796526106415, 3)
    with pytest.raises(ValueError):
        entry_position(b"12")


# -- properties -------------------------------------------------------------------------------

_ids = st.one_of(
    st.integers(0, 2**64 - 1).map(lambda n: b"%d-0" % n),
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)).map(lambda p: b"%d-%d" % p),
    st.binary(max_size=24),
)
_texts = st.text(st.characters(exclude_categories=["Cs"]))  # (a lone surrogate is no UTF-8)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=10,
)
_finite = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_infinity=False, allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=10,
)
_types = st.sampled_from(["app:x", "stream:created", "connection:status", "chat:send", "Bad"])
_datas = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda t, p, seq: json.dumps({"type": t, "payload": p, "seq": seq}).encode(),
        _types,
        _json_values,
        st.integers(-2, 2**64),
    ),
)
_fields = st.one_of(
    _datas.map(d),
    st.dictionaries(st.binary(max_size=3), st.binary(max_size=50), max_size=3),
    st.none(),
)


@settings(max_examples=500, deadline=None)
@given(entry_id=_ids, fields=_fields)
def test_any_entry_is_an_event_or_a_kind_never_an_exception(entry_id: Any, fields: Any) -> None:
    item = parse_entry(entry_id, fields, 4096)
    if isinstance(item, Malformed):
        return
    ms, sub = entry_position(entry_id)
    assert sub == 0 and item.seq == ms and 1 <= item.seq <= MAX_SEQ
    assert item.data == fields[b"d"] and len(item.data) <= 4096
    envelope = loads_strict(item.data)  # strict JSON a browser's JSON.parse reads
    check_broadcast_type(envelope["type"])
    assert envelope["seq"] == item.seq and item.data.endswith(b',"seq":%d}' % item.seq)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(_texts, _finite | _texts, max_size=4),
    seq=st.integers(1, MAX_SEQ),
)
def test_every_event_a_hub_publishes_is_one_the_relay_accepts(payload: Any, seq: int) -> None:
    encoded = encode(Event("app:thing", payload))
    assert parse_entry(b"%d-0" % seq, d(with_seq(encoded, seq)), LIMIT) == Entry(
        seq, with_seq(encoded, seq)
    )
