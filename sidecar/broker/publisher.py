"""Publisher: publish catalogued events through the broker from any process.

For a Celery task, a script or a cron job: no Flask, no hub and no thread of its own. Events
are validated like the HTTP API validates them, encoded once, and published as one batch;
the seqs Redis assigned are returned. Every hub process relays them like its own.

Threads and state: a :class:`Publisher` may be shared by threads. It holds a
:class:`~sidecar.broker.redis.RedisBroker`, whose connection pool is thread-safe, and no
other mutable state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog import CATALOG, validate_payload
from ..envelope import Event, encode, is_event_name, new_event
from ..protocol import RESERVED_NAMESPACES
from .redis import MAX_BATCH, RedisBroker

__all__ = ["EventLike", "Publisher", "checked_event"]

#: What :meth:`Publisher.publish_many` takes: an :class:`Event`, or ``(type, payload)``.
EventLike = Event | tuple[str, Mapping[str, Any]]


def checked_event(item: EventLike) -> Event:
    """``item`` as an :class:`Event`, validated as the HTTP API does; ``ValueError`` if not.

    Refused: a type that is not ``namespace:kebab-case``, the hub's own ``connection:*``
    types, catalogued client-to-server types, and payloads that do not match the catalog.
    Types outside the catalog (app-specific events) pass with any object payload.
    """
    if isinstance(item, Event):
        event_type, payload = item.type, item.payload
    elif isinstance(item, tuple) and len(item) == 2:
        event_type, payload = item
    else:
        raise ValueError(f"expected an Event or a (type, payload) pair, got {item!r:.80}")
    if not is_event_name(event_type):
        raise ValueError(f"event type {event_type!r} is not namespace:kebab-case")
    if event_type.split(":", 1)[0] in RESERVED_NAMESPACES:
        raise ValueError(f"{event_type}: the {event_type.split(':')[0]}:* events are the hub's")
    if not isinstance(payload, Mapping):
        raise ValueError(f"{event_type}: payload must be an object (a mapping)")
    spec = CATALOG.get(event_type)
    if spec is not None:
        if spec.direction != "server":
            raise ValueError(f"{event_type} is a client-to-server event")
        problem = validate_payload(event_type, payload)
        if problem:
            raise ValueError(f"{event_type}: {problem}")
    return item if isinstance(item, Event) else new_event(event_type, payload)


class Publisher:
    """Publishes events to every hub process that shares ``broker_url`` and ``prefix``.

    ``broker_url`` is a Redis URL as for :class:`~sidecar.broker.redis.RedisBroker`. An
    event whose envelope encodes to more than ``max_event_bytes`` is refused. The stream is
    trimmed to the history size the hubs' broker recorded in Redis; a ``history_size`` given
    here is used (and recorded) instead. ``timeout`` and ``connect_timeout`` bound each call.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        prefix: str = "sidecar",
        max_event_bytes: int = 1 << 20,
        history_size: int | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.broker = RedisBroker(
            broker_url,
            prefix=prefix,
            history_size=history_size,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )

    def publish(self, type: str, payload: Mapping[str, Any]) -> int:
        """Publish one event; returns its ``seq``.

        Raises ``ValueError`` for an event the catalog refuses (nothing is published) and
        :class:`~sidecar.broker.BrokerUnavailable` when Redis cannot be reached.
        """
        return self.publish_many([(type, payload)])[0]

    def publish_many(self, events: Iterable[EventLike]) -> list[int]:
        """Publish events in order as one batch (all or none); returns their seqs.

        Every event is validated before anything is published. At most
        :data:`~sidecar.broker.redis.MAX_BATCH` events; raises like :meth:`publish`.
        """
        encoded = [self._encode(item) for item in itertools.islice(events, MAX_BATCH + 1)]
        if len(encoded) > MAX_BATCH:
            raise ValueError(f"more than {MAX_BATCH} events in one batch")
        return self.broker.publish(encoded)

    def head(self) -> tuple[str, int]:
        """``(epoch, seq)``: the current epoch and the last seq assigned."""
        return self.broker.head()

    def _encode(self, item: EventLike) -> bytes:
        event = checked_event(item)
        try:
            data = encode(event)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{event.type}: payload is not JSON: {exc}") from None
        if len(data) > self.max_event_bytes:
            raise ValueError(
                f"{event.type}: event of {len(data)} bytes; at most {self.max_event_bytes}"
            )
        return data

    def close(self) -> None:
        """Close the connections (a later publish opens new ones)."""
        self.broker.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
