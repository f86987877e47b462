"""The hub's inbox commands: one frozen, slotted dataclass per command (gorilla's channels).

Any thread builds them; only the hub thread (:meth:`sidecar.core.hub.Hub.run`) reads them,
in the order they were put into the inbox, and dispatches them with ``match``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import Since
from .client import Client


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Encoded envelopes (without ``seq``) for everyone; they get ``first_seq``, ``+1`` …"""

    first_seq: int
    events: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Envelopes that already carry their ``seq`` (from a broker), contiguous, for everyone."""

    epoch: str
    items: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Send:
    """One frame for one client, outside the numbered stream."""

    client: Client
    frame: bytes


@dataclass(frozen=True, slots=True)
class Register:
    """Add a client; greet it with ``connection:status`` and the replay ``since`` asks for.

    ``backfill`` holds events older than the local window, read from the broker by the
    request thread (``(seq, envelope)`` pairs, contiguous from ``since.seq + 1``).
    """

    client: Client
    since: Since | None
    greet: bool
    backfill: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Unregister:
    """Remove a client (idempotent)."""

    client: Client


@dataclass(frozen=True, slots=True)
class Call:
    """Run a function on the hub thread (a barrier for tests and tools)."""

    fn: Callable[[], object]


@dataclass(frozen=True, slots=True)
class Reset:
    """The numbered stream broke or restarted: close every client (resume), go on from here."""

    epoch: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class DropAll:
    """Drop every client now: close ``code`` (``abrupt``: no close frame, the socket dies)."""

    code: int
    reason: str
    abrupt: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """Close every client with ``code`` and end the hub thread."""

    code: int
    reason: str


Command = Broadcast | Deliver | Send | Register | Unregister | Call | Reset | DropAll | Stop
