"""The generated schema and TypeScript (sidecar.schema): fresh, valid, complete, type-checked.

The checks that run json2ts or tsc (from ``npm ci`` at the repo root) fail under ``CI=true``
when those are missing, and skip loudly elsewhere (:func:`tests.nodetools.node_tool`).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import shutil
import subprocess
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from sidecar import events, schema
from sidecar.catalog import codegen
from sidecar.envelope import Event, encode, with_seq
from sidecar.events import CATALOG
from tests.nodetools import node_tool

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator() -> Any:
    """A validator for the committed schema file (what frontends and tools actually use)."""
    committed = json.loads((schema.STATIC_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(committed)
    return jsonschema.Draft202012Validator(committed)


@pytest.fixture(scope="module")
def dts() -> str:
    """The committed generated declarations (json2ts's output)."""
    return (schema.STATIC_DIR / schema.EVENTS_DTS_FILE).read_text(encoding="utf-8")


# -- freshness ------------------------------------------------------------------------------


def test_committed_schema_is_the_catalog_schema() -> None:
    committed = (schema.STATIC_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == schema.render_schema(), "stale schema: run `sidecar schema` and commit"
    assert json.loads(committed) == events.json_schema()


def test_committed_dts_is_what_json2ts_makes_of_the_schema() -> None:
    json2ts = node_tool("json2ts")
    committed = (schema.STATIC_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8")
    generated = schema.render_dts(committed, json2ts)
    assert (schema.STATIC_DIR / schema.EVENTS_DTS_FILE).read_text(encoding="utf-8") == generated
    assert schema.stale_files() == []  # what `sidecar schema --check` reports


def test_main_writes_then_check_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    node_tool("json2ts")
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [schema.SCHEMA_FILE, schema.EVENTS_DTS_FILE]
    )
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_check_detects_a_hand_edit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    node_tool("json2ts")
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    dts_path = tmp_path / schema.EVENTS_DTS_FILE
    dts_path.write_text(dts_path.read_text().replace("streamId: string;", "streamId: number;"))
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert schema.EVENTS_DTS_FILE in capsys.readouterr().err
    assert schema.stale_files(tmp_path) == [schema.EVENTS_DTS_FILE]


def test_missing_json2ts_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(codegen, "JSON2TS", tmp_path / "node_modules" / ".bin" / "json2ts")
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "npm ci" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_generation_is_deterministic() -> None:
    assert schema.render_schema() == schema.render_schema()
    assert schema.render_schema().endswith("}\n")


# -- every constructor's output validates ----------------------------------------------------

# Arguments whose valid values are constrained beyond their type.
_SPECIAL_ARGUMENTS: dict[str, list[Any]] = {
    "event_type": [events.ARTIFACT_CREATED, events.ARTIFACT_UPDATED],
    "channels": [None, {}, {"project:p1": {"epoch": "h1", "seq": 7, "recovered": False}}],
}


def _values_for(name: str, annotation: Any, optional: bool) -> list[Any]:
    if name in _SPECIAL_ARGUMENTS:
        return _SPECIAL_ARGUMENTS[name]
    args = typing.get_args(annotation)
    if type(None) in args:  # X | None: try both
        inner = next(a for a in args if a is not type(None))
        return [None, *_values_for(name, inner, optional)]
    origin = typing.get_origin(annotation) or annotation
    if annotation is str:
        values: list[Any] = [f"{name}-value", 'ünïcode ✓ "quoted" <b>']
    elif annotation is bool:
        values = [True, False]
    elif annotation is int:
        values = [0, 42]
    elif origin in (Mapping, dict) or annotation is Mapping:
        values = [{}, {"name": "B", "nested": {"list": [1, "two", None]}}]
    elif origin in (Iterable, list, tuple):
        values = [[], ("a.md", "b.md")]
    else:
        raise AssertionError(f"no test values for {name}: {annotation!r}; extend _values_for")
    return values


def _constructor_calls() -> list[tuple[str, Callable[[], Event]]]:
    """Every ``new_*_event`` constructor, called with each argument's value variants
    (variant k uses each argument's k-th value, or its last), so optional fields are both
    absent and present."""
    calls: list[tuple[str, Callable[[], Event]]] = []
    for name in sorted(n for n in events.__all__ if re.fullmatch(r"new_\w+_event", n)):
        build = getattr(events, name)
        hints = typing.get_type_hints(build)
        params = inspect.signature(build).parameters
        choices = {
            p: _values_for(p, hints[p], param.default is not inspect.Parameter.empty)
            for p, param in params.items()
        }
        variants = max((len(v) for v in choices.values()), default=1)
        for k in range(variants):
            kwargs = {p: values[min(k, len(values) - 1)] for p, values in choices.items()}
            calls.append((f"{name}#{k}", functools.partial(build, **kwargs)))
    return calls


CONSTRUCTOR_CALLS = _constructor_calls()


def test_every_catalogued_type_has_a_constructor_call() -> None:
    built = {call().type for _, call in CONSTRUCTOR_CALLS}
    assert built == set(CATALOG)


@pytest.mark.parametrize(
    ("name", "build"), CONSTRUCTOR_CALLS, ids=[c[0] for c in CONSTRUCTOR_CALLS]
)
def test_constructor_output_validates(
    name: str, build: Callable[[], Event], validator: Any
) -> None:
    envelope = json.loads(encode(build()))
    errors = [e.message for e in validator.iter_errors(envelope)]
    assert not errors, (name, envelope, errors)
    broadcast = json.loads(with_seq(encode(build()), 7))  # as the hub sends it
    assert validator.is_valid(broadcast), broadcast


def test_schema_rejects_what_constructors_never_produce(validator: Any) -> None:
    good = json.loads(encode(events.new_stream_created_event("p", "s", "n")))
    assert validator.is_valid(good)
    for bad in (
        {**good, "payload": {k: v for k, v in good["payload"].items() if k != "streamId"}},
        {**good, "payload": {**good["payload"], "streamId": 1}},
        {**good, "seq": -1},
        {**good, "seq": "1"},
        {**good, "type": "Stream:Created"},
        {k: v for k, v in good.items() if k != "timestamp"},
    ):
        assert not validator.is_valid(bad), bad


def test_the_hubs_channel_frames_validate(sidecar: Any, validator: Any) -> None:
    """What a real hub sends with channels (the status's ``channels``, the ``channel:*``
    answers, an event's ``channel``) is what the schema describes."""
    from tests.conftest import recv_json

    ws, status = sidecar.connect_ready("?channels=project:p1")
    frames = [status]
    for kind, channel in [
        ("subscribe", "chat:c9"),
        ("subscribe", "Bad"),
        ("unsubscribe", "chat:c9"),
    ]:
        ws.send(json.dumps({"type": f"channel:{kind}", "payload": {"channel": channel}}))
        frames.append(recv_json(ws))
    sidecar.hub.publish([events.new_stream_created_event("p", "s", "n")], "project:p1")
    frames.append(recv_json(ws))
    assert [f["type"] for f in frames] == [
        "connection:status",
        "channel:subscribed",
        "channel:error",
        "channel:unsubscribed",
        "stream:created",
    ]
    assert "channels" in frames[0]["payload"] and frames[-1]["channel"] == "project:p1"
    for frame in frames:
        errors = [e.message for e in validator.iter_errors(frame)]
        assert not errors, (frame, errors)
    assert not validator.is_valid({**frames[-1], "channel": "Not A Channel"})


# -- the TypeScript declarations -------------------------------------------------------------


def _map_entries(dts: str, map_name: str) -> dict[str, str]:
    match = re.search(rf"export interface {map_name} \{{\n(.*?)\n\}}", dts, re.S)
    assert match, f"no {map_name} in the d.ts"
    return dict(re.findall(r'^\s+"([^"]+)": (\w+);$', match.group(1), re.M))


def test_dts_maps_every_event_type(dts: str) -> None:
    server = _map_entries(dts, "EventMap")
    client = _map_entries(dts, "ClientEventMap")
    expected_server = {t for t, spec in CATALOG.items() if spec.direction == "server"}
    expected_client = {t for t, spec in CATALOG.items() if spec.direction == "client"}
    assert set(server) == expected_server
    assert set(client) == expected_client
    for event_type, type_name in {**server, **client}.items():
        assert type_name == schema.type_name(event_type)
        assert re.search(rf"^export (interface|type) {type_name}\b", dts, re.M), type_name


def _interface(dts: str, name: str) -> str:
    block = re.search(rf"^export interface {name} \{{\n(.*?)^\}}", dts, re.S | re.M)
    assert block, name
    return block.group(1)


def test_dts_declares_every_payload_field(dts: str) -> None:
    for event_type, spec in CATALOG.items():
        for shape in spec.shapes:
            text = _interface(dts, shape.__name__)
            declared = re.findall(r"^  (\w+)(\??): ", text, re.M)
            required = shape.__required_keys__  # type: ignore[attr-defined]
            optional = shape.__optional_keys__  # type: ignore[attr-defined]
            expected = {(k, "") for k in required} | {(k, "?") for k in optional}
            assert set(declared) == expected, (event_type, shape.__name__)
    assert re.search(
        r"^export type ArtifactCreatedPayload = ArtifactEventPayload \| ArtifactStreamPayload;$",
        dts,
        re.M,
    )


def test_dts_field_types(dts: str) -> None:
    assert "  artifacts: string[];" in dts  # list[str]
    assert "  changes: {\n    [k: string]: unknown;\n  };" in dts  # dict[str, Any]
    assert "  isSharded: boolean;" in dts
    assert "  seq?: number;" in dts  # optional integer
    assert "  parentId?: string;" in dts
    assert "[k: string]" not in _interface(dts, "StreamCreatedPayload")  # typos must not pass


def test_dts_type_names() -> None:
    assert schema.type_name("stream:phase-changed") == "StreamPhaseChangedPayload"
    assert schema.type_name("connection:status") == "ConnectionStatusPayload"


def test_client_dts_is_hand_written_and_imports_the_generated_types() -> None:
    client = (schema.STATIC_DIR / schema.CLIENT_DTS_FILE).read_text(encoding="utf-8")
    assert 'from "./sidecar-events.js";' in client
    assert "export * from" in client
    assert "export declare class SidecarClient" in client
    assert "Generated" not in client.splitlines()[0]


_GOOD_TS = """\
import { SidecarClient, type StreamCreatedPayload } from "./sidecar-client.js";
const client = new SidecarClient("ws://127.0.0.1:3008/ws", { token: "t" });
client.on("stream:created", (p) => { const id: string = p.streamId; void id; });
client.on("stream:phase-changed", (p, e) => {
  const a: string[] = p.artifacts; const s: number | undefined = e.seq; void a; void s;
});
client.on("artifact:created", (p) => {
  if ("filename" in p) void p.filename; else void p.isSharded;
});
client.on("*", (e) => { if (e.type === "stream:archived") void e.payload; });
client.on("state", (c) => void c.state);
client.on("resync", (r) => void r.reason);
client.send("chat:send", { conversationId: "c", content: "hi" });
const created: StreamCreatedPayload = { projectId: "p", streamId: "s", name: "n" };
void created;
"""

# each line must fail on its own: a typo'd field, a wrong field type, a field of only one of
# the two artifact shapes used without narrowing
_BAD_TS = {
    "streamid": 'client.on("stream:created", (p) => void p.streamid);',
    "number": 'client.on("stream:created", (p) => { const n: number = p.name; void n; });',
    "union": 'client.on("artifact:created", (p) => void p.filename);',
}


def test_declarations_typecheck_with_tsc(tmp_path: Path) -> None:
    """``on("stream:created", p => p.streamId)`` type-checks; a typo or a wrong type does not."""
    tsc = node_tool("tsc")
    for name in (schema.CLIENT_DTS_FILE, schema.EVENTS_DTS_FILE, "sidecar-client.js"):
        shutil.copy(schema.STATIC_DIR / name, tmp_path / name)
    head = 'import { SidecarClient } from "./sidecar-client.js";\n'
    head += 'const client = new SidecarClient("ws://127.0.0.1:3008/ws");\n'
    (tmp_path / "good.ts").write_text(_GOOD_TS)
    for name, line in _BAD_TS.items():
        (tmp_path / f"bad_{name}.ts").write_text(head + line + "\n")
    flags = ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext"]
    flags += ["--lib", "es2022,dom"]

    def check(file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tsc), *flags, file], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    good = check("good.ts")
    assert good.returncode == 0, good.stdout + good.stderr
    for name in _BAD_TS:
        bad = check(f"bad_{name}.ts")
        assert bad.returncode != 0 and f"bad_{name}.ts" in bad.stdout, bad.stdout
