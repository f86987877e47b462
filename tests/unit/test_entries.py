"""The relay's input check, without Redis: a stream entry in, an event, a revocation or a kind
of malformed out.

:func:`parse_entry` takes what redis-py returns for one entry (an ID and a dict of fields), so
these tests build exactly that: ``<pos>-0`` and ``d``, ``s`` (the default channel), plus ``c``,
``e`` (a named one), or ``k=revoke``, ``u``, ``c`` (a revocation), as ``publish.lua`` writes
them. :func:`parse_history` takes one item of a channel's history list. What they accept is
also pinned against what the hub itself publishes (:meth:`Hub.publish` on any channel), so that
nothing a hub publishes is skipped by a relay or a resume.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.broker import entries
from sidecar.broker.entries import (
    MAX_SEQ,
    Entry,
    Head,
    Malformed,
    entry_position,
    parse_entry,
    parse_head,
    parse_history,
)
from sidecar.core.hub import Hub
from sidecar.core.stream import Item, Position, Revocation
from sidecar.envelope import Event, encode, loads_strict, with_seq
from sidecar.protocol import CHANNEL_RE, USER_RE, check_broadcast_type, is_channel_name

LIMIT = 1 << 20
P1 = "project:p1"
EPOCH = "Hq3k-_9z"
GOOD = with_seq(encode(Event("stream:created", {"projectId": "p"}, "2026-01-01T00:00:00Z")), 12)
NAMED = with_seq(encode(Event("stream:created", {"projectId": "p"}, "2026-01-01T00:00:00Z")), 3, P1)


def d(data: bytes, seq: int | bytes = 12) -> dict[bytes, bytes]:
    """A default-channel entry's fields, as publish.lua writes them."""
    return {b"d": data, b"s": seq if isinstance(seq, bytes) else b"%d" % seq}


def named(
    data: bytes = NAMED, seq: int | bytes = 3, channel: bytes = P1.encode(), epoch: bytes = b"E1"
) -> dict[bytes, bytes]:
    """A named channel's entry's fields, as publish.lua writes them."""
    return {**d(data, seq), b"c": channel, b"e": epoch}


def revoke(user: bytes = b"alice", channel: bytes = b"team:red", k: bytes = b"revoke") -> Any:
    """A revocation's fields, as publish.lua writes them."""
    return {b"k": k, b"u": user, b"c": channel}


def test_an_entry_as_publish_lua_writes_it_is_an_event() -> None:
    assert parse_entry(b"12-0", d(GOOD), LIMIT) == Entry(12, "", "", 12, GOOD)
    # the ID is the global position, s the channel's seq: they differ once channels exist
    assert parse_entry(b"40-0", d(GOOD), LIMIT) == Entry(40, "", "", 12, GOOD)
    assert parse_entry(b"1-0", d(b'{"type":"app:x","seq":1}', 1), LIMIT) == Entry(
        1, "", "", 1, b'{"type":"app:x","seq":1}'
    )
    # what Hub.broadcast takes as given: whitespace, no payload, extra keys
    spaced = b'{"type": "app:x", "extra": [1] ,"seq":7}'
    assert parse_entry(b"7-0", d(spaced, 7), LIMIT) == Entry(7, "", "", 7, spaced)
    top = b'{"type":"app:x","seq":%d}' % MAX_SEQ
    assert parse_entry(b"%d-0" % MAX_SEQ, d(top, MAX_SEQ), LIMIT) == Entry(
        MAX_SEQ, "", "", MAX_SEQ, top
    )


def test_a_named_channels_entry_is_an_event_of_that_channel_and_epoch() -> None:
    assert parse_entry(b"12-0", named(), LIMIT) == Entry(12, P1, "E1", 3, NAMED)
    deep = b"doc:9:comments.v2:~x_-"
    data = b'{"type":"app:x","seq":1,"channel":"%s"}' % deep
    assert parse_entry(b"5-0", named(data, 1, deep, b"A" * 64), LIMIT) == Entry(
        5, deep.decode(), "A" * 64, 1, data
    )
    longest = b"a" * 32 + b":" + b"b" * 64 + b":" + b"c" * 30  # exactly 128 bytes
    data = b'{"type":"app:x","seq":9,"channel":"%s"}' % longest
    assert parse_entry(b"9-0", named(data, 9, longest), LIMIT) == Entry(
        9, longest.decode(), "E1", 9, data
    )


def test_a_revocation_as_publish_lua_writes_it() -> None:
    assert parse_entry(b"13-0", revoke(), LIMIT) == Revocation(13, "alice", "team:red")
    assert parse_entry(b"1-0", revoke(b"a.b~c-D_9", b"user:alice"), LIMIT) == Revocation(
        1, "a.b~c-D_9", "user:alice"
    )
    assert parse_entry(b"12-1", revoke(), LIMIT) is Malformed.ID  # the ID rule holds for them


# every field of every kind, hostile: the check must name each, and never raise
MALFORMED: list[tuple[Any, Any, Malformed]] = [
    # the ID
    (b"12-1", d(GOOD), Malformed.ID),  # a sub-ID: never written by a publish
    (b"0-0", d(GOOD), Malformed.ID),
    (b"%d-0" % (MAX_SEQ + 1), d(GOOD), Malformed.ID),  # beyond what JSON numbers hold
    (b"18446744073709551615-0", d(GOOD), Malformed.ID),
    (b"12", d(GOOD), Malformed.ID),
    ("12-0", d(GOOD), Malformed.ID),  # not bytes
    # the set of fields (issue 19, item 3: no "d")
    (b"12-0", {}, Malformed.FIELDS),
    (b"12-0", {b"x": b"y"}, Malformed.FIELDS),
    (b"12-0", {b"d": GOOD}, Malformed.FIELDS),  # a v1 entry: no s
    (b"12-0", {b"s": b"12"}, Malformed.FIELDS),
    (b"12-0", {**d(GOOD), b"x": b"y"}, Malformed.FIELDS),
    (b"12-0", {**d(GOOD), b"c": P1.encode()}, Malformed.FIELDS),  # c without e
    (b"12-0", {**d(GOOD), b"e": b"E1"}, Malformed.FIELDS),  # e without c
    (b"12-0", {**named(), b"k": b"revoke"}, Malformed.FIELDS),
    (b"12-0", {**revoke(), b"d": GOOD}, Malformed.FIELDS),
    (b"12-0", {**revoke(), b"e": b"E1"}, Malformed.FIELDS),
    (b"12-0", None, Malformed.FIELDS),
    (b"12-0", [(b"d", GOOD), (b"s", b"12")], Malformed.FIELDS),
    (b"12-0", {b"d": None, b"s": b"12"}, Malformed.FIELDS),
    (b"12-0", {b"d": GOOD, b"s": 12}, Malformed.FIELDS),  # not what redis-py returns
    (b"12-0", {"d": GOOD, "s": b"12"}, Malformed.FIELDS),  # str keys: neither
    # s: the channel's seq
    (b"12-0", d(GOOD, b""), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"0"), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"-12"), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"012"), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"12 "), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"12.0"), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"1e1"), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"twelve"), Malformed.FIELDS),
    (b"12-0", d(GOOD, "١٢".encode()), Malformed.FIELDS),  # digits, but not ASCII ones
    (b"12-0", d(GOOD, b"%d" % (MAX_SEQ + 1)), Malformed.FIELDS),
    (b"12-0", d(GOOD, b"9" * 40), Malformed.FIELDS),
    (b"12-0", d(GOOD, 13), Malformed.SEQ_MISMATCH),  # s is not the seq in d
    (b"12-0", named(seq=4), Malformed.SEQ_MISMATCH),
    # c: a named channel's name
    (b"12-0", named(channel=b""), Malformed.FIELDS),
    (b"12-0", named(channel=b"Project:p1"), Malformed.FIELDS),
    (b"12-0", named(channel=b"project:p1,chat:c9"), Malformed.FIELDS),
    (b"12-0", named(channel=b"project:p1@E1"), Malformed.FIELDS),
    (b"12-0", named(channel=b"a:b:c:d:e"), Malformed.FIELDS),
    (b"12-0", named(channel=b"project:p1\n"), Malformed.FIELDS),
    (b"12-0", named(channel=b'project:p1"'), Malformed.FIELDS),
    (b"12-0", named(channel="project:pé".encode()), Malformed.FIELDS),
    (b"12-0", named(channel=b"project:\xff"), Malformed.FIELDS),
    (b"12-0", named(channel=b"a" * 32 + b":" + b"b" * 64 + b":" + b"c" * 31), Malformed.FIELDS),
    # e: a named channel's epoch
    (b"12-0", named(epoch=b""), Malformed.FIELDS),
    (b"12-0", named(epoch=b"not an epoch"), Malformed.FIELDS),
    (b"12-0", named(epoch=b"E1:3"), Malformed.FIELDS),  # a client could not send it back
    (b"12-0", named(epoch=b"E" * 65), Malformed.FIELDS),
    (b"12-0", named(epoch=b"\xff"), Malformed.FIELDS),
    (b"12-0", named(epoch=b"E1\n"), Malformed.FIELDS),
    # d: the envelope
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
    (b"12-0", d(b'{"type":"channel:subscribed","seq":12}'), Malformed.RESERVED_TYPE),
    (
        b"12-0",
        named(b'{"type":"channel:unsubscribed","seq":3,"channel":"project:p1"}'),
        Malformed.RESERVED_TYPE,
    ),
    (b"12-0", d(b'{"type":"app:x","seq":13}'), Malformed.SEQ_MISMATCH),
    (b"12-0", d(b'{"type":"app:x"}'), Malformed.SEQ_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","seq":"12"}'), Malformed.SEQ_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","seq":12.0}'), Malformed.SEQ_MISMATCH),
    (b"1-0", d(b'{"type":"app:x","seq":true}', 1), Malformed.SEQ_MISMATCH),
    (b"12-0", d(b'{"seq":12,"type":"app:x"}'), Malformed.SEQ_MISMATCH),  # not the last key
    (b"12-0", d(b'{"type":"app:x","seq":12 }'), Malformed.SEQ_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","p":{"seq":12}}'), Malformed.SEQ_MISMATCH),
    # the channel in d: none on the default channel, the entry's own on a named one
    (b"12-0", d(b'{"type":"app:x","channel":"chat:c1","seq":12}'), Malformed.CHANNEL_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","channel":"","seq":12}'), Malformed.CHANNEL_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","channel":null,"seq":12}'), Malformed.CHANNEL_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","seq":12,"channel":"chat:c1"}'), Malformed.CHANNEL_MISMATCH),
    (b"12-0", d(b'{"type":"app:x","seq":12,"channel":""}'), Malformed.CHANNEL_MISMATCH),
    (b"12-0", named(b'{"type":"app:x","seq":3}'), Malformed.CHANNEL_MISMATCH),  # none in d
    (
        b"12-0",
        named(b'{"type":"app:x","seq":3,"channel":"chat:c9"}'),  # another one
        Malformed.CHANNEL_MISMATCH,
    ),
    (
        b"12-0",
        named(b'{"type":"app:x","seq":3,"channel":"project:P1"}'),  # names are case-sensitive
        Malformed.CHANNEL_MISMATCH,
    ),
    (
        b"12-0",
        named(b'{"type":"app:x","seq":3,"channel":["project:p1"]}'),
        Malformed.CHANNEL_MISMATCH,
    ),
    (
        b"12-0",
        named(b'{"type":"app:x","channel":"project:p1","seq":3}'),  # not where hubs splice it
        Malformed.SEQ_MISMATCH,
    ),
    (
        b"12-0",
        named(b'{"type":"app:x","seq":3,"channel":"project:p1","x":1}'),
        Malformed.SEQ_MISMATCH,
    ),
    (
        b"12-0",
        named(b'{"type":"app:x","seq":3,"channel":"project\\u003ap1"}'),  # the same, escaped
        Malformed.SEQ_MISMATCH,
    ),
    # a revocation's fields
    (b"12-0", revoke(k=b"Revoke"), Malformed.FIELDS),
    (b"12-0", revoke(k=b""), Malformed.FIELDS),
    (b"12-0", revoke(k=b"publish"), Malformed.FIELDS),
    (b"12-0", revoke(user=b""), Malformed.FIELDS),
    (b"12-0", revoke(user=b"al ice"), Malformed.FIELDS),
    (b"12-0", revoke(user=b"alice:x"), Malformed.FIELDS),
    (b"12-0", revoke(user=b"alice,bob"), Malformed.FIELDS),
    (b"12-0", revoke(user=b"a" * 65), Malformed.FIELDS),
    (b"12-0", revoke(user="alicé".encode()), Malformed.FIELDS),
    (b"12-0", revoke(user=b"\xff"), Malformed.FIELDS),
    (b"12-0", revoke(user=b"alice\n"), Malformed.FIELDS),
    (b"12-0", revoke(channel=b""), Malformed.FIELDS),
    (b"12-0", revoke(channel=b"Team:red"), Malformed.FIELDS),
    (b"12-0", revoke(channel=b"team:red,team:blue"), Malformed.FIELDS),
    (b"12-0", revoke(channel=b"team:\xff"), Malformed.FIELDS),
    (b"12-0", {b"k": b"revoke", b"u": b"alice"}, Malformed.FIELDS),
    (b"12-0", {b"k": b"revoke", b"c": b"team:red"}, Malformed.FIELDS),
    (b"12-0", {b"k": b"revoke", b"u": None, b"c": b"team:red"}, Malformed.FIELDS),
]


@pytest.mark.parametrize(("entry_id", "fields", "kind"), MALFORMED)
def test_each_kind_of_malformed_entry_is_named(entry_id: Any, fields: Any, kind: Malformed) -> None:
    assert parse_entry(entry_id, fields, LIMIT) is kind


def test_an_entry_over_the_limit_is_too_large_and_the_limit_itself_is_not() -> None:
    assert parse_entry(b"12-0", d(GOOD), len(GOOD)) == Entry(12, "", "", 12, GOOD)
    assert parse_entry(b"12-0", d(GOOD), len(GOOD) - 1) is Malformed.TOO_LARGE
    assert parse_entry(b"12-0", named(), len(NAMED)) == Entry(12, P1, "E1", 3, NAMED)
    assert parse_entry(b"12-0", named(), len(NAMED) - 1) is Malformed.TOO_LARGE
    huge = b'{"type":"app:x","p":"' + b"x" * (2 << 20) + b'","seq":12}'
    assert parse_entry(b"12-0", d(huge), LIMIT) is Malformed.TOO_LARGE
    # not even decoded: decoding this one would make it not-json
    assert parse_entry(b"12-0", d(b"[" * 4096), 4000) is Malformed.TOO_LARGE


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
        "out-of-order",
    ]


# -- history items: "<pos> <envelope>", newest first in a channel's list ----------------------


def test_a_history_item_as_publish_lua_writes_it_is_an_event_of_its_channel() -> None:
    assert parse_history(b"40 " + GOOD, "", "S1", LIMIT) == Entry(40, "", "S1", 12, GOOD)
    assert parse_history(b"7 " + NAMED, P1, "E1", LIMIT) == Entry(7, P1, "E1", 3, NAMED)
    top = b'{"type":"app:x","seq":%d}' % MAX_SEQ
    item = b"%d %s" % (MAX_SEQ, top)
    assert parse_history(item, "", "S1", LIMIT) == Entry(MAX_SEQ, "", "S1", MAX_SEQ, top)
    assert parse_history(b"7 " + NAMED, P1, "E1", len(NAMED)) == Entry(7, P1, "E1", 3, NAMED)


HISTORY_MALFORMED: list[tuple[Any, str, Malformed]] = [
    (None, "", Malformed.FIELDS),
    ("40 " + GOOD.decode(), "", Malformed.FIELDS),  # not bytes
    (GOOD, "", Malformed.ID),  # no position
    (b"40" + GOOD, "", Malformed.ID),
    (b" " + GOOD, "", Malformed.ID),
    (b"0 " + GOOD, "", Malformed.ID),
    (b"040 " + GOOD, "", Malformed.ID),
    (b"-40 " + GOOD, "", Malformed.ID),
    (b"4x " + GOOD, "", Malformed.ID),
    (b"%d %s" % (MAX_SEQ + 1, GOOD), "", Malformed.ID),
    (b"40\t" + GOOD, "", Malformed.ID),
    (b"40 ", "", Malformed.NOT_JSON),
    (b"40 not json", "", Malformed.NOT_JSON),
    (b'40 {"type":"app:x","n":NaN,"seq":1}', "", Malformed.NOT_JSON),
    (b'40 {"type":"app:x","seq":1,"seq":2}', "", Malformed.NOT_JSON),
    (b"40 " + b"[" * 100_000, "", Malformed.NOT_JSON),
    (b'40 [{"type":"app:x","seq":1}]', "", Malformed.NOT_ENVELOPE),
    (b"40 12", "", Malformed.NOT_ENVELOPE),
    (b'40 {"type":"Bad","seq":1}', "", Malformed.NOT_ENVELOPE),
    (b'40 {"type":"connection:status","seq":1}', "", Malformed.RESERVED_TYPE),
    (b'40 {"type":"channel:error","seq":1}', "", Malformed.RESERVED_TYPE),
    (b'40 {"type":"app:x"}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":0}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":-1}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":"1"}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":1.0}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":true}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":%d}' % (MAX_SEQ + 1), "", Malformed.SEQ_MISMATCH),
    (b'40 {"seq":1,"type":"app:x"}', "", Malformed.SEQ_MISMATCH),
    (b'40 {"type":"app:x","seq":1,"channel":"project:p1"}', "", Malformed.CHANNEL_MISMATCH),
    (b'40 {"type":"app:x","channel":"","seq":1}', "", Malformed.CHANNEL_MISMATCH),
    (b'40 {"type":"app:x","seq":1}', P1, Malformed.CHANNEL_MISMATCH),  # another list's
    (b'40 {"type":"app:x","seq":1,"channel":"chat:c9"}', P1, Malformed.CHANNEL_MISMATCH),
    (b'40 {"type":"app:x","channel":"project:p1","seq":1}', P1, Malformed.SEQ_MISMATCH),
]


@pytest.mark.parametrize(("value", "channel", "kind"), HISTORY_MALFORMED)
def test_each_kind_of_malformed_history_item_is_named(
    value: Any, channel: str, kind: Malformed
) -> None:
    assert parse_history(value, channel, "E1", LIMIT) is kind


def test_a_history_item_over_the_limit_is_too_large_before_it_is_decoded() -> None:
    assert parse_history(b"7 " + NAMED, P1, "E1", len(NAMED) - 1) is Malformed.TOO_LARGE
    huge = b'{"type":"app:x","p":"' + b"x" * (2 << 20) + b'","seq":1}'
    assert parse_history(b"1 " + huge, "", "E1", LIMIT) is Malformed.TOO_LARGE
    # decoding it first (a resume's memory) would make it not-json
    assert parse_history(b"1 " + b"[" * 4096, "", "E1", 4000) is Malformed.TOO_LARGE


# -- the meta hash ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "pos", "seq", "head"),
    [
        (b"3f2a9c1d", b"42", b"40", Head("3f2a9c1d", 42, 40)),
        (b"e", b"0", b"0", Head("e", 0, 0)),
        (
            b"A_z-9" * 12 + b"abcd",
            b"9" * 15,
            b"9" * 15,
            Head("A_z-9" * 12 + "abcd", 10**15 - 1, 10**15 - 1),
        ),
        (b"e1", b"7", b"0", Head("e1", 7, 0)),  # only named channels published so far
        (None, b"1", b"1", None),  # Redis lost the data
        (b"e1", None, b"1", None),  # a v1 meta: no pos
        (b"e1", b"1", None, None),
        (b"", b"1", b"1", None),
        (b"e" * 65, b"1", b"1", None),  # a client could not send it back in since
        (b"bad epoch", b"1", b"1", None),
        (b"\xff", b"1", b"1", None),
        (b"e1", b"", b"1", None),
        (b"e1", b"abc", b"1", None),
        (b"e1", b"-1", b"1", None),
        (b"e1", b"1e3", b"1", None),
        (b"e1", b"1" * 16, b"1", None),
        (b"e1", b"1", b"", None),
        (b"e1", b"1", b"twelve", None),
        (b"e1", b"1", b"1" * 16, None),
        ("e1", b"1", b"1", None),
        (b"e1", 1, b"1", None),
    ],
)
def test_the_head_is_read_as_publish_lua_checks_it(
    epoch: Any, pos: Any, seq: Any, head: Any
) -> None:
    assert parse_head(epoch, pos, seq) == head


def test_entry_positions() -> None:
    assert entry_position(b"12-0") == (12, 0)
    assert entry_position(b"1796526106415-3") == (1796526106415, 3)
    with pytest.raises(ValueError, match="not a stream entry ID: b'12'"):
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
_channels = st.from_regex(CHANNEL_RE, fullmatch=True)
_maybe_channels = st.sampled_from(["", P1, "Bad", "a:b,c"]) | _channels
_seqs = st.integers(-2, 2**64)


def _envelope(kind: str, payload: Any, seq: int, channel: str) -> bytes:
    envelope = {"type": kind, "payload": payload, "seq": seq}
    return json.dumps({**envelope, **({"channel": channel} if channel else {})}).encode()


_datas = st.one_of(
    st.binary(max_size=200),
    st.builds(_envelope, _types, _json_values, _seqs, _maybe_channels),
)
_field_values = st.one_of(
    st.binary(max_size=50),
    _seqs.map(lambda n: b"%d" % n),
    _maybe_channels.map(str.encode),
    st.sampled_from([b"revoke", b"alice", b"E1"]),
)
_fields = st.one_of(
    st.builds(d, _datas, _seqs.map(lambda n: b"%d" % n)),
    st.builds(named, _datas, _seqs.map(lambda n: b"%d" % n), _field_values, _field_values),
    st.builds(revoke, _field_values, _field_values, _field_values),
    st.dictionaries(st.sampled_from([b"d", b"s", b"c", b"e", b"k", b"u", b"x"]), _field_values),
    st.dictionaries(st.binary(max_size=3), st.binary(max_size=50), max_size=3),
    st.none(),
)


@settings(max_examples=500, deadline=None)
@given(entry_id=_ids, fields=_fields)
def test_any_entry_is_an_event_a_revocation_or_a_kind_never_an_exception(
    entry_id: Any, fields: Any
) -> None:
    item = parse_entry(entry_id, fields, 4096)
    if isinstance(item, Malformed):
        return
    ms, sub = entry_position(entry_id)
    assert sub == 0 and item.pos == ms and 1 <= item.pos <= MAX_SEQ
    if isinstance(item, Revocation):
        assert fields == revoke(item.user.encode(), item.channel.encode())
        assert USER_RE.fullmatch(item.user) and is_channel_name(item.channel)
        return
    assert item.data == fields[b"d"] and len(item.data) <= 4096 and 1 <= item.seq <= MAX_SEQ
    envelope = loads_strict(item.data)  # strict JSON a browser's JSON.parse reads
    check_broadcast_type(envelope["type"])
    assert envelope["seq"] == item.seq == int(fields[b"s"])
    if item.channel:
        assert is_channel_name(item.channel) and item.channel == fields[b"c"].decode()
        assert envelope["channel"] == item.channel and item.epoch == fields[b"e"].decode()
        assert item.data.endswith(b',"seq":%d,"channel":"%s"}' % (item.seq, fields[b"c"]))
    else:
        assert "channel" not in envelope and item.epoch == "" and set(fields) == {b"d", b"s"}
        assert item.data.endswith(b',"seq":%d}' % item.seq)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.binary(max_size=60), st.builds(lambda p, e: b"%d %s" % (p, e), _seqs, _datas)
    ),
    channel=st.sampled_from(["", P1]),
)
def test_any_history_item_is_an_event_of_its_channel_or_a_kind(value: bytes, channel: str) -> None:
    item = parse_history(value, channel, "E1", 4096)
    if isinstance(item, Malformed):
        return
    envelope = loads_strict(item.data)
    check_broadcast_type(envelope["type"])
    assert value == b"%d %s" % (item.pos, item.data) and 1 <= item.pos <= MAX_SEQ
    assert envelope["seq"] == item.seq and (item.channel, item.epoch) == (channel, "E1")
    assert envelope.get("channel", "") == channel


class Capture:
    """A sequencer that numbers as publish.lua does and keeps what it would write to Redis."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, dict[bytes, bytes], bytes]] = []  # id, fields, history
        self.seqs: dict[str, int] = {}
        self.pos = 0

    def publish_items(self, items: Sequence[Item], idempotency_key: str | None = None) -> list[int]:
        answer = []
        for channel, data in items:
            seq = self.seqs[channel] = self.seqs.get(channel, 0) + 1
            self.pos += 1
            # publish.lua's splice: the data without its "}", ',"seq":N' [',"channel":"c"'], "}"
            tail = b',"seq":%d}' % seq
            if channel:
                tail = b',"seq":%d,"channel":"%s"}' % (seq, channel.encode())
            envelope = data[:-1] + tail
            assert envelope == with_seq(data, seq, channel)  # what a hub alone splices
            fields = {b"d": envelope, b"s": b"%d" % seq}
            if channel:
                fields |= {b"c": channel.encode(), b"e": EPOCH.encode()}
            self.written.append((b"%d-0" % self.pos, fields, b"%d %s" % (self.pos, envelope)))
            answer.append(seq)
        return answer

    def heads(self, channels: Sequence[str]) -> list[Position]:
        return [Position(EPOCH, self.seqs.get(c, 0)) for c in channels]

    def revoke(self, user: str, channel: str) -> None:
        raise AssertionError("not used here")


_broadcast_types = st.one_of(
    st.from_regex(
        r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4}){0,2}:[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?",
        fullmatch=True,
    ),
    st.sampled_from(["stream:created", "chat:text-delta", "connection:status", "chat:send"]),
)


@settings(max_examples=300, deadline=None)
@given(
    kind=_broadcast_types,
    payload=st.dictionaries(_texts, _finite | _texts, max_size=4),
    channel=st.one_of(st.just(""), _channels),
    count=st.integers(1, 3),
)
def test_every_event_a_hub_publishes_on_any_channel_is_one_the_relay_accepts(
    kind: str, payload: Any, channel: str, count: int
) -> None:
    capture = Capture()
    hub = Hub(sequencer=capture, max_event_bytes=4096)  # (never started: nothing is fanned out)
    events = [Event(kind, payload) for _ in range(count)]
    try:
        hub.publish(events, channel or None)
    except ValueError:
        return  # the hub refused it (a reserved type, too large): nothing reaches Redis
    assert len(capture.written) == count
    for n, (entry_id, fields, history) in enumerate(capture.written, start=1):
        seq, epoch = n, EPOCH if channel else ""
        expected = Entry(n, channel, epoch, seq, fields[b"d"])
        assert parse_entry(entry_id, fields, hub.max_event_bytes) == expected
        stored = parse_history(history, channel, EPOCH, hub.max_event_bytes)
        assert stored == Entry(n, channel, EPOCH, seq, fields[b"d"])


# -- the fast decode: what loads_strict decides, at a fraction of the cost ----------------------


def _strict(data: bytes) -> Any:
    """What the exact check makes of ``data``: its value, or ``Malformed.NOT_JSON``."""
    try:
        return loads_strict(data)
    except (ValueError, RecursionError):
        return Malformed.NOT_JSON


DECODED: list[bytes] = [
    GOOD,
    NAMED,
    b"{}",
    b"{ }",
    b'{"type":"a:b","seq":1}',
    b'{"type":"a:b","type":"c:d","seq":1}',  # a repeated key, compact: the sizes tell
    b'{"a":1,"a":1}',
    b'{"a":{},"b":[],"a":"x"}',
    b'{"\\u0061":1,"a":2}',  # the same key once escaped
    b'{"\\u0061":1}',
    b'{"a": 1}',  # not compact
    b' {"a":1}',
    b'{"\xc3\xa9":1,"\xc3\xa9":2}',  # a repeated key that is not ASCII
    b'{"\xc3\xa9":1}',
    b'{"a":"\xff"}',  # not UTF-8
    b'{"a":NaN}',
    b'{"a":[1,{"b":Infinity}]}',
    b'{"a":1e400}',
    b'{"a":123456789012345678901234567890}',
    b'{"a":"\\ud800"}',
    b'{"a":{"b":1,"b":2}}',  # repeated below the top level: not loads_strict's concern
    b"[1,2]",
    b'"text"',
    b"",
    b"{",
    b'{"a":1}x',
    b'\xff\xfe{\x00"\x00a\x00"\x00:\x001\x00}\x00',  # UTF-16
]


@pytest.mark.parametrize("data", DECODED)
def test_an_envelope_decodes_as_the_exact_check_decides(data: bytes) -> None:
    expected = _strict(data)
    got = entries._decode(data, LIMIT)
    if isinstance(expected, dict):
        assert got == expected
    else:
        not_json = expected is Malformed.NOT_JSON
        assert got is (Malformed.NOT_JSON if not_json else Malformed.NOT_ENVELOPE)


@pytest.mark.parametrize(
    "data", [GOOD, NAMED, b"{}", b'{"type":"a:b","seq":1}', b'{"a":{"b":1,"b":2},"c":[]}']
)
def test_compact_json_without_a_repeated_key_takes_the_fast_path(data: bytes) -> None:
    assert entries._decode_compact(data) == json.loads(data)


@pytest.mark.parametrize(
    "data",
    [b'{"a":1,"a":2}', b'{"a": 1}', b'{"\\u0061":1}', b'{"\xc3\xa9":1}', b"[1]", b'{"a":NaN}'],
)
def test_anything_else_is_left_to_the_exact_check(data: bytes) -> None:
    assert entries._decode_compact(data) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _objects(draw: st.DrawFn) -> bytes:
    """A JSON object's text: compact or not, perhaps with a key repeated, an escaped key or a
    byte changed."""
    pairs: list[tuple[str, Any]] = draw(st.lists(st.tuples(st.text(max_size=4), _json), max_size=5))
    repeat: bool = draw(st.booleans())
    if pairs and repeat:
        key: str = draw(st.sampled_from(pairs))[0]
        pairs.append((key, draw(_json)))  # a repeated key
    ascii_only = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", ": ")]))
    dump = functools.partial(json.dumps, ensure_ascii=ascii_only)
    parts = [dump(k) + separators[1] + dump(v) for k, v in pairs]
    data = ("{" + separators[0].join(parts) + "}").encode()
    if data and draw(st.integers(0, 9)) == 0:  # now and then, one byte anything
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    return data


@settings(max_examples=1000, deadline=None)
@given(data=_objects())
def test_any_object_decodes_as_the_exact_check_decides(data: bytes) -> None:
    expected = _strict(data)
    fast = entries._decode_compact(data)
    if fast is not None:  # the fast path only ever answers what the exact check would
        assert isinstance(expected, dict) and fast == expected
    got = entries._decode(data, LIMIT)
    assert got == expected if isinstance(expected, dict) else isinstance(got, Malformed)


def test_what_publishers_write_never_needs_the_exact_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # the point of the fast path: every entry a hub or Publisher writes is decided by it
    calls: list[bytes] = []

    def exact(data: bytes) -> Any:
        calls.append(data)
        return loads_strict(data)

    monkeypatch.setattr(entries, "loads_strict", exact)
    assert isinstance(parse_entry(b"5-0", named(), LIMIT), Entry)
    assert isinstance(parse_entry(b"5-0", d(GOOD), LIMIT), Entry)
    assert calls == []
    assert entries._decode(b'{"a": 1}', LIMIT) == {"a": 1}  # not compact: the exact check
    assert calls == [b'{"a": 1}']


def test_a_type_of_any_length_is_checked_as_the_hub_checks_it() -> None:
    # event types have no length limit: a long one (past what the check memoises) is an event
    long_type = "app:" + "-".join(["x"] * 150)
    data = with_seq(encode(Event(long_type, {}, "2026-01-01T00:00:00Z")), 12)
    assert parse_entry(b"5-0", d(data), LIMIT) == Entry(5, "", "", 12, data)
    reserved = with_seq(encode(Event("app:x", {}, "2026-01-01T00:00:00Z")), 12)
    reserved = reserved.replace(b'"app:x"', b'"connection:' + b"-".join([b"x"] * 150) + b'"')
    assert parse_entry(b"5-0", d(reserved), LIMIT) == Malformed.RESERVED_TYPE
