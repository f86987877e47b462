"""The event catalog: names, payload shapes, constructors; pure, no threads, no state.

* Names: one constant per event type, ``namespace:kebab-case`` (:data:`EVENT_NAME_RE`).
* Shapes: one :class:`~typing.TypedDict` per payload, keys camelCase exactly as on the wire.
* Constructors: ``new_*_event(...)`` take snake_case arguments and return an
  :class:`~sidecar.envelope.Event`; they never encode (that is :func:`sidecar.envelope.encode`,
  once per event, done by whoever sends it).
* :data:`CATALOG`: the same information, machine-readable, derived from the ``TypedDict``\\ s so
  the two cannot drift apart; it drives :func:`validate_payload` and :func:`json_schema`.

Note: this module deliberately does *not* use ``from __future__ import annotations``: on
Python 3.11 string annotations hide ``NotRequired`` from ``TypedDict``, which would turn every
optional key into a required one.
"""

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, get_args, get_origin, get_type_hints

from sidecar.envelope import EVENT_NAME_RE, Event, new_event

__all__ = [
    "ARTIFACT_CREATED",
    "ARTIFACT_DELETED",
    "ARTIFACT_UPDATED",
    "CATALOG",
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
    "ArtifactDeletedPayload",
    "ArtifactEventPayload",
    "ArtifactStreamPayload",
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
    "Direction",
    "EventSpec",
    "FieldSpec",
    "JsonType",
    "StreamArchivedPayload",
    "StreamCreatedPayload",
    "StreamPhaseChangedPayload",
    "StreamUpdatedPayload",
    "WorkflowStatusChangedPayload",
    "json_schema",
    "new_artifact_created_event",
    "new_artifact_deleted_event",
    "new_artifact_stream_event",
    "new_artifact_updated_event",
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
    "validate_payload",
]

# --------------------------------------------------------------------------------------------
# Event names
# --------------------------------------------------------------------------------------------

CONNECTION_STATUS = "connection:status"

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

# --------------------------------------------------------------------------------------------
# Payload shapes (keys exactly as on the wire)
# --------------------------------------------------------------------------------------------


class ConnectionStatusPayload(TypedDict):
    """``connection:status``: sent to one client right after it connects.

    ``epoch``/``seq``/``recovered`` are reserved for resumable sessions and omitted when unset.
    """

    status: str
    epoch: NotRequired[str]
    seq: NotRequired[int]
    recovered: NotRequired[bool]


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


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------


def new_connection_status_event(
    status: str = "connected",
    *,
    epoch: str | None = None,
    seq: int | None = None,
    recovered: bool | None = None,
) -> Event:
    """``connection:status``; ``epoch``/``seq``/``recovered`` are included only when not None."""
    payload: ConnectionStatusPayload = {"status": status}
    if epoch is not None:
        payload["epoch"] = epoch
    if seq is not None:
        payload["seq"] = seq
    if recovered is not None:
        payload["recovered"] = recovered
    return new_event(CONNECTION_STATUS, payload)


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
    parent_id: str | None,
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


def new_artifact_created_event(
    id: str,
    name: str,
    type: str,
    path: str,
    status: str,
    phase: str,
    phase_name: str,
    is_sharded: bool,
    parent_id: str | None = None,
) -> Event:
    """``artifact:created``, record form; ``parentId`` is omitted when ``parent_id`` is None."""
    record = _artifact_record(
        id, name, type, path, status, phase, phase_name, is_sharded, parent_id
    )
    return new_event(ARTIFACT_CREATED, record)


def new_artifact_updated_event(
    id: str,
    name: str,
    type: str,
    path: str,
    status: str,
    phase: str,
    phase_name: str,
    is_sharded: bool,
    parent_id: str | None = None,
) -> Event:
    """``artifact:updated``, record form; ``parentId`` is omitted when ``parent_id`` is None."""
    record = _artifact_record(
        id, name, type, path, status, phase, phase_name, is_sharded, parent_id
    )
    return new_event(ARTIFACT_UPDATED, record)


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


def new_chat_text_delta_event(conversation_id: str, message_id: str, delta: str) -> Event:
    """``chat:text-delta`` (legacy)."""
    payload: ChatTextDeltaPayload = {
        "conversationId": conversation_id,
        "messageId": message_id,
        "delta": delta,
    }
    return new_event(CHAT_TEXT_DELTA, payload)


def new_chat_thinking_delta_event(conversation_id: str, message_id: str, delta: str) -> Event:
    """``chat:thinking-delta`` (legacy)."""
    payload: ChatThinkingDeltaPayload = {
        "conversationId": conversation_id,
        "messageId": message_id,
        "delta": delta,
    }
    return new_event(CHAT_THINKING_DELTA, payload)


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


# --------------------------------------------------------------------------------------------
# Machine-readable catalog
# --------------------------------------------------------------------------------------------

#: JSON types a payload field can have; ``array<string>`` is an array whose items are strings.
JsonType = Literal["string", "integer", "boolean", "object", "array", "array<string>"]

#: ``"server"``: server -> client; ``"client"``: client -> server.
Direction = Literal["server", "client"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload field: its JSON type and whether it must be present."""

    json_type: JsonType
    required: bool


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type: its name, direction and accepted payload shape(s).

    ``shapes`` holds one or more alternatives (field name -> :class:`FieldSpec`, in wire
    order); a payload is valid if it matches any one of them.
    """

    type: str
    direction: Direction
    shapes: tuple[Mapping[str, FieldSpec], ...]

    @property
    def fields(self) -> Mapping[str, FieldSpec]:
        """The primary (first) shape."""
        return self.shapes[0]


def _json_type_of_annotation(annotation: object) -> JsonType:
    if annotation is str:
        return "string"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    origin = get_origin(annotation)
    if annotation is dict or origin is dict:
        return "object"
    if annotation is list or origin is list:
        return "array<string>" if get_args(annotation) == (str,) else "array"
    raise TypeError(f"no JSON type for payload annotation {annotation!r}")


def _shape(payload_type: type) -> Mapping[str, FieldSpec]:
    """Derive the field table of a payload ``TypedDict`` (declaration order kept)."""
    hints = get_type_hints(payload_type)
    required: frozenset[str] = payload_type.__required_keys__  # type: ignore[attr-defined]
    return types.MappingProxyType(
        {
            key: FieldSpec(_json_type_of_annotation(hint), key in required)
            for key, hint in hints.items()
        }
    )


def _spec(event_type: str, direction: Direction, *payload_types: type) -> EventSpec:
    return EventSpec(event_type, direction, tuple(_shape(t) for t in payload_types))


#: Every event type this package knows, by name (sorted). Apps may send other well-named types;
#: those are not in here.
CATALOG: Mapping[str, EventSpec] = types.MappingProxyType(
    {
        spec.type: spec
        for spec in sorted(
            [
                _spec(CONNECTION_STATUS, "server", ConnectionStatusPayload),
                _spec(STREAM_CREATED, "server", StreamCreatedPayload),
                _spec(STREAM_ARCHIVED, "server", StreamArchivedPayload),
                _spec(STREAM_UPDATED, "server", StreamUpdatedPayload),
                _spec(STREAM_PHASE_CHANGED, "server", StreamPhaseChangedPayload),
                _spec(ARTIFACT_CREATED, "server", ArtifactEventPayload, ArtifactStreamPayload),
                _spec(ARTIFACT_UPDATED, "server", ArtifactEventPayload, ArtifactStreamPayload),
                _spec(ARTIFACT_DELETED, "server", ArtifactDeletedPayload),
                _spec(WORKFLOW_STATUS_CHANGED, "server", WorkflowStatusChangedPayload),
                _spec(CHAT_STREAM_START, "server", ChatStreamStartPayload),
                _spec(CHAT_TEXT_DELTA, "server", ChatTextDeltaPayload),
                _spec(CHAT_THINKING_DELTA, "server", ChatThinkingDeltaPayload),
                _spec(CHAT_TOOL_START, "server", ChatToolStartPayload),
                _spec(CHAT_TOOL_RESULT, "server", ChatToolResultPayload),
                _spec(CHAT_STREAM_END, "server", ChatStreamEndPayload),
                _spec(CHAT_ERROR, "server", ChatErrorPayload),
                _spec(CHAT_SEND, "client", ChatSendPayload),
                _spec(CHAT_CANCEL, "client", ChatCancelPayload),
            ],
            key=lambda spec: spec.type,
        )
    }
)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _json_type_name(value: object) -> str:
    """The JSON type ``value`` would encode as (``bool`` is ``boolean``, never ``integer``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _field_error(name: str, expected: JsonType, value: object) -> str | None:
    actual = _json_type_name(value)
    if expected == "array<string>":
        if actual != "array":
            return f"payload.{name}: expected array<string>, got {actual}"
        assert isinstance(value, Sequence)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                return f"payload.{name}[{index}]: expected string, got {_json_type_name(item)}"
        return None
    if actual != expected:
        return f"payload.{name}: expected {expected}, got {actual}"
    return None


def _shape_errors(shape: Mapping[str, FieldSpec], payload: Mapping[Any, Any]) -> list[str]:
    errors: list[str] = []
    for name, spec in shape.items():
        if name not in payload:
            if spec.required:
                errors.append(f"payload.{name}: required field missing")
            continue
        error = _field_error(name, spec.json_type, payload[name])
        if error is not None:
            errors.append(error)
    return errors


def validate_payload(event_type: str, payload: object) -> str | None:
    """Check ``payload`` against the catalogued shape(s) of ``event_type``.

    Returns None if it matches at least one shape: every required field present, every
    present field of the declared JSON type (``bool`` is not an integer, a float is not an
    integer); extra keys are allowed. Otherwise returns a one-line message naming the
    offending field, e.g. ``"payload.streamId: required field missing"``. With several shapes
    the error reported is from the closest one: the shape sharing most keys with the payload,
    then the one with fewest errors, then the first declared.

    Raises :class:`KeyError` if ``event_type`` is not in :data:`CATALOG`.
    """
    spec = CATALOG[event_type]
    if not isinstance(payload, Mapping):
        return f"payload: expected object, got {_json_type_name(payload)}"
    best: tuple[int, int, str] | None = None
    for shape in spec.shapes:
        errors = _shape_errors(shape, payload)
        if not errors:
            return None
        shared = sum(1 for name in shape if name in payload)
        candidate = (-shared, len(errors), errors[0])
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None
    return best[2]


# --------------------------------------------------------------------------------------------
# JSON Schema
# --------------------------------------------------------------------------------------------

_SCHEMA_ID = "urn:sidecar:event-envelope"
_TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"


def _field_schema(json_type: JsonType) -> dict[str, Any]:
    if json_type == "array<string>":
        return {"type": "array", "items": {"type": "string"}}
    return {"type": json_type}


def _shape_schema(shape: Mapping[str, FieldSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: _field_schema(shape[name].json_type) for name in sorted(shape)},
        "required": sorted(name for name, field in shape.items() if field.required),
        "additionalProperties": True,
    }


def _payload_schema(spec: EventSpec) -> dict[str, Any]:
    direction = "server -> client" if spec.direction == "server" else "client -> server"
    shapes = [_shape_schema(shape) for shape in spec.shapes]
    schema: dict[str, Any] = {"description": f"{spec.type} payload ({direction})"}
    if len(shapes) == 1:
        schema.update(shapes[0])
    else:
        schema["anyOf"] = shapes
    return schema


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for the wire envelope ``{type, payload, timestamp, seq?}``.

    Each catalogued type gets a ``oneOf`` branch pinning ``type`` (``const``) and constraining
    ``payload`` to its shape(s) (extra payload keys allowed). One fallback branch admits any
    other ``namespace:kebab-case`` type with an object payload (app-specific events).

    Deterministic: built from the sorted catalog with sorted ``required``/``properties``;
    dump with ``json.dumps(..., sort_keys=True, indent=2)`` to get a stable file.
    """
    known = sorted(CATALOG)
    branches: list[dict[str, Any]] = [
        {
            "properties": {
                "type": {"const": name},
                "payload": {"$ref": f"#/$defs/{name}"},
            }
        }
        for name in known
    ]
    branches.append(
        {
            "description": "app-specific event type (not in the catalog)",
            "properties": {"type": {"not": {"enum": known}}},
        }
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _SCHEMA_ID,
        "title": "sidecar WebSocket event envelope",
        "type": "object",
        "properties": {
            "type": {"type": "string", "pattern": f"^{EVENT_NAME_RE.pattern}$"},
            "payload": {"type": "object"},
            "timestamp": {
                "type": "string",
                "format": "date-time",
                "pattern": _TIMESTAMP_PATTERN,
            },
            "seq": {"type": "integer", "minimum": 0},
        },
        "required": ["payload", "timestamp", "type"],
        "additionalProperties": False,
        "oneOf": branches,
        "$defs": {name: _payload_schema(CATALOG[name]) for name in known},
    }
