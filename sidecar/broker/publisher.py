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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..catalog import Publication, PublishError, validate_items
from ..envelope import Event, encode
from ..protocol import check_channel, check_user, personal_channel
from .redis import MAX_BATCH, RedisBroker

__all__ = ["EventLike", "Publisher", "checked_events"]

#: What :meth:`Publisher.publish_many` takes: an :class:`Event`, or ``(type, payload)``.
EventLike = Event | tuple[str, Mapping[str, Any]]


def _as_item(item: object, channel: str | None) -> dict[str, Any]:
    if isinstance(item, Event):
        event_type, payload = item.type, item.payload
    elif isinstance(item, tuple) and len(item) == 2:
        event_type, payload = item
    else:
        raise ValueError(f"expected an Event or a (type, payload) pair, got {item!r:.80}")
    out = {
        "type": event_type,
        "payload": dict(payload) if isinstance(payload, Mapping) else payload,
    }
    if channel is not None:
        out["channel"] = channel
    return out


def checked_events(
    items: Sequence[EventLike], max_event_bytes: int, channel: str | None = None
) -> list[Publication]:
    """``items`` as :class:`Event`\\ s, validated exactly as ``POST /api/v1/events`` does.

    The catalog's publish validation (:func:`sidecar.catalog.validate_items`) decides: a type
    that is not ``namespace:kebab-case``, the hub's own ``connection:*`` types, catalogued
    client-to-server types, payloads that do not match the catalog, values JSON cannot carry
    and events over ``max_event_bytes`` (with their ``seq``) are refused with ``ValueError``
    naming the event and the field (``events[1].payload.streamId: …``). Types outside the
    catalog pass with any object payload. An :class:`Event` keeps its timestamp; pairs are
    stamped now.
    """
    try:
        events = validate_items(
            [_as_item(item, channel) for item in items], max_event_bytes=max_event_bytes
        )
    except PublishError as exc:
        raise ValueError(exc.message) from None
    return [
        Publication(event.type, event.payload, item.timestamp, event.channel)
        if isinstance(item, Event)
        else event
        for item, event in zip(items, events, strict=True)
    ]


class Publisher:
    """Publishes events to every hub process that shares ``broker_url`` and ``prefix``.

    ``broker_url`` is a Redis URL as for :class:`~sidecar.broker.redis.RedisBroker`. An
    event whose envelope encodes to more than ``max_event_bytes`` is refused (never set it
    above the hubs' ``--max-event-bytes``: their relays skip larger entries). The stream is
    trimmed to the history size the hubs' broker recorded in Redis, and a named channel's
    history kept for the ``channel_ttl`` they recorded; a ``history_size`` or ``channel_ttl``
    given here is used (and recorded) instead. ``timeout`` and ``connect_timeout`` bound each
    call.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        prefix: str = "sidecar",
        max_event_bytes: int = 1 << 20,
        history_size: int | None = None,
        channel_ttl: float | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.broker = RedisBroker(
            broker_url,
            prefix=prefix,
            history_size=history_size,
            channel_ttl=channel_ttl,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_event_bytes=max_event_bytes,
        )

    def publish(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        channel: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish one event on ``channel`` (default: the default channel); returns its
        ``seq`` in that channel.

        Raises ``ValueError`` for an event the catalog refuses or a malformed key (nothing is
        published), :class:`~sidecar.broker.BrokerUnavailable` when Redis cannot be reached
        or refuses the write (nothing is published), and
        :class:`~sidecar.broker.BrokerOutcomeUnknown` when Redis got the publish and did not
        answer in time: it may have been published. Retrying with the same
        ``idempotency_key`` is then safe (see :meth:`publish_many`).
        """
        events = [(type, payload)]
        return self.publish_many(events, channel=channel, idempotency_key=idempotency_key)[0]

    def publish_many(
        self,
        events: Iterable[EventLike],
        *,
        channel: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Publish events in order as one batch (all or none) on ``channel``; returns their
        seqs in it.

        Every event is validated before anything is published. At most
        :data:`~sidecar.broker.redis.MAX_BATCH` events; raises like :meth:`publish`.

        ``idempotency_key`` (1-128 of ``A-Za-z0-9._~:+/=-``): a publish with a key that an
        earlier publish used within the broker's idempotency window (five minutes) publishes
        nothing and returns the earlier seqs (a :class:`~sidecar.protocol.PublishedSeqs`
        with ``duplicate`` set); a different number of events raises
        :class:`~sidecar.protocol.IdempotencyKeyReused` (a ``ValueError``).
        """
        items = list(itertools.islice(events, MAX_BATCH + 1))
        if len(items) > MAX_BATCH:
            raise ValueError(f"more than {MAX_BATCH} events in one batch")
        if not items:
            return []
        checked = checked_events(items, self.max_event_bytes, channel)
        return self.broker.publish_items(
            [(event.channel, self._encode(event)) for event in checked],
            idempotency_key=idempotency_key,
        )

    def send_to_user(
        self,
        user: str,
        type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish one event on ``user:<user>``: every connection of that user, on every
        worker. Raises like :meth:`publish`."""
        channel = personal_channel(user)
        return self.publish(type, payload, channel=channel, idempotency_key=idempotency_key)

    def revoke(self, user: str, channel: str) -> None:
        """Take ``user``'s connections off ``channel`` on every worker (see
        :meth:`EventHub.revoke <sidecar.web.extension.EventHub.revoke>`)."""
        self.broker.revoke(check_user(user), check_channel(channel))

    def head(self) -> tuple[str, int]:
        """``(epoch, seq)`` of the default channel: its epoch and last seq assigned."""
        return self.broker.head()

    def position(self, channel: str | None = None) -> tuple[str, int]:
        """``(epoch, seq)`` of ``channel`` now (created when it has none)."""
        return tuple(self.broker.heads([check_channel(channel) if channel else ""])[0])  # type: ignore[return-value]

    @staticmethod
    def _encode(event: Event) -> bytes:
        try:
            return encode(event)
        except (TypeError, ValueError) as exc:  # the catalog checks JSON types; belt and braces
            raise ValueError(f"{event.type}: payload is not JSON: {exc}") from None

    def close(self) -> None:
        """Close the connections (a later publish opens new ones)."""
        self.broker.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
