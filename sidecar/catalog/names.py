"""Event names: one constant per catalogued event type, ``namespace:kebab-case``.

Pure values; no thread owns anything here. ``connection:status`` and the ``channel:*``
answers are defined once, in :mod:`sidecar.protocol` (the hub sends them), and re-exported
here with the product events.
"""

from __future__ import annotations

from sidecar.protocol import (
    CHANNEL_ERROR,
    CHANNEL_SUBSCRIBED,
    CHANNEL_UNSUBSCRIBED,
    CONNECTION_STATUS,
)

__all__ = [
    "ARTIFACT_CREATED",
    "ARTIFACT_DELETED",
    "ARTIFACT_UPDATED",
    "CHANNEL_ERROR",
    "CHANNEL_SUBSCRIBED",
    "CHANNEL_UNSUBSCRIBED",
    "CHAT_CANCEL",
    "CHAT_ERROR",
    "CHAT_SEND",
    "CHAT_STREAM_END",
    "CHAT_STREAM_START",
    "CHAT_TEXT_DELTA",
    "CHAT_THINKING_DELTA",
    "CHAT_TOOL_RESULT",
    "CHAT_TOOL_START",
    "CONNECTION_STATUS",
    "STREAM_ARCHIVED",
    "STREAM_CREATED",
    "STREAM_PHASE_CHANGED",
    "STREAM_UPDATED",
    "WORKFLOW_STATUS_CHANGED",
]

STREAM_CREATED = "stream:created"
STREAM_ARCHIVED = "stream:archived"
STREAM_UPDATED = "stream:updated"
STREAM_PHASE_CHANGED = "stream:phase-changed"

ARTIFACT_CREATED = "artifact:created"
ARTIFACT_UPDATED = "artifact:updated"
ARTIFACT_DELETED = "artifact:deleted"

WORKFLOW_STATUS_CHANGED = "workflow:status-changed"

# Legacy chat protocol. These names (and their direction) are the Go project's existing chat
# protocol, kept verbatim for wire compatibility with the chat service and its frontend; they
# are not our naming choices, so do not "fix" or extend them here. (The seed story also
# mentions legacy ``tool:*`` types; they are out of this catalog's scope.)
# server -> client
CHAT_STREAM_START = "chat:stream-start"
CHAT_TEXT_DELTA = "chat:text-delta"
CHAT_THINKING_DELTA = "chat:thinking-delta"
CHAT_TOOL_START = "chat:tool-start"
CHAT_TOOL_RESULT = "chat:tool-result"
CHAT_STREAM_END = "chat:stream-end"
CHAT_ERROR = "chat:error"
# client -> server
CHAT_SEND = "chat:send"
CHAT_CANCEL = "chat:cancel"
