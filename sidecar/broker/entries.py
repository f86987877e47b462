"""The stream is input: one entry in, a valid event or a named kind of malformed out.

Anyone with write access to the keys (another deployment sharing the Redis, a bug in another
publisher, an operator's ``XADD``) can put anything into the stream. :func:`parse_entry`
decides, for one entry as redis-py returns it, whether it is an event the hubs may fan out
exactly as it is: what ``publish.lua`` writes, and what :meth:`Hub.broadcast
<sidecar.core.hub.Hub.broadcast>` would accept with its ``seq`` spliced in. Everything else
is a :class:`Malformed` kind, which the relay counts (``/metrics``, ``/api/v1/hub``), logs at
most once per kind and interval, and skips.

Pure functions and immutable values; no thread owns anything here, and nothing here imports
the ``redis`` client library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ..envelope import is_event_name, loads_strict
from ..protocol import check_broadcast_type

__all__ = ["MAX_SEQ", "Entry", "Malformed", "entry_position", "parse_entry", "parse_head"]

#: The largest seq an entry may carry: every client's JSON numbers hold it exactly.
MAX_SEQ = 2**53 - 1
#: The field that holds the envelope (the only field of an entry).
DATA_FIELD = b"d"

_ID_RE = re.compile(rb"([0-9]{1,20})-([0-9]{1,20})")
# The meta hash's fields as publish.lua accepts them (it starts a new epoch otherwise): an
# epoch a client can send back in ``since``, a seq below 10**15.
_EPOCH_RE = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_SEQ_RE = re.compile(rb"[0-9]{1,15}")


class Malformed(StrEnum):
    """Why an entry is not an event; the values are the ``kind`` label of the metrics."""

    #: Its ID is not ``<seq>-0`` with ``1 <= seq <= MAX_SEQ`` (an ``XADD … *``, ``5-1`` …).
    ID = "id"
    #: Its fields are not exactly one, ``d``, holding bytes.
    FIELDS = "fields"
    #: ``d`` is larger than the largest event the hubs accept (``max_event_bytes``).
    TOO_LARGE = "too-large"
    #: ``d`` is not strict UTF-8 JSON (``NaN``, a repeated top-level key, UTF-16 …).
    NOT_JSON = "not-json"
    #: ``d`` is not an object whose ``type`` is ``namespace:kebab-case``.
    NOT_ENVELOPE = "not-envelope"
    #: ``d``'s type is the hub's own (``connection:*``) or a client-to-server one.
    RESERVED_TYPE = "reserved-type"
    #: ``d``'s ``seq`` is not the ID's, or not its last key (what the hubs splice).
    SEQ_MISMATCH = "seq-mismatch"
    #: ``d`` names a channel the entry is not of (the stream carries the default channel,
    #: whose events have no ``channel`` key).
    CHANNEL_MISMATCH = "channel-mismatch"
    #: A seq beyond the last one Redis assigned: no publish wrote it (the relay decides this
    #: one, from the head it reads with the entries).
    AHEAD = "ahead"


@dataclass(frozen=True, slots=True)
class Entry:
    """An event to fan out: its ``seq`` and its envelope with that ``seq`` (the frame's text)."""

    seq: int
    data: bytes


def parse_head(epoch: object, seq: object) -> tuple[str, int] | None:
    """The meta hash's ``epoch`` and ``seq`` fields (as ``HMGET`` returns them) as the head
    ``(epoch, last seq)``, or ``None`` when they are missing or not what ``publish.lua``
    writes (the script then starts a new epoch)."""
    if not isinstance(epoch, bytes) or not isinstance(seq, bytes):
        return None
    if _EPOCH_RE.fullmatch(epoch) is None or _SEQ_RE.fullmatch(seq) is None:
        return None
    return epoch.decode(), int(seq)


def entry_position(entry_id: bytes) -> tuple[int, int]:
    """The stream position of an entry ID (``b"12-0"`` → ``(12, 0)``), to read on after it.

    Redis makes every ID ``<ms>-<seq>`` with two unsigned 64-bit numbers; ``ValueError`` for
    anything else (which Redis never returns).
    """
    match = _ID_RE.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"not a stream entry ID: {entry_id!r:.60}")
    return int(match[1]), int(match[2])


def parse_entry(entry_id: bytes, fields: object, max_bytes: int) -> Entry | Malformed:
    """``entry_id`` and ``fields`` (``{b"d": envelope}``) as an :class:`Entry`, or why not.

    ``max_bytes`` is the largest envelope (with its ``seq``) the hubs accept. Never raises.
    """
    match = _ID_RE.fullmatch(entry_id) if isinstance(entry_id, bytes) else None
    if match is None or match[2] != b"0" or not 1 <= int(match[1]) <= MAX_SEQ:
        return Malformed.ID
    seq = int(match[1])
    if not isinstance(fields, dict) or len(fields) != 1:
        return Malformed.FIELDS
    data = fields.get(DATA_FIELD)
    if not isinstance(data, bytes):
        return Malformed.FIELDS
    if len(data) > max_bytes:
        return Malformed.TOO_LARGE
    try:
        envelope = loads_strict(data)
    except (ValueError, RecursionError):
        return Malformed.NOT_JSON
    if not isinstance(envelope, dict):
        return Malformed.NOT_ENVELOPE
    kind = _type_problem(envelope.get("type"))
    if kind is not None:
        return kind
    if "channel" in envelope:
        return Malformed.CHANNEL_MISMATCH
    given = envelope.get("seq")
    if type(given) is not int or given != seq or not data.endswith(b',"seq":%d}' % seq):
        return Malformed.SEQ_MISMATCH
    return Entry(seq, data)


def _type_problem(name: object) -> Malformed | None:
    if not is_event_name(name):
        return Malformed.NOT_ENVELOPE
    try:
        check_broadcast_type(name)  # connection:*, chat:send …
    except ValueError:
        return Malformed.RESERVED_TYPE
    return None
