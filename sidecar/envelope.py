"""The wire envelope: ``{"type", "payload", "timestamp"}`` (plus ``"seq"`` on broadcasts, and
``"channel"`` after it on events of a named channel).

Pure functions and immutable values; no thread owns anything here.

An :class:`Event` is encoded to JSON **once** (:func:`encode`); the hub splices the
broadcast sequence number into those bytes (:func:`with_seq`) and builds one WebSocket frame
that every recipient shares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

#: ``namespace:kebab-case``, e.g. ``stream:phase-changed``; always matched against the whole
#: string (``fullmatch``: ``$`` alone would accept a trailing newline).
EVENT_NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*:[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: Where msgspec's JSON differs from :data:`_ENCODER`'s: a float that Python writes with an
#: exponent (``1e-05``, ``1e+16``), which msgspec writes without one or with another
#: (``0.00001``, ``1e16``). Matched on msgspec's output (an exponent, or four zeros after a
#: point); a string may match too, and then the slower encoder runs: never a different byte.
_NOT_LIKE_PYTHON = re.compile(rb"[0-9][eE]|0\.0000")


def rfc3339_utc(moment: datetime | None = None) -> str:
    """Format ``moment`` (default: now) as Go's ``time.Time`` marshals it in UTC.

    RFC 3339 with the fraction's trailing zeros removed and a ``Z`` suffix, e.g.
    ``2026-11-26T08:11:16.5Z`` or ``2026-11-26T08:11:16Z``.
    """
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def is_event_name(name: object) -> bool:
    """Whether ``name`` is a ``namespace:kebab-case`` event name."""
    return isinstance(name, str) and EVENT_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Event:
    """One event as it goes on the wire (without ``seq``, which only the hub assigns)."""

    type: str
    payload: Mapping[str, Any]
    timestamp: str = field(default_factory=rfc3339_utc)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a plain dict (``type``, ``payload``, ``timestamp``)."""
        return {"type": self.type, "payload": dict(self.payload), "timestamp": self.timestamp}


def new_event(event_type: str, payload: Mapping[str, Any]) -> Event:
    """Build an :class:`Event` stamped now; ``event_type`` must be ``namespace:kebab-case``."""
    if not is_event_name(event_type):
        raise ValueError(f"event type {event_type!r} is not namespace:kebab-case")
    return Event(event_type, payload)


#: What the hub's methods take as an event: an :class:`Event`, or a plain ``{type, payload}``.
EventLike = Event | Mapping[str, Any]
_ENVELOPE_KEYS = frozenset({"type", "payload"})


def as_event(value: EventLike) -> Event:
    """``value`` as an :class:`Event`: itself, or a ``{"type", "payload"}`` mapping stamped now.

    Raises ``TypeError`` for anything else, and ``ValueError`` naming the problem for a
    mapping that is not an envelope (a type that is not ``namespace:kebab-case``, a payload
    that is not an object, other keys such as ``seq``, which only the hub assigns).
    """
    if isinstance(value, Event):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"an event is an Event or a {{type, payload}} dict, not {type(value).__name__}"
        )
    if extra := sorted(map(str, set(value) - _ENVELOPE_KEYS)):
        raise ValueError(f"an event dict has only type and payload, not {', '.join(extra)}")
    payload = value.get("payload", {})
    if not isinstance(payload, Mapping):
        raise ValueError(f"an event's payload is an object, not {type(payload).__name__}")
    return new_event(value.get("type"), payload)  # type: ignore[arg-type]


def encode(event: Event) -> bytes:
    """Serialise ``event`` to compact UTF-8 JSON (an object ending in ``}``)."""
    return _ENCODER.encode(event.to_dict()).encode()


def encode_decoded(event: Event) -> bytes:
    """:func:`encode` for an event whose payload a JSON decoder produced and
    :func:`~sidecar.catalog.validate.json_problem` accepted (``dict`` with ``str`` keys,
    ``list``, ``str``, ``int`` within 64 bits, finite ``float``, ``bool``, ``None``): the
    same bytes, several times faster (msgspec writes them, except where it would write a
    float otherwise than Python does)."""
    envelope = {"type": event.type, "payload": event.payload, "timestamp": event.timestamp}
    data = _fast_encoder()(envelope)
    return encode(event) if _NOT_LIKE_PYTHON.search(data) else data


@cache
def _fast_encoder() -> Callable[[object], bytes]:
    """msgspec's JSON encoder, imported on first use (``import sidecar.envelope`` stays light:
    gunicorn's master imports it through the configuration)."""
    import msgspec

    return msgspec.json.Encoder().encode


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads_strict(raw: bytes) -> Any:
    """Decode ``raw`` as strict JSON, the way every client can read it: ``ValueError`` unless
    it is UTF-8 (never UTF-16 or -32, which :func:`json.loads` would guess), free of ``NaN``
    and ``Infinity`` (JavaScript's ``JSON.parse`` refuses them), and, when it is an object,
    without a repeated key at its top level (parsers disagree on which one wins).
    """
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    repeated = [False]  # whether the last object decoded (the outermost one) repeats a key

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        repeated[0] = len(obj) != len(items)
        return obj

    value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=pairs)
    if isinstance(value, dict) and repeated[0]:
        raise ValueError("a key is repeated at the top level")
    return value


def with_seq(encoded: bytes, seq: int, channel: str = "") -> bytes:
    """Return the encoded envelope object with ``"seq": seq`` appended as its last key, and
    ``"channel": channel`` after it for a named channel (``""``: the default, no key).

    ``encoded`` must be a JSON object as produced by :func:`encode` (or any compact JSON
    object); this is a byte splice, not a re-encode. ``channel`` must be a valid channel
    name (ASCII that JSON never escapes).
    """
    if channel:
        return b'%s,"seq":%d,"channel":"%s"}' % (encoded[:-1], seq, channel.encode("ascii"))
    return b'%s,"seq":%d}' % (encoded[:-1], seq)
