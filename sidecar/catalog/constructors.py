"""Constructors: ``new_*_event(...)``, one per event type (the seed's ``New…Event`` pattern).

Pure functions; no thread owns anything here. They take snake_case arguments, build the
payload :class:`~typing.TypedDict` with its camelCase keys (optional keys only when given) and
return an :class:`~sidecar.envelope.Event` stamped now. They never encode: that is
:func:`sidecar.envelope.encode`, once per event, done by whoever sends it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec

from sidecar.envelope import Event, new_event

from .names import (
    ARTIFACT_CREATED,
    ARTIFACT_DELETED,
    ARTIFACT_UPDATED,
    CHANNEL_ERROR,
    CHANNEL_SUBSCRIBED,
    CHANNEL_UNSUBSCRIBED,
    CHAT_CANCEL,
    CHAT_ERROR,
    CHAT_SEND,
    CHAT_STREAM_END,
    CHAT_STREAM_START,
    CHAT_TEXT_DELTA,
    CHAT_THINKING_DELTA,
    CHAT_TOOL_RESULT,
    CHAT_TOOL_START,
    CONNECTION_STATUS,
    STREAM_ARCHIVED,
    STREAM_CREATED,
    STREAM_PHASE_CHANGED,
    STREAM_UPDATED,
    WORKFLOW_STATUS_CHANGED,
)
from .payloads import (
    ArtifactDeletedPayload,
    ArtifactEventPayload,
    ArtifactStreamPayload,
    ChannelErrorPayload,
    ChannelState,
    ChannelSubscribedPayload,
    ChannelUnsubscribedPayload,
    ChatCancelPayload,
    ChatErrorPayload,
    ChatSendPayload,
    ChatStreamEndPayload,
    ChatStreamStartPayload,
    ChatTextDeltaPayload,
    ChatToolResultPayload,
    ChatToolStartPayload,
    ConnectionStatusPayload,
    StreamArchivedPayload,
    StreamCreatedPayload,
    StreamPhaseChangedPayload,
    StreamUpdatedPayload,
    WorkflowStatusChangedPayload,
)

P = ParamSpec("P")


def _constructor(
    event_type: str, build: Callable[P, Mapping[str, Any]], name: str, doc: str
) -> Callable[P, Event]:
    """The constructor of ``event_type`` whose payload ``build`` makes, with ``build``'s
    signature (for event types that share a payload shape)."""

    def constructor(*args: P.args, **kwargs: P.kwargs) -> Event:
        return new_event(event_type, build(*args, **kwargs))

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = doc
    constructor.__annotations__ = {**build.__annotations__, "return": "Event"}
    constructor.__signature__ = inspect.signature(build).replace(  # type: ignore[attr-defined]
        return_annotation="Event"
    )
    return constructor


__all__ = [
    "new_artifact_created_event",
    "new_artifact_deleted_event",
    "new_artifact_stream_event",
    "new_artifact_updated_event",
    "new_channel_error_event",
    "new_channel_subscribed_event",
    "new_channel_unsubscribed_event",
    "new_chat_cancel_event",
    "new_chat_error_event",
    "new_chat_send_event",
    "new_chat_stream_end_event",
    "new_chat_stream_start_event",
    "new_chat_text_delta_event",
    "new_chat_thinking_delta_event",
    "new_chat_tool_result_event",
    "new_chat_tool_start_event",
    "new_connection_status_event",
    "new_stream_archived_event",
    "new_stream_created_event",
    "new_stream_phase_changed_event",
    "new_stream_updated_event",
    "new_workflow_status_changed_event",
]


def new_connection_status_event(
    status: str = "connected",
    *,
    epoch: str | None = None,
    seq: int | None = None,
    recovered: bool | None = None,
    channels: Mapping[str, ChannelState] | None = None,
) -> Event:
    """``connection:status``; ``epoch``/``seq``/``recovered`` (the default channel) and
    ``channels`` (the named ones) are included only when not None."""
    payload: ConnectionStatusPayload = {"status": status}
    if epoch is not None:
        payload["epoch"] = epoch
    if seq is not None:
        payload["seq"] = seq
    if recovered is not None:
        payload["recovered"] = recovered
    if channels is not None:
        payload["channels"] = {
            name: {"epoch": state["epoch"], "seq": state["seq"], "recovered": state["recovered"]}
            for name, state in channels.items()
        }
    return new_event(CONNECTION_STATUS, payload)


def new_channel_subscribed_event(channel: str, epoch: str, seq: int, recovered: bool) -> Event:
    """``channel:subscribed``: ``channel`` is at ``seq`` of ``epoch``; ``recovered``."""
    payload: ChannelSubscribedPayload = {
        "channel": channel,
        "epoch": epoch,
        "seq": seq,
        "recovered": recovered,
    }
    return new_event(CHANNEL_SUBSCRIBED, payload)


def new_channel_unsubscribed_event(channel: str, reason: str) -> Event:
    """``channel:unsubscribed``: nothing of ``channel`` follows (``client`` or ``revoked``)."""
    payload: ChannelUnsubscribedPayload = {"channel": channel, "reason": reason}
    return new_event(CHANNEL_UNSUBSCRIBED, payload)


def new_channel_error_event(channel: str, code: str, message: str) -> Event:
    """``channel:error``: a refused channel request (the connection stays open)."""
    payload: ChannelErrorPayload = {"channel": channel, "code": code, "message": message}
    return new_event(CHANNEL_ERROR, payload)


def new_stream_created_event(project_id: str, stream_id: str, name: str) -> Event:
    """``stream:created``."""
    payload: StreamCreatedPayload = {"projectId": project_id, "streamId": stream_id, "name": name}
    return new_event(STREAM_CREATED, payload)


def new_stream_archived_event(project_id: str, stream_id: str, outcome: str) -> Event:
    """``stream:archived``."""
    payload: StreamArchivedPayload = {
        "projectId": project_id,
        "streamId": stream_id,
        "outcome": outcome,
    }
    return new_event(STREAM_ARCHIVED, payload)


def new_stream_updated_event(project_id: str, stream_id: str, changes: Mapping[str, Any]) -> Event:
    """``stream:updated``; ``changes`` is copied (shallowly)."""
    payload: StreamUpdatedPayload = {
        "projectId": project_id,
        "streamId": stream_id,
        "changes": dict(changes),
    }
    return new_event(STREAM_UPDATED, payload)


def new_stream_phase_changed_event(
    project_id: str, stream_id: str, phase: str, artifacts: Iterable[str]
) -> Event:
    """``stream:phase-changed``; ``artifacts`` is copied into a list."""
    payload: StreamPhaseChangedPayload = {
        "projectId": project_id,
        "streamId": stream_id,
        "phase": phase,
        "artifacts": list(artifacts),
    }
    return new_event(STREAM_PHASE_CHANGED, payload)


def _artifact_record(
    id: str,
    name: str,
    type: str,
    path: str,
    status: str,
    phase: str,
    phase_name: str,
    is_sharded: bool,
    parent_id: str | None = None,
) -> ArtifactEventPayload:
    payload: ArtifactEventPayload = {
        "id": id,
        "name": name,
        "type": type,
        "path": path,
        "status": status,
        "phase": phase,
        "phaseName": phase_name,
        "isSharded": is_sharded,
    }
    if parent_id is not None:
        payload["parentId"] = parent_id
    return payload


new_artifact_created_event = _constructor(
    ARTIFACT_CREATED,
    _artifact_record,
    "new_artifact_created_event",
    "``artifact:created``, record form; ``parentId`` is omitted when ``parent_id`` is None.",
)
new_artifact_updated_event = _constructor(
    ARTIFACT_UPDATED,
    _artifact_record,
    "new_artifact_updated_event",
    "``artifact:updated``, record form; ``parentId`` is omitted when ``parent_id`` is None.",
)


def new_artifact_stream_event(
    event_type: str,
    project_id: str,
    stream_id: str,
    filename: str,
    phase: str | None = None,
) -> Event:
    """``artifact:created`` or ``artifact:updated``, stream-context form.

    ``phase`` is omitted when None. Raises :class:`ValueError` for any other ``event_type``.
    """
    if event_type not in (ARTIFACT_CREATED, ARTIFACT_UPDATED):
        raise ValueError(
            f"stream-context artifact events are {ARTIFACT_CREATED!r} or {ARTIFACT_UPDATED!r},"
            f" not {event_type!r}"
        )
    payload: ArtifactStreamPayload = {
        "projectId": project_id,
        "streamId": stream_id,
        "filename": filename,
    }
    if phase is not None:
        payload["phase"] = phase
    return new_event(event_type, payload)


def new_artifact_deleted_event(id: str, path: str) -> Event:
    """``artifact:deleted``."""
    payload: ArtifactDeletedPayload = {"id": id, "path": path}
    return new_event(ARTIFACT_DELETED, payload)


def new_workflow_status_changed_event(
    project_id: str, stream_id: str, workflow_id: str, status: str
) -> Event:
    """``workflow:status-changed``."""
    payload: WorkflowStatusChangedPayload = {
        "projectId": project_id,
        "streamId": stream_id,
        "workflowId": workflow_id,
        "status": status,
    }
    return new_event(WORKFLOW_STATUS_CHANGED, payload)


def new_chat_stream_start_event(
    conversation_id: str, message_id: str, model: str | None = None
) -> Event:
    """``chat:stream-start`` (legacy); ``model`` is omitted when None."""
    payload: ChatStreamStartPayload = {"conversationId": conversation_id, "messageId": message_id}
    if model is not None:
        payload["model"] = model
    return new_event(CHAT_STREAM_START, payload)


def _delta(conversation_id: str, message_id: str, delta: str) -> ChatTextDeltaPayload:
    return {"conversationId": conversation_id, "messageId": message_id, "delta": delta}


new_chat_text_delta_event = _constructor(
    CHAT_TEXT_DELTA, _delta, "new_chat_text_delta_event", "``chat:text-delta`` (legacy)."
)
new_chat_thinking_delta_event = _constructor(
    CHAT_THINKING_DELTA,
    _delta,
    "new_chat_thinking_delta_event",
    "``chat:thinking-delta`` (legacy).",
)


def new_chat_tool_start_event(
    conversation_id: str,
    message_id: str,
    tool_id: str,
    name: str,
    input: Mapping[str, Any],
) -> Event:
    """``chat:tool-start`` (legacy); ``input`` is copied (shallowly)."""
    payload: ChatToolStartPayload = {
        "conversationId": conversation_id,
        "messageId": message_id,
        "toolId": tool_id,
        "name": name,
        "input": dict(input),
    }
    return new_event(CHAT_TOOL_START, payload)


def new_chat_tool_result_event(
    conversation_id: str,
    message_id: str,
    tool_id: str,
    output: str,
    is_error: bool = False,
) -> Event:
    """``chat:tool-result`` (legacy)."""
    payload: ChatToolResultPayload = {
        "conversationId": conversation_id,
        "messageId": message_id,
        "toolId": tool_id,
        "output": output,
        "isError": is_error,
    }
    return new_event(CHAT_TOOL_RESULT, payload)


def new_chat_stream_end_event(
    conversation_id: str, message_id: str, stop_reason: str | None = None
) -> Event:
    """``chat:stream-end`` (legacy); ``stopReason`` is omitted when None."""
    payload: ChatStreamEndPayload = {"conversationId": conversation_id, "messageId": message_id}
    if stop_reason is not None:
        payload["stopReason"] = stop_reason
    return new_event(CHAT_STREAM_END, payload)


def new_chat_error_event(
    conversation_id: str, message: str, message_id: str | None = None
) -> Event:
    """``chat:error`` (legacy); ``messageId`` is omitted when None."""
    payload: ChatErrorPayload = {"conversationId": conversation_id, "message": message}
    if message_id is not None:
        payload["messageId"] = message_id
    return new_event(CHAT_ERROR, payload)


def new_chat_send_event(conversation_id: str, content: str) -> Event:
    """``chat:send`` (legacy, client -> server); for clients and tests."""
    payload: ChatSendPayload = {"conversationId": conversation_id, "content": content}
    return new_event(CHAT_SEND, payload)


def new_chat_cancel_event(conversation_id: str) -> Event:
    """``chat:cancel`` (legacy, client -> server); for clients and tests."""
    payload: ChatCancelPayload = {"conversationId": conversation_id}
    return new_event(CHAT_CANCEL, payload)
