"""The hub's inbox commands: one frozen, slotted dataclass per command (gorilla's channels).

Any thread builds them; only the hub thread (:meth:`sidecar.core.hub.Hub.run`) reads them,
in the order they were put into the inbox, and dispatches them with ``match``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .client import Client
from .resume import ChannelRequest
from .stream import Delivered


@dataclass(frozen=True, slots=True)
class Deliver:
    """Numbered events (from the local sequencer or a broker's relay), in stream order."""

    epoch: str
    items: tuple[Delivered, ...]


@dataclass(frozen=True, slots=True)
class Send:
    """One frame for one client, outside the numbered stream."""

    client: Client
    frame: bytes


@dataclass(frozen=True, slots=True)
class Register:
    """Add a client; greet it with ``connection:status``, then ``notices`` (frames, e.g. the
    ``channel:error`` of channels refused at connect), then the replays of ``requests`` (the
    channels it joins, the default one included unless left out), merged in stream order."""

    client: Client
    requests: tuple[ChannelRequest, ...]
    greet: bool
    notices: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A registered client joins one more channel (``channel:subscribe``)."""

    client: Client
    request: ChannelRequest


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A client leaves a channel (``channel:unsubscribe``, or revoked: ``reason``)."""

    client: Client
    channel: str
    reason: str


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
    """The numbered stream broke or restarted: close every client (resume), go on from
    stream position ``pos`` of ``epoch``, where the default channel is at ``seq``."""

    epoch: str
    pos: int
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


Command = (
    Deliver | Send | Register | Subscribe | Unsubscribe | Unregister | Call | Reset | DropAll | Stop
)
