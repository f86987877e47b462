"""Publish bodies: bytes (or decoded data) in, the events to broadcast out, or one clear 4xx.

Pure functions; no thread owns anything here. A body is one event ``{"type", "payload"}`` or a
JSON array of them, accepted all or nothing:

* 400: not JSON (invalid UTF-8, bad syntax, ``NaN``/``Infinity`` literals);
* 413: an event whose envelope, as :func:`sidecar.envelope.encode` writes it with the server
  timestamp, plus what the hub adds (``seq``, and ``channel`` on a named channel:
  :func:`~sidecar.protocol.splice_max`), is larger than ``max_event_bytes``;
* 422: anything else, naming the event and the field: a bad channel name, a bad or reserved
  type name, a
  client-to-server type, a payload that does not match its catalogued shape, values the
  wire cannot carry (:func:`~sidecar.catalog.validate.json_problem`: deep nesting, numbers
  beyond a float or 64-bit integers, lone surrogates), an empty or oversized batch.

Nothing but :class:`PublishError` leaves :func:`parse_publish_body`, whatever the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec

from sidecar.envelope import Event, encode, is_event_name, rfc3339_utc
from sidecar.protocol import (
    CHANNEL_SPLICE_MAX,
    DEFAULT_CHANNEL,
    RESERVED_NAMESPACES,
    check_channel,
    personal_channel,
    splice_max,
)

from .spec import CATALOG
from .validate import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    describe,
    json_problem,
    quote,
    validate_payload,
)

__all__ = ["MAX_BATCH", "Publication", "PublishError", "parse_publish_body", "validate_items"]

#: Most events in one body, by default.
MAX_BATCH = 10_000

# Re-encoding decoded JSON never lengthens a string, an integer, a literal or the punctuation
# (whitespace goes); only a float can grow, at most 4.5-fold: ``1e15`` is written back as
# ``1000000000000000.0``. So no event of a body is longer, encoded, than this many times the
# body plus the envelope's own keys: below the limit, no event needs measuring.
_GROWTH = 5


class PublishError(Exception):
    """A publish body that cannot be accepted: HTTP ``status`` (400, 413 or 422) and a one-line
    ``message`` naming the problem and where it is, e.g. ``events[1].payload.path: required
    field missing``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Publication(Event):
    """An event as a publisher sent it: the envelope, and the channel it goes to (``""``: the
    default channel). It encodes like any :class:`~sidecar.envelope.Event` (the hub adds
    ``seq`` and ``channel``)."""

    channel: str = DEFAULT_CHANNEL


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    """One event as a publisher sends it."""

    type: str
    payload: dict[str, Any]
    channel: str | None = None
    user: str | None = None


_Body = list[_Item] | _Item
_DECODER = msgspec.json.Decoder(_Body)


def parse_publish_body(
    body: bytes, *, max_event_bytes: int, max_batch: int = MAX_BATCH
) -> list[Publication]:
    """Validate a publish body and build its events, stamped now (one timestamp per body).

    Raises :class:`PublishError` (and nothing else) for any body that cannot be broadcast as
    it is; every event returned encodes within ``max_event_bytes - splice_max(channel)``.
    """
    try:
        data = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        _refuse(body, 422, describe(exc, _root(body)))
    except msgspec.DecodeError as exc:
        _refuse(body, 400, f"body is not JSON: {str(exc).removeprefix('JSON is malformed: ')}")
    except UnicodeDecodeError as exc:  # msgspec before 0.23, for bad UTF-8 inside a string
        _refuse(body, 400, f"body is not JSON: invalid UTF-8 at byte {exc.start}")
    except RecursionError:
        _fail(422, f"{_root(body)}: nested deeper than {MAX_DEPTH} levels")
    return _build(data, max_event_bytes, max_batch, size_hint=_GROWTH * len(body))


def validate_items(
    data: object, *, max_event_bytes: int | None = None, max_batch: int = MAX_BATCH
) -> list[Publication]:
    """:func:`parse_publish_body` for data already decoded: one ``{type, payload, channel?}``
    dict or a list of them, holding only JSON types (``dict``, ``list``, ``str``, ``int``,
    ``float``, ``bool``, ``None``).

    ``max_event_bytes`` (None: no size check) bounds each encoded event as the server does.
    Raises :class:`PublishError` (and nothing else).
    """
    try:
        items = msgspec.convert(data, _Body)
    except msgspec.ValidationError as exc:
        _fail(422, describe(exc, "events" if isinstance(data, list) else "event"))
    return _build(items, max_event_bytes, max_batch, size_hint=None)


def _fail(status: int, message: str) -> NoReturn:
    raise PublishError(status, message) from None


def _root(body: bytes) -> str:
    """How messages name the body's top level: ``events`` (an array) or ``event``."""
    return "events" if body.lstrip()[:1] == b"[" else "event"


def _where(batch: bool, index: int) -> str:
    return f"events[{index}]" if batch else "event"


class _Literal(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's json accepts them, JSON does not."""


def _reject_literal(name: str) -> NoReturn:
    raise _Literal(f"{name} is not a JSON number (send null or a string)")


def _parse_int(digits: str) -> int:
    # Python refuses to convert over 4,300 digits; any integer of 40 digits is out of range.
    if len(digits) <= 40:
        return int(digits)
    return INT_MIN - 1 if digits.startswith("-") else INT_MAX + 1


def _refuse(body: bytes, status: int, message: str) -> NoReturn:
    """Raise for a body msgspec refused, naming the field where Python's json can find it.

    msgspec stops at the first problem and does not always name the field (lone surrogates,
    floats beyond range) or the depth (an array where an event should be). Python's decoder
    accepts these (a lone surrogate as such, ``1e400`` as ``inf``), and :func:`json_problem`
    then names the field. msgspec also checks types as it parses: a type error may come before
    a syntax error, which makes the body 400. Otherwise the error is ``status`` and
    ``message``.
    """
    root = _root(body)
    try:
        data = json.loads(body, parse_constant=_reject_literal, parse_int=_parse_int)
    except _Literal as exc:
        _fail(400, f"body is not JSON: {exc}")
    except RecursionError:
        _fail(422, f"{root}: nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included: not JSON
        _fail(400, message if status == 400 else f"body is not JSON: {exc}")
    # a payload is level 1: the body is level 0 (one event) or -1 (an array of them)
    problem = json_problem(data, root, level=-1 if root == "events" else 0)
    if problem:
        _fail(422, problem)
    _fail(status, message)


#: Catalogued types a publisher may send: server-to-client, outside the reserved namespaces.
_PUBLISHABLE = frozenset(
    name
    for name, spec in CATALOG.items()
    if spec.direction == "server" and name.partition(":")[0] not in RESERVED_NAMESPACES
)


def _type_problem(event_type: str) -> str | None:
    """Why a publisher may not send ``event_type`` (not one of :data:`_PUBLISHABLE`), or None."""
    namespace = event_type.partition(":")[0]
    if namespace in RESERVED_NAMESPACES:
        return f"{quote(event_type)} is reserved: {namespace}:* events come from the hub only"
    if event_type in CATALOG:
        return f"{event_type} is a client-to-server event; publish server-to-client events only"
    return None if is_event_name(event_type) else f"{quote(event_type)} is not namespace:kebab-case"


def _channel_of(item: _Item, where: str) -> str:
    """The item's channel: ``channel``, or ``user:<user>`` for a ``user`` (not both)."""
    if item.user is not None:
        if item.channel is not None:
            _fail(422, f"{where}.user: give a channel or a user, not both")
        try:
            return personal_channel(item.user)
        except ValueError as exc:
            _fail(422, f"{where}.user: {exc}")
    if item.channel is None:
        return DEFAULT_CHANNEL
    try:
        return check_channel(item.channel)
    except ValueError as exc:
        _fail(422, f"{where}.channel: {exc}")


def _build(
    data: list[_Item] | _Item, max_event_bytes: int | None, max_batch: int, *, size_hint: int | None
) -> list[Publication]:
    batch = isinstance(data, list)
    items = data if isinstance(data, list) else [data]
    if not items:
        _fail(422, "empty batch: send at least one event")
    if len(items) > max_batch:
        _fail(422, f"batch of {len(items)} events; at most {max_batch}")
    timestamp = rfc3339_utc()
    events = []
    for index, item in enumerate(items):
        event_type, payload = item.type, item.payload
        known = event_type in _PUBLISHABLE
        problem = None if known else _type_problem(event_type)
        if problem:
            _fail(422, f"{_where(batch, index)}.type: {problem}")
        problem = json_problem(payload, "payload") or (
            validate_payload(event_type, payload) if known else None
        )
        if problem:
            _fail(422, f"{_where(batch, index)}.{problem}")
        channel = _channel_of(item, _where(batch, index))
        events.append(Publication(event_type, payload, timestamp, channel))
    if max_event_bytes is not None:
        _check_sizes(events, batch, max_event_bytes, size_hint)
    return events


def _check_sizes(
    events: list[Publication], batch: bool, max_event_bytes: int, hint: int | None
) -> None:
    """413 for the first event that would not fit, with its ``seq`` (and ``channel``), in
    ``max_event_bytes``.

    ``hint`` bounds the encoded size of every event's type and payload (see ``_GROWTH``);
    when it fits, nothing is encoded here.
    """
    limit = max_event_bytes - CHANNEL_SPLICE_MAX
    if hint is not None and hint + len(encode(Event("x:y", {}, events[0].timestamp))) <= limit:
        return
    for index, event in enumerate(events):
        size = len(encode(event)) + splice_max(event.channel)
        if size > max_event_bytes:
            _fail(
                413,
                f"{_where(batch, index)}: {size} bytes encoded (with timestamp"
                f" and seq); at most {max_event_bytes}",
            )
