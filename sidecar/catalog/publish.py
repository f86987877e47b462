"""Publish-body parsing (placeholder until the catalog branch lands)."""

from __future__ import annotations

import json

from ..envelope import Event, encode, is_event_name, new_event
from ..events import CATALOG, validate_payload
from ..protocol import RESERVED_NAMESPACES, SEQ_SPLICE_MAX


class PublishError(Exception):
    """A publish request that cannot be accepted: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_publish_body(
    body: bytes, *, max_event_bytes: int, max_batch: int = 10_000
) -> list[Event]:
    """Validate a publish body and build its events; raise :class:`PublishError`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PublishError(400, f"body is not JSON: {exc}") from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if not items:
        raise PublishError(422, "empty batch: send at least one event")
    if len(items) > max_batch:
        raise PublishError(422, f"batch of {len(items)} events; at most {max_batch}")
    events = []
    for index, item in enumerate(items):
        where = f"events[{index}]" if batch else "event"
        if not isinstance(item, dict):
            raise PublishError(422, f"{where}: expected an object {{type, payload}}")
        extra = sorted(set(item) - {"type", "payload"})
        if extra:
            raise PublishError(
                422, f"{where}: unexpected key {extra[0]!r} (an event is {{type, payload}})"
            )
        event_type = item.get("type")
        if not isinstance(event_type, str):
            raise PublishError(422, f"{where}.type: required string missing")
        if not is_event_name(event_type):
            raise PublishError(422, f"{where}.type: {event_type!r} is not namespace:kebab-case")
        if event_type.partition(":")[0] in RESERVED_NAMESPACES:
            raise PublishError(422, f"{where}.type: {event_type} is sent by the hub itself")
        payload = item.get("payload")
        if not isinstance(payload, dict):
            raise PublishError(422, f"{where}.payload: expected an object")
        spec = CATALOG.get(event_type)
        if spec is not None:
            if spec.direction != "server":
                raise PublishError(422, f"{where}.type: {event_type} is a client-to-server event")
            problem = validate_payload(event_type, payload)
            if problem:
                raise PublishError(422, f"{where}.{problem}")
        event = new_event(event_type, payload)
        try:
            size = len(encode(event))
        except (ValueError, UnicodeEncodeError) as exc:
            raise PublishError(422, f"{where}.payload: {exc}") from None
        if size + SEQ_SPLICE_MAX > max_event_bytes:
            raise PublishError(413, f"{where}: {size} bytes encoded; at most {max_event_bytes}")
        events.append(event)
    return events
