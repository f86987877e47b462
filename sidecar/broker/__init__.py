"""Brokers: one global event order shared by several hub processes (and outside publishers).

A broker owns ``seq`` and the epoch; each hub process publishes through it and is fed back
every event, in one order, by the broker's relay thread through a :class:`Sink`.

This module holds only the interface (:class:`Sink`, the exceptions). Importing it does not
import the ``redis`` client library: :class:`~sidecar.broker.redis.RedisBroker`,
:class:`~sidecar.broker.redis.RelayStats` and :class:`~sidecar.broker.publisher.Publisher`
are loaded on first use (``from sidecar.broker import RedisBroker``). Nothing here owns state
or threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..core.stream import Delivered
from ..protocol import PublishOutcomeUnknown, PublishRefused

if TYPE_CHECKING:
    from .publisher import Publisher
    from .redis import RedisBroker, RelayStats

__all__ = [
    "BrokerError",
    "BrokerOutcomeUnknown",
    "BrokerUnavailable",
    "Publisher",
    "RedisBroker",
    "RelayStats",
    "Sink",
]


class BrokerError(Exception):
    """A broker operation failed; the message is one line and never holds a password."""


class BrokerUnavailable(BrokerError, PublishRefused):
    """The broker cannot be reached (or refuses writes): nothing was accepted.

    A :class:`~sidecar.protocol.PublishRefused` (the hub's), so that everything that handles
    a refused publish handles it too: ``broadcast*`` return ``False``, the HTTP API answers
    503 with ``Retry-After``, ``sidecar serve`` reports ``broker-unreachable`` (exit 5).
    It is raised only when the request cannot have run: it never left (connecting or
    sending failed), or Redis answered with an error.
    """


class BrokerOutcomeUnknown(BrokerError, PublishOutcomeUnknown):
    """A publish was sent to Redis and no answer came (a timeout, a broken connection): it
    may have been published, and is then delivered like any other.

    A :class:`~sidecar.protocol.PublishOutcomeUnknown` (so also a ``PublishRefused``): the
    HTTP API answers 504 ``"outcome": "unknown"``. Retry with the same idempotency key to
    publish the events at most once.
    """


class Sink(Protocol):
    """What the relay feeds: the local hub (the hub thread fans the frames out)."""

    def deliver(self, epoch: str, items: Sequence[Delivered], timeout: float) -> bool:
        """Hand over contiguous events in stream order (each with its envelope bytes, which
        already contain "seq"). Blocks up to timeout while the hub's inbox is full; False if
        the hub is stopped or the timeout passed (the relay then retries the same items)."""
        ...

    def reset(self, epoch: str, seq: int, reason: str, *, pos: int | None = None) -> None:
        """Continuity broke (an outage during which events may have been missed, a trimmed
        stream, or a new epoch after Redis lost its data): the hub closes its clients with a
        "reconnect" close code (4001, sidecar.protocol.CloseCode.RESUME) so they resume, and
        continues from stream position pos of epoch, where the default channel is at seq."""
        ...


def __getattr__(name: str) -> Any:
    """Load the Redis-backed classes on first use, so that ``redis`` is imported only then."""
    if name in ("RedisBroker", "RelayStats"):
        from . import redis

        return getattr(redis, name)
    if name == "Publisher":
        from .publisher import Publisher

        return Publisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
