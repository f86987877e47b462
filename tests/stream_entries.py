"""The broker's keys and stream entries as ``publish.lua`` writes them (key layout v2).

For tests that write into Redis behind the broker's back: the same keys, and entries whose
fields are exactly a publish's (an event of the default channel: ``d``, ``s``; of a named
one: also ``c``, ``e``; a revocation: ``k=revoke``, ``u``, ``c``), so that a test changes
only what it means to make hostile. No thread owns anything here.
"""

from __future__ import annotations

from typing import Any

from sidecar.envelope import encode, new_event, with_seq

PREFIX = "sidecar:v2:"
STREAM, META = f"{PREFIX}stream", f"{PREFIX}meta"


def history_key(channel: str = "", prefix: str = PREFIX) -> str:
    """A channel's history list (``""``: the default channel's)."""
    return f"{prefix}hist:{channel}"


def position_key(channel: str, prefix: str = PREFIX) -> str:
    """A named channel's position hash (``epoch``, ``seq``)."""
    return f"{prefix}ch:{channel}"


def idempotency_key(key: str, prefix: str = PREFIX) -> str:
    """The record of one idempotency key."""
    return f"{prefix}idem:{key}"


def envelope(seq: int, channel: str = "", n: int | None = None) -> bytes:
    """A small envelope with its ``seq`` (and ``channel``) spliced in as the hubs do."""
    data = b'{"type":"test:e","payload":{"n":%d}}' % (seq if n is None else n)
    return with_seq(data, seq, channel)


def tick(tag: str, n: int = 0) -> bytes:
    """An encoded event without ``seq`` (what a hub hands the broker)."""
    return encode(new_event("test:tick", {"tag": tag, "n": n}))


def event_fields(data: bytes, seq: int, channel: str = "", epoch: str = "") -> dict[str, Any]:
    """The fields of an event's entry: ``d``, ``s`` (and ``c``, ``e`` on a named channel)."""
    fields: dict[str, Any] = {"d": data, "s": seq}
    if channel:
        fields |= {"c": channel, "e": epoch}
    return fields


def revoke_fields(user: str, channel: str) -> dict[str, Any]:
    """The fields of a revocation's entry."""
    return {"k": "revoke", "u": user, "c": channel}
