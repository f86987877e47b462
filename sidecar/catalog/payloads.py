"""Payload shapes: one :class:`~typing.TypedDict` per event payload, keys exactly as on the wire.

Pure type declarations; no thread owns anything here. Keys are camelCase; ``NotRequired`` keys
are omitted when unset (Go's ``omitempty``). :mod:`sidecar.catalog.spec` ties each event name
to its shape(s); validation (:mod:`~sidecar.catalog.validate`) and the JSON Schema
(:mod:`~sidecar.catalog.codegen`) are derived from these classes by msgspec, so the three
cannot drift apart. A class docstring becomes the type's description in the schema and in the
generated TypeScript.

Note: this module deliberately does *not* use ``from __future__ import annotations``: on
Python 3.11 string annotations hide ``NotRequired`` from ``TypedDict``, which would turn every
optional key into a required one.
"""

from typing import Any, NotRequired, TypedDict

__all__ = [
    "ArtifactDeletedPayload",
    "ArtifactEventPayload",
    "ArtifactStreamPayload",
    "ChannelErrorPayload",
    "ChannelState",
    "ChannelSubscribedPayload",
    "ChannelUnsubscribedPayload",
    "ChatCancelPayload",
    "ChatErrorPayload",
    "ChatSendPayload",
    "ChatStreamEndPayload",
    "ChatStreamStartPayload",
    "ChatTextDeltaPayload",
    "ChatThinkingDeltaPayload",
    "ChatToolResultPayload",
    "ChatToolStartPayload",
    "ConnectionStatusPayload",
    "StreamArchivedPayload",
    "StreamCreatedPayload",
    "StreamPhaseChangedPayload",
    "StreamUpdatedPayload",
    "WorkflowStatusChangedPayload",
]


class ChannelState(TypedDict):
    """Where a named channel stands, in ``connection:status``'s ``channels``.

    ``epoch``: the channel's history; ``seq``: its last ``seq`` (the latest one); ``recovered``:
    whether the resume asked for (``since``) is replayed (``false``: reload the channel).
    """

    epoch: str
    seq: int
    recovered: bool


class ConnectionStatusPayload(TypedDict):
    """``connection:status``: sent to one client right after it connects.

    ``epoch``/``seq``/``recovered`` describe the default channel (omitted by a hub without
    resume); ``channels`` maps each named channel granted at connect to its state.
    """

    status: str
    epoch: NotRequired[str]
    seq: NotRequired[int]
    recovered: NotRequired[bool]
    channels: NotRequired[dict[str, ChannelState]]


class ChannelSubscribedPayload(TypedDict):
    """``channel:subscribed``: the answer to a ``channel:subscribe``; the channel's replay
    (if ``recovered``) and live events follow."""

    channel: str
    epoch: str
    seq: int
    recovered: bool


class ChannelUnsubscribedPayload(TypedDict):
    """``channel:unsubscribed``: nothing of ``channel`` follows. ``reason``: ``client`` (the
    client asked) or ``revoked`` (the server decided)."""

    channel: str
    reason: str


class ChannelErrorPayload(TypedDict):
    """``channel:error``: a refused channel request; the connection stays open. ``code``:
    ``invalid``, ``limit``, ``already_subscribed``, ``not_subscribed``, ``forbidden``,
    ``bad_token``, ``token_expired``, ``unavailable``."""

    channel: str
    code: str
    message: str


class StreamCreatedPayload(TypedDict):
    """``stream:created``."""

    projectId: str
    streamId: str
    name: str


class StreamArchivedPayload(TypedDict):
    """``stream:archived``."""

    projectId: str
    streamId: str
    outcome: str


class StreamUpdatedPayload(TypedDict):
    """``stream:updated``; ``changes`` maps changed field names to their new values."""

    projectId: str
    streamId: str
    changes: dict[str, Any]


class StreamPhaseChangedPayload(TypedDict):
    """``stream:phase-changed``; ``artifacts`` lists the artifacts of the new phase."""

    projectId: str
    streamId: str
    phase: str
    artifacts: list[str]


class ArtifactEventPayload(TypedDict):
    """The artifact-record form of ``artifact:created`` / ``artifact:updated``.

    Tags are camelCase (the Go struct once used ``phase_name``/``is_sharded``/``parent_id``;
    story 1.4 fixed them). ``parentId`` is omitted when there is no parent (Go ``omitempty``).
    """

    id: str
    name: str
    type: str
    path: str
    status: str
    phase: str
    phaseName: str
    isSharded: bool
    parentId: NotRequired[str]


class ArtifactStreamPayload(TypedDict):
    """The stream-context form of ``artifact:created`` / ``artifact:updated``."""

    projectId: str
    streamId: str
    filename: str
    phase: NotRequired[str]


class ArtifactDeletedPayload(TypedDict):
    """``artifact:deleted``."""

    id: str
    path: str


class WorkflowStatusChangedPayload(TypedDict):
    """``workflow:status-changed``: workflow ``workflowId`` of a stream entered ``status``."""

    projectId: str
    streamId: str
    workflowId: str
    status: str


# Legacy chat payloads. Every server event that belongs to an assistant reply carries
# ``conversationId`` + ``messageId``; client events carry ``conversationId``.


class ChatStreamStartPayload(TypedDict):
    """``chat:stream-start``: an assistant reply begins."""

    conversationId: str
    messageId: str
    model: NotRequired[str]


class ChatTextDeltaPayload(TypedDict):
    """``chat:text-delta``: the next chunk of reply text."""

    conversationId: str
    messageId: str
    delta: str


class ChatThinkingDeltaPayload(TypedDict):
    """``chat:thinking-delta``: the next chunk of reasoning text."""

    conversationId: str
    messageId: str
    delta: str


class ChatToolStartPayload(TypedDict):
    """``chat:tool-start``: the assistant invokes tool ``name`` with ``input``."""

    conversationId: str
    messageId: str
    toolId: str
    name: str
    input: dict[str, Any]


class ChatToolResultPayload(TypedDict):
    """``chat:tool-result``: the outcome of the tool call ``toolId``."""

    conversationId: str
    messageId: str
    toolId: str
    output: str
    isError: bool


class ChatStreamEndPayload(TypedDict):
    """``chat:stream-end``: the assistant reply is complete."""

    conversationId: str
    messageId: str
    stopReason: NotRequired[str]


class ChatErrorPayload(TypedDict):
    """``chat:error``: the conversation (or one reply, if ``messageId``) failed."""

    conversationId: str
    message: str
    messageId: NotRequired[str]


class ChatSendPayload(TypedDict):
    """``chat:send`` (client -> server): a user message."""

    conversationId: str
    content: str


class ChatCancelPayload(TypedDict):
    """``chat:cancel`` (client -> server): stop the reply in progress."""

    conversationId: str
