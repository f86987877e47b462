"""The machine-readable catalog: each event name with its direction and payload shape(s).

Pure values; no thread owns anything here. :data:`CATALOG` drives validation
(:mod:`~sidecar.catalog.validate`), publishing (:mod:`~sidecar.catalog.publish`) and code
generation (:mod:`~sidecar.catalog.codegen`).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from . import names as n
from . import payloads as p

__all__ = ["CATALOG", "Direction", "EventSpec", "Shape"]

#: ``"server"``: server -> client; ``"client"``: client -> server.
Direction = Literal["server", "client"]
#: A payload shape: one of the :class:`~typing.TypedDict` classes of :mod:`.payloads`.
Shape: TypeAlias = type


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type: its name, direction and accepted payload shape(s).

    ``shapes`` holds one or more payload :class:`~typing.TypedDict` classes; a payload is
    valid if it matches any one of them (the artifact events accept a record or a stream
    context).
    """

    type: str
    direction: Direction
    shapes: tuple[Shape, ...]

    @property
    def payload_type(self) -> Shape:
        """The primary (first) shape."""
        return self.shapes[0]


def _spec(event_type: str, direction: Direction, *shapes: Shape) -> EventSpec:
    return EventSpec(event_type, direction, shapes)


#: An artifact event carries the artifact record or its stream context.
_ARTIFACT_SHAPES = (p.ArtifactEventPayload, p.ArtifactStreamPayload)

#: Every event type this package knows, by name (sorted). Apps may send other well-named types;
#: those are not in here.
CATALOG: Mapping[str, EventSpec] = types.MappingProxyType(
    {
        spec.type: spec
        for spec in sorted(
            [
                _spec(n.CONNECTION_STATUS, "server", p.ConnectionStatusPayload),
                _spec(n.CHANNEL_SUBSCRIBED, "server", p.ChannelSubscribedPayload),
                _spec(n.CHANNEL_UNSUBSCRIBED, "server", p.ChannelUnsubscribedPayload),
                _spec(n.CHANNEL_ERROR, "server", p.ChannelErrorPayload),
                _spec(n.STREAM_CREATED, "server", p.StreamCreatedPayload),
                _spec(n.STREAM_ARCHIVED, "server", p.StreamArchivedPayload),
                _spec(n.STREAM_UPDATED, "server", p.StreamUpdatedPayload),
                _spec(n.STREAM_PHASE_CHANGED, "server", p.StreamPhaseChangedPayload),
                _spec(n.ARTIFACT_CREATED, "server", *_ARTIFACT_SHAPES),
                _spec(n.ARTIFACT_UPDATED, "server", *_ARTIFACT_SHAPES),
                _spec(n.ARTIFACT_DELETED, "server", p.ArtifactDeletedPayload),
                _spec(n.WORKFLOW_STATUS_CHANGED, "server", p.WorkflowStatusChangedPayload),
                _spec(n.CHAT_STREAM_START, "server", p.ChatStreamStartPayload),
                _spec(n.CHAT_TEXT_DELTA, "server", p.ChatTextDeltaPayload),
                _spec(n.CHAT_THINKING_DELTA, "server", p.ChatThinkingDeltaPayload),
                _spec(n.CHAT_TOOL_START, "server", p.ChatToolStartPayload),
                _spec(n.CHAT_TOOL_RESULT, "server", p.ChatToolResultPayload),
                _spec(n.CHAT_STREAM_END, "server", p.ChatStreamEndPayload),
                _spec(n.CHAT_ERROR, "server", p.ChatErrorPayload),
                _spec(n.CHAT_SEND, "client", p.ChatSendPayload),
                _spec(n.CHAT_CANCEL, "client", p.ChatCancelPayload),
            ],
            key=lambda spec: spec.type,
        )
    }
)
