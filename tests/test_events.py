"""Tests for the catalog (sidecar.catalog, also as sidecar.events): names, payload shapes,
constructors, validation, schema."""

import dataclasses
import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar import catalog, events
from sidecar.catalog import codegen
from sidecar.envelope import EVENT_NAME_RE, Event, encode, with_seq
from sidecar.events import CATALOG, json_schema, validate_payload

DATA = Path(__file__).with_name("data")
RFC3339_UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def _case(spec: dict[str, Any]) -> tuple[str, Callable[[], Event], str, dict[str, Any]]:
    build = getattr(events, spec["constructor"])
    call = functools.partial(build, *spec["args"], **spec["kwargs"])
    return spec["id"], call, spec["type"], spec["payload"]


# (id, constructor call, expected type, expected payload exactly as on the wire): the table is
# data, in tests/data/constructor-cases.json (the constructor's name and its arguments)
CONSTRUCTOR_CASES = [
    _case(spec) for spec in json.loads((DATA / "constructor-cases.json").read_text("utf-8"))
]

CASE_IDS = [case[0] for case in CONSTRUCTOR_CASES]


def _record_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "id": "a1",
        "name": "PRD",
        "type": "prd",
        "path": "docs/prd.md",
        "status": "draft",
        "phase": "2",
        "phase_name": "Planning",
        "is_sharded": True,
    }
    kwargs.update(overrides)
    return kwargs


def _valid_payload(event_type: str) -> dict[str, Any]:
    """The first constructor case's payload for ``event_type`` (a known-good payload)."""
    for _, _, case_type, payload in CONSTRUCTOR_CASES:
        if case_type == event_type:
            return dict(payload)
    raise AssertionError(f"no constructor case for {event_type}")


# --- constructors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "event_type", "payload"), [c[1:] for c in CONSTRUCTOR_CASES], ids=CASE_IDS
)
def test_constructor_builds_exact_payload_that_round_trips(
    build: Callable[[], Event], event_type: str, payload: dict[str, Any]
) -> None:
    event = build()
    assert isinstance(event, Event)
    assert event.type == event_type
    assert dict(event.payload) == payload
    assert list(event.payload) == list(payload)  # wire key order, too
    assert RFC3339_UTC_Z.match(event.timestamp), event.timestamp
    decoded = json.loads(encode(event))
    assert decoded == {"type": event_type, "payload": payload, "timestamp": event.timestamp}
    assert RFC3339_UTC_Z.match(decoded["timestamp"])
    assert validate_payload(event_type, decoded["payload"]) is None


@pytest.mark.parametrize(
    ("build", "event_type", "payload"), [c[1:] for c in CONSTRUCTOR_CASES], ids=CASE_IDS
)
def test_payload_keys_are_camel_case(
    build: Callable[[], Event], event_type: str, payload: dict[str, Any]
) -> None:
    del event_type, payload
    for key in build().payload:
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), key


def test_connection_status_omits_unset_optional_keys() -> None:
    event = events.new_connection_status_event(seq=5)
    assert dict(event.payload) == {"status": "connected", "seq": 5}
    assert b"null" not in encode(event)


def test_mutable_arguments_are_copied() -> None:
    changes = {"name": "A"}
    artifacts = ["a.md"]
    tool_input = {"path": "x"}
    updated = events.new_stream_updated_event("p", "s", changes)
    phased = events.new_stream_phase_changed_event("p", "s", "dev", artifacts)
    tool = events.new_chat_tool_start_event("c", "m", "t", "read", tool_input)
    changes["name"] = "B"
    artifacts.append("b.md")
    tool_input["path"] = "y"
    assert updated.payload["changes"] == {"name": "A"}
    assert phased.payload["artifacts"] == ["a.md"]
    assert tool.payload["input"] == {"path": "x"}


def test_artifact_stream_event_rejects_other_types() -> None:
    with pytest.raises(ValueError, match="artifact:deleted"):
        events.new_artifact_stream_event(events.ARTIFACT_DELETED, "p", "s", "f.md")


# --- the fixed artifact tags (story 1.4, task 1.7) ---------------------------------------------


@pytest.mark.parametrize(
    "build", [events.new_artifact_created_event, events.new_artifact_updated_event]
)
def test_artifact_record_uses_camel_case_tags(build: Callable[..., Event]) -> None:
    raw = encode(build(**_record_kwargs(parent_id="parent-1")))
    payload = json.loads(raw)["payload"]
    assert payload["phaseName"] == "Planning"
    assert payload["isSharded"] is True
    assert payload["parentId"] == "parent-1"
    for snake in (b"phase_name", b"is_sharded", b"parent_id"):
        assert snake not in raw


@pytest.mark.parametrize(
    "build", [events.new_artifact_created_event, events.new_artifact_updated_event]
)
def test_artifact_record_omits_parent_id_when_none(build: Callable[..., Event]) -> None:
    raw = encode(build(**_record_kwargs(is_sharded=False)))
    payload = json.loads(raw)["payload"]
    assert "parentId" not in payload
    assert payload["isSharded"] is False
    assert b"null" not in raw
    assert b"parent" not in raw.lower()


# --- the catalog -------------------------------------------------------------------------------


def _module_event_constants() -> dict[str, str]:
    return {
        name: value
        for name in events.__all__
        if name.isupper() and isinstance(value := getattr(events, name), str)
    }


def test_every_constant_is_catalogued_and_well_named() -> None:
    constants = _module_event_constants()
    assert len(constants) == 21
    assert set(constants.values()) == set(CATALOG)
    for name in CATALOG:
        assert EVENT_NAME_RE.fullmatch(name), name
        assert CATALOG[name].type == name


def test_catalog_directions() -> None:
    clients = {name for name, spec in CATALOG.items() if spec.direction == "client"}
    assert clients == {"chat:send", "chat:cancel"}
    assert all(spec.direction in ("server", "client") for spec in CATALOG.values())


def test_every_server_event_has_a_validating_constructor() -> None:
    covered: dict[str, int] = {}
    for _, build, event_type, _ in CONSTRUCTOR_CASES:
        event = build()
        assert validate_payload(event.type, event.payload) is None, event_type
        covered[event_type] = covered.get(event_type, 0) + 1
    server_types = {name for name, spec in CATALOG.items() if spec.direction == "server"}
    assert server_types <= set(covered)
    assert set(covered) == set(CATALOG)


def test_artifact_shapes_accept_both_forms() -> None:
    record = _valid_payload("artifact:created")
    stream = {"projectId": "p", "streamId": "s", "filename": "f.md"}
    for event_type in ("artifact:created", "artifact:updated"):
        spec = CATALOG[event_type]
        assert spec.shapes == (events.ArtifactEventPayload, events.ArtifactStreamPayload)
        assert spec.payload_type is events.ArtifactEventPayload
        assert validate_payload(event_type, record) is None
        assert validate_payload(event_type, stream) is None
        assert validate_payload(event_type, stream | {"phase": "dev"}) is None
        assert validate_payload(event_type, {"id": "a", "filename": "f.md"}) is not None


def test_schema_field_types_follow_payload_typed_dicts() -> None:
    defs = json_schema()["$defs"]
    status = defs["ConnectionStatusPayload"]
    assert status["properties"] == {
        "status": {"type": "string"},
        "epoch": {"type": "string"},
        "seq": {"type": "integer"},
        "recovered": {"type": "boolean"},
        "channels": {"type": "object", "additionalProperties": {"$ref": "#/$defs/ChannelState"}},
    }
    assert status["required"] == ["status"]
    assert set(defs["ChannelState"]["required"]) == {"epoch", "seq", "recovered"}
    changes = defs["StreamUpdatedPayload"]["properties"]["changes"]
    assert changes == {"type": "object", "additionalProperties": True}
    artifacts = defs["StreamPhaseChangedPayload"]["properties"]["artifacts"]
    assert artifacts == {"type": "array", "items": {"type": "string"}}
    assert set(defs["WorkflowStatusChangedPayload"]["required"]) == {
        "projectId",
        "streamId",
        "workflowId",
        "status",
    }


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        CATALOG["x:y"] = CATALOG["chat:send"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG["chat:send"].direction = "server"  # type: ignore[misc]


def test_sidecar_events_is_the_catalog() -> None:
    assert events.__all__ == catalog.__all__
    assert events.new_stream_created_event is catalog.new_stream_created_event
    assert events.CATALOG is catalog.CATALOG


def test_catalog_imports_no_web_or_hub_module() -> None:
    code = (
        "import sys, sidecar.catalog, sidecar.events, sidecar.schema; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    forbidden = ("flask", "werkzeug", "simple_websocket", "wsproto")
    forbidden_own = ("hub", "app", "api", "web", "core", "connection", "client", "server")
    bad = [m for m in loaded if m.split(".")[0] in forbidden]
    bad += [m for m in loaded if m.startswith("sidecar.") and m.split(".")[1] in forbidden_own]
    assert not bad, bad


# --- validate_payload ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "mutate", "message"),
    [
        (
            "stream:created",
            lambda p: p.pop("streamId"),
            "payload.streamId: required field missing",
        ),
        (
            "stream:created",
            lambda p: p.update(name=7),
            "payload.name: expected string, got integer",
        ),
        (
            "connection:status",
            lambda p: p.update(seq=True),
            "payload.seq: expected integer, got boolean",
        ),
        (
            "connection:status",
            lambda p: p.update(seq=1.0),
            "payload.seq: expected integer, got number",
        ),
        (
            "connection:status",
            lambda p: p.update(recovered=1),
            "payload.recovered: expected boolean, got integer",
        ),
        (
            "stream:phase-changed",
            lambda p: p.update(artifacts=["a", 3]),
            "payload.artifacts[1]: expected string, got integer",
        ),
        (
            "stream:phase-changed",
            lambda p: p.update(artifacts="a"),
            "payload.artifacts: expected array, got string",
        ),
        (
            "stream:updated",
            lambda p: p.update(changes=[]),
            "payload.changes: expected object, got array",
        ),
        (
            "chat:tool-result",
            lambda p: p.update(isError="false"),
            "payload.isError: expected boolean, got string",
        ),
        (
            "artifact:created",
            lambda p: p.update(isSharded="yes"),
            "payload.isSharded: expected boolean, got string",
        ),
        (
            "artifact:created",
            lambda p: p.update(parentId=None),
            "payload.parentId: expected string, got null",
        ),
        (
            "artifact:updated",
            lambda p: p.pop("phaseName"),
            "payload.phaseName: required field missing",
        ),
    ],
)
def test_validate_payload_names_offending_field(
    event_type: str, mutate: Callable[[dict[str, Any]], object], message: str
) -> None:
    payload = _valid_payload(event_type)
    mutate(payload)
    assert validate_payload(event_type, payload) == message


def test_validate_payload_multi_shape_reports_closest_shape() -> None:
    # Looks like the stream-context form (shares projectId/streamId), so blame that shape.
    stream_like = {"projectId": "p", "streamId": "s"}
    assert validate_payload("artifact:created", stream_like) == (
        "payload.filename: required field missing"
    )
    # Looks like the record form with a snake_case leftover: blame the record shape.
    record_like = {
        "id": "a",
        "name": "n",
        "type": "t",
        "path": "p",
        "status": "s",
        "phase": "1",
        "phase_name": "x",
        "isSharded": False,
    }
    assert validate_payload("artifact:updated", record_like) == (
        "payload.phaseName: required field missing"
    )
    # Shares no key with either shape (a tie): blame the first declared, the record form.
    assert (
        validate_payload("artifact:created", {"other": 1}) == "payload.id: required field missing"
    )


def test_validate_payload_allows_extra_keys_and_missing_optionals() -> None:
    assert validate_payload("chat:cancel", {"conversationId": "c", "extra": [1, None]}) is None
    assert validate_payload("connection:status", {"status": "connected"}) is None
    assert (
        validate_payload(
            "stream:phase-changed", _valid_payload("stream:phase-changed") | {"artifacts": []}
        )
        is None
    )


def test_validate_payload_rejects_non_object_payload() -> None:
    assert validate_payload("chat:cancel", ["c"]) == "payload: expected object, got array"
    assert validate_payload("chat:cancel", None) == "payload: expected object, got null"


def test_validate_payload_unknown_type_raises_key_error() -> None:
    with pytest.raises(KeyError):
        validate_payload("app:custom-thing", {})


# --- JSON Schema ---------------------------------------------------------------------------------


def test_json_schema_is_deterministic_and_covers_catalog() -> None:
    first = json.dumps(json_schema(), sort_keys=True)
    assert first == json.dumps(json_schema(), sort_keys=True)
    schema = json.loads(first)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"]["pattern"] == f"^{EVENT_NAME_RE.pattern}$"
    defs = schema["$defs"]
    rules = schema["dependentSchemas"]["type"]["allOf"]
    assert [rule["if"]["properties"]["type"]["const"] for rule in rules] == sorted(CATALOG)
    for rule in rules:  # each catalogued type points at its payload definition
        name = codegen.type_name(rule["if"]["properties"]["type"]["const"])
        assert rule["then"]["properties"]["payload"] == {"$ref": f"#/$defs/{name}"}
        assert name in defs
    assert set(defs["EventMap"]["properties"]) == {
        t for t, spec in CATALOG.items() if spec.direction == "server"
    }
    assert set(defs["ClientEventMap"]["properties"]) == {"chat:send", "chat:cancel"}
    assert defs["ArtifactCreatedPayload"]["anyOf"] == [
        {"$ref": "#/$defs/ArtifactEventPayload"},
        {"$ref": "#/$defs/ArtifactStreamPayload"},
    ]
    record, stream = defs["ArtifactEventPayload"], defs["ArtifactStreamPayload"]
    assert "parentId" not in record["required"] and "isSharded" in record["required"]
    assert record["properties"]["isSharded"] == {"type": "boolean"}
    assert stream["required"] == ["filename", "projectId", "streamId"]
    payloads = [d for name, d in defs.items() if name not in ("EventMap", "ClientEventMap")]
    assert all(d.get("additionalProperties", True) is True for d in payloads)  # extras allowed


def test_json_schema_validates_real_events() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator_cls = jsonschema.Draft202012Validator
    schema = json_schema()
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)

    for _, build, _, _ in CONSTRUCTOR_CASES:
        envelope = json.loads(encode(build()))
        validator.validate(envelope)
        validator.validate(json.loads(with_seq(encode(build()), 42)))

    custom = {
        "type": "app:custom-thing",
        "payload": {"any": 1},
        "timestamp": "2026-01-01T00:00:00Z",
    }
    assert validator.is_valid(custom)

    bad_cases: list[dict[str, Any]] = []
    missing = json.loads(encode(events.new_stream_created_event("p", "s", "n")))
    del missing["payload"]["streamId"]
    bad_cases.append(missing)
    bool_seq = json.loads(encode(events.new_connection_status_event()))
    bool_seq["payload"]["seq"] = True
    bad_cases.append(bool_seq)
    snake = json.loads(encode(events.new_artifact_created_event(**_record_kwargs())))
    snake["payload"]["phase_name"] = snake["payload"].pop("phaseName")
    bad_cases.append(snake)
    bad_cases.append(custom | {"type": "Bad_Name"})
    bad_cases.append(custom | {"extra": 1})
    bad_cases.append(custom | {"timestamp": "2026-01-01T00:00:00+00:00"})
    for bad in bad_cases:
        assert not validator.is_valid(bad), bad
