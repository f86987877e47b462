"""The stream is input: one entry in, a valid event or a named kind of malformed out.

Anyone with write access to the keys (another deployment sharing the Redis, a bug in another
publisher, an operator's ``XADD``) can put anything into the stream. :func:`parse_entry`
decides, for one entry as redis-py returns it, whether it is an event the hubs may fan out
exactly as it is (what ``publish.lua`` writes, and what :meth:`Hub.broadcast
<sidecar.core.hub.Hub.broadcast>` would accept with its ``seq`` and channel spliced in), or a
revocation. Everything else is a :class:`Malformed` kind, which the relay counts
(``/metrics``, ``/api/v1/hub``), logs at most once per kind and interval, and skips.
:func:`parse_history` checks the entries of a channel's history list the same way.

An entry's ID is ``<pos>-0``, its global position. Its fields: ``d`` (the envelope) and ``s``
(its channel's seq) for an event of the default channel; also ``c`` (the channel) and ``e``
(the channel's epoch) for a named one; ``k=revoke``, ``u`` (a user) and ``c`` for a
revocation.

Pure functions and immutable values; no thread owns anything here, and nothing here imports
the ``redis`` client library.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

import msgspec

from ..core.stream import Position, Revocation
from ..envelope import is_event_name, loads_strict
from ..protocol import check_broadcast_type, is_channel_name, is_user

__all__ = [
    "MAX_SEQ",
    "Entry",
    "Head",
    "Malformed",
    "entry_position",
    "parse_entry",
    "parse_head",
    "parse_history",
    "parse_position",
]

#: The largest seq (and position) an entry may carry: every client's JSON numbers hold it.
MAX_SEQ = 2**53 - 1

_ID_RE = re.compile(rb"([0-9]{1,20})-([0-9]{1,20})")
# The meta hash's fields as publish.lua accepts them (it starts a new epoch otherwise): an
# epoch a client can send back in ``since``, numbers below 10**15.
_EPOCH_RE = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_NUMBER_RE = re.compile(rb"[0-9]{1,15}")
_SEQ_RE = re.compile(rb"[1-9][0-9]{0,15}")
_DEFAULT_FIELDS = frozenset({b"d", b"s"})
_NAMED_FIELDS = frozenset({b"d", b"s", b"c", b"e"})
_REVOKE_FIELDS = frozenset({b"k", b"u", b"c"})


class Malformed(StrEnum):
    """Why an entry is not an event; the values are the ``kind`` label of the metrics."""

    #: Its ID is not ``<pos>-0`` with ``1 <= pos <= MAX_SEQ`` (an ``XADD … *``, ``5-1`` …).
    ID = "id"
    #: Its fields are not those of an event (``d``, ``s``, and ``c``, ``e`` on a named
    #: channel) or of a revocation, each holding bytes of the right form.
    FIELDS = "fields"
    #: ``d`` is larger than the largest event the hubs accept (``max_event_bytes``).
    TOO_LARGE = "too-large"
    #: ``d`` is not strict UTF-8 JSON (``NaN``, a repeated top-level key, UTF-16 …).
    NOT_JSON = "not-json"
    #: ``d`` is not an object whose ``type`` is ``namespace:kebab-case``.
    NOT_ENVELOPE = "not-envelope"
    #: ``d``'s type is the hub's own (``connection:*``, ``channel:*``) or a client-to-server one.
    RESERVED_TYPE = "reserved-type"
    #: ``d``'s ``seq`` is not the entry's, or not where the hubs splice it.
    SEQ_MISMATCH = "seq-mismatch"
    #: ``d``'s ``channel`` is not the entry's (or a default-channel event names one).
    CHANNEL_MISMATCH = "channel-mismatch"
    #: A position, or a seq in its channel's epoch, beyond the last one Redis assigned: no
    #: publish wrote it (the relay decides this one, from the head and the named channels'
    #: positions it reads after the entries).
    AHEAD = "ahead"
    #: A seq that does not follow the last one the relay handed on of its channel (``seq + 1``
    #: in the same epoch, 1 in a new one): the relay decides this one.
    OUT_OF_ORDER = "out-of-order"


class Entry(NamedTuple):
    """An event to fan out: its position, channel (``""``: the default), the channel's epoch
    (``""`` for the default channel: the stream's), ``seq``, and envelope (the frame's text)."""

    pos: int
    channel: str
    epoch: str
    seq: int
    data: bytes


class Head(NamedTuple):
    """The stream's head: its epoch, last position, and the default channel's last seq."""

    epoch: str
    pos: int
    seq: int


def parse_head(epoch: object, pos: object, seq: object) -> Head | None:
    """The meta hash's ``epoch``, ``pos`` and ``seq`` fields (as ``HMGET`` returns them) as
    ``(epoch, last position, the default channel's last seq)``, or ``None`` when they are
    missing or not what ``publish.lua`` writes (the script then starts a new epoch)."""
    if not isinstance(epoch, bytes) or _EPOCH_RE.fullmatch(epoch) is None:
        return None
    numbers = (pos, seq)
    if not all(isinstance(n, bytes) and _NUMBER_RE.fullmatch(n) for n in numbers):
        return None
    assert isinstance(pos, bytes) and isinstance(seq, bytes)
    return Head(epoch.decode(), int(pos), int(seq))


def parse_position(epoch: object, seq: object) -> Position | None:
    """A named channel's position hash (``epoch``, ``seq`` as ``HMGET`` returns them), or
    ``None`` when it is missing or not what ``publish.lua`` writes."""
    if not isinstance(epoch, bytes) or _EPOCH_RE.fullmatch(epoch) is None:
        return None
    if not isinstance(seq, bytes) or _NUMBER_RE.fullmatch(seq) is None:
        return None
    return Position(epoch.decode(), int(seq))


def entry_position(entry_id: bytes) -> tuple[int, int]:
    """The stream position of an entry ID (``b"12-0"`` → ``(12, 0)``), to read on after it.

    Redis makes every ID ``<ms>-<seq>`` with two unsigned 64-bit numbers; ``ValueError`` for
    anything else (which Redis never returns).
    """
    match = _ID_RE.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"not a stream entry ID: {entry_id!r:.60}")
    return int(match[1]), int(match[2])


def parse_entry(entry_id: bytes, fields: object, max_bytes: int) -> Entry | Revocation | Malformed:
    """``entry_id`` and ``fields`` (as redis-py returns them) as an :class:`Entry`, a
    :class:`~sidecar.core.stream.Revocation`, or why not.

    ``max_bytes`` is the largest envelope (with its ``seq`` and channel) the hubs accept.
    Never raises.
    """
    match = _ID_RE.fullmatch(entry_id) if isinstance(entry_id, bytes) else None
    if match is None or match[2] != b"0" or not 1 <= int(match[1]) <= MAX_SEQ:
        return Malformed.ID
    pos = int(match[1])
    if not isinstance(fields, dict) or not all(type(v) is bytes for v in fields.values()):
        return Malformed.FIELDS
    keys = fields.keys()
    if keys == _REVOKE_FIELDS:
        return _revocation(pos, fields)
    named = keys == _NAMED_FIELDS
    if not named and keys != _DEFAULT_FIELDS:
        return Malformed.FIELDS
    seq_text = fields[b"s"]
    if _SEQ_RE.fullmatch(seq_text) is None or int(seq_text) > MAX_SEQ:
        return Malformed.FIELDS
    channel, epoch = "", ""
    if named:
        checked = _channel_and_epoch(fields[b"c"], fields[b"e"])
        if checked is None:
            return Malformed.FIELDS
        channel, epoch = checked
    seq = int(seq_text)
    problem = check_envelope(fields[b"d"], seq, channel, max_bytes)
    if problem is not None:
        return problem
    return Entry(pos, channel, epoch, seq, fields[b"d"])


@lru_cache(maxsize=4096)
def _channel_and_epoch(name: bytes, epoch: bytes) -> tuple[str, str] | None:
    """A named event's ``c`` and ``e`` fields as text, or ``None`` unless they are a channel
    name and an epoch (a stream repeats the same few pairs: bounded memo, thread-safe)."""
    channel = _text(name)
    if not is_channel_name(channel) or _EPOCH_RE.fullmatch(epoch) is None:
        return None
    assert channel is not None
    return channel, epoch.decode()


def _text(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _revocation(pos: int, fields: dict[bytes, bytes]) -> Revocation | Malformed:
    user, channel = _text(fields[b"u"]), _text(fields[b"c"])
    if fields[b"k"] != b"revoke" or not is_user(user) or not is_channel_name(channel):
        return Malformed.FIELDS
    assert user is not None and channel is not None
    return Revocation(pos, user, channel)


def check_envelope(data: bytes, seq: int, channel: str, max_bytes: int) -> Malformed | None:
    """Why ``data`` is not the envelope of event ``seq`` of ``channel`` as the hubs send it
    (``None``: it is)."""
    envelope = _decode(data, max_bytes)
    return envelope if isinstance(envelope, Malformed) else _check(envelope, data, seq, channel)


def _decode(data: bytes, max_bytes: int) -> dict[str, Any] | Malformed:
    """``data`` as a JSON object (checked for its size before it is decoded), or why not."""
    if len(data) > max_bytes:  # before decoding it: what a read holds stays bounded
        return Malformed.TOO_LARGE
    envelope = _decode_compact(data)
    if envelope is None:  # not compact JSON that msgspec proves strict: the exact check
        try:
            envelope = loads_strict(data)
        except (ValueError, RecursionError):
            return Malformed.NOT_JSON
    return envelope if isinstance(envelope, dict) else Malformed.NOT_ENVELOPE


_DECODE = msgspec.json.Decoder()
_DECODE_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _decode_compact(data: bytes) -> Any:
    """``data`` decoded, when it is a compact JSON object without a repeated top-level key
    (what publish.lua's callers write): what :func:`~sidecar.envelope.loads_strict` returns
    for it, at a third of the cost; ``None`` for anything else (which ``loads_strict`` then
    decides).

    msgspec refuses what ``loads_strict`` refuses but a repeated key (``NaN``, ``Infinity``,
    bytes that are not UTF-8 …), and keeps the last of repeated keys. The top level read with
    its values left raw proves none repeats: with no whitespace and no escaped key, the keys,
    values and separators it holds add up to every byte of ``data`` only if no pair was
    dropped (an escape or a space only ever makes the sum fall short: then ``None``).
    """
    try:
        value = _DECODE.decode(data)
        if not isinstance(value, dict):
            return None
        top = _DECODE_TOP.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not value:
        return value if data == b"{}" else None
    keys = "".join(top)
    if not keys.isascii():  # (a key's bytes then differ from its length: the exact check)
        return None
    # '{' + '"k":v' joined by ',' + '}': 2 + (n - 1) + the keys, their quotes and colons
    size = 1 + 4 * len(top) + len(keys) + sum(map(len, top.values()))
    return value if size == len(data) and len(top) == len(value) else None


def _check(envelope: dict[str, Any], data: bytes, seq: int, channel: str) -> Malformed | None:
    kind = _type_problem(envelope.get("type"))
    if kind is not None:
        return kind
    # a named channel's own name; none at all on the default channel ("", null: a key all
    # the same, which the hubs never write and a client would read as a channel)
    if envelope.get("channel") != channel if channel else "channel" in envelope:
        return Malformed.CHANNEL_MISMATCH
    tail = (
        b',"seq":%d,"channel":"%s"}' % (seq, channel.encode()) if channel else (b',"seq":%d}' % seq)
    )
    given = envelope.get("seq")
    if type(given) is not int or given != seq or not data.endswith(tail):
        return Malformed.SEQ_MISMATCH
    return None


def parse_history(value: object, channel: str, epoch: str, max_bytes: int) -> Entry | Malformed:
    """One item of a channel's history list (``b"<pos> <envelope>"``) as an :class:`Entry`
    of ``channel`` in ``epoch``, or why not."""
    if not isinstance(value, bytes):
        return Malformed.FIELDS
    pos_text, space, data = value.partition(b" ")
    if not space or _SEQ_RE.fullmatch(pos_text) is None or int(pos_text) > MAX_SEQ:
        return Malformed.ID
    envelope = _decode(data, max_bytes)
    if isinstance(envelope, Malformed):
        return envelope
    seq = envelope.get("seq")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        return Malformed.SEQ_MISMATCH
    problem = _check(envelope, data, seq, channel)
    if problem is not None:
        return problem
    return Entry(int(pos_text), channel, epoch, seq, data)


def _type_problem(name: object) -> Malformed | None:
    if type(name) is str and len(name) <= 128:  # (a stream repeats the same few types)
        return _str_type_problem(name)
    return _any_type_problem(name)


def _any_type_problem(name: object) -> Malformed | None:
    if not is_event_name(name):
        return Malformed.NOT_ENVELOPE
    try:
        check_broadcast_type(name)  # connection:*, chat:send …
    except ValueError:
        return Malformed.RESERVED_TYPE
    return None


#: :func:`_any_type_problem` of a type name, memoised (bounded, thread-safe).
_str_type_problem = lru_cache(maxsize=1024)(_any_type_problem)
