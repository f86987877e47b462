"""The generated schema and TypeScript declarations (sidecar.schema): fresh, valid, complete."""

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
from sidecar.envelope import Event, encode, with_seq
from sidecar.events import CATALOG

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator() -> Any:
    """A validator for the committed schema file (what frontends and tools actually use)."""
    committed = json.loads((schema.STATIC_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(committed)
    return jsonschema.Draft202012Validator(committed)


@pytest.fixture(scope="module")
def dts() -> str:
    return (schema.STATIC_DIR / schema.DTS_FILE).read_text(encoding="utf-8")


# -- freshness ------------------------------------------------------------------------------


def test_committed_copies_are_up_to_date() -> None:
    stale = schema.stale_files()
    assert not stale, f"stale generated files {stale}: run `sidecar schema` and commit them"


def test_committed_schema_is_the_catalog_schema() -> None:
    committed = json.loads((schema.STATIC_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8"))
    assert committed == events.json_schema()


def test_main_writes_then_check_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [schema.SCHEMA_FILE, schema.DTS_FILE]
    )
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_check_detects_a_hand_edit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert schema.main(["--out-dir", str(tmp_path)]) == 0
    dts_path = tmp_path / schema.DTS_FILE
    dts_path.write_text(dts_path.read_text().replace("streamId: string;", "streamId: number;"))
    assert schema.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert schema.DTS_FILE in capsys.readouterr().err
    assert schema.stale_files(tmp_path) == [schema.DTS_FILE]


def test_generation_is_deterministic() -> None:
    assert schema.outputs() == schema.outputs()
    assert schema.render_schema().endswith("}\n")


# -- every constructor's output validates ----------------------------------------------------

# Arguments whose valid values are constrained beyond their type.
_SPECIAL_ARGUMENTS: dict[str, list[Any]] = {
    "event_type": [events.ARTIFACT_CREATED, events.ARTIFACT_UPDATED],
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


def test_dts_declares_every_payload_field(dts: str) -> None:
    for event_type, spec in CATALOG.items():
        block = re.search(
            rf"^export (?:interface|type) {schema.type_name(event_type)}\b(.*?)^(?:\}}|  \}};)$",
            dts,
            re.S | re.M,
        )
        assert block, event_type
        text = block.group(1)
        for shape in spec.shapes:
            for field, field_spec in shape.items():
                mark = "" if field_spec.required else "?"
                assert re.search(rf"\b{field}{re.escape(mark)}: ", text), (event_type, field)


def test_dts_field_types() -> None:
    text = schema.render_dts()
    assert "  artifacts: string[];" in text  # array<string>
    assert "  changes: Record<string, unknown>;" in text  # object
    assert "  isSharded: boolean;" in text
    assert "  seq?: number;" in text  # optional integer
    assert "  parentId?: string;" in text


def test_dts_type_names() -> None:
    assert schema.type_name("stream:phase-changed") == "StreamPhaseChangedPayload"
    assert schema.type_name("connection:status") == "ConnectionStatusPayload"


def test_dts_typechecks_with_tsc(tmp_path: Path) -> None:
    """``on("stream:created", p => p.streamId)`` type-checks and a typo does not.

    Runs only where TypeScript's ``tsc`` is on PATH (``npm install -g typescript``).
    """
    tsc = shutil.which("tsc")
    if tsc is None:
        pytest.skip("tsc not on PATH (npm install -g typescript@5 to run this check)")
    shutil.copy(schema.STATIC_DIR / schema.DTS_FILE, tmp_path / schema.DTS_FILE)
    shutil.copy(schema.STATIC_DIR / "sidecar-client.js", tmp_path / "sidecar-client.js")
    (tmp_path / "good.ts").write_text(
        'import { SidecarClient } from "./sidecar-client.js";\n'
        'const client = new SidecarClient("ws://127.0.0.1:3008/ws", { token: "t" });\n'
        'client.on("stream:created", (p) => { const id: string = p.streamId; void id; });\n'
        'client.on("stream:phase-changed", (p, e) => { const a: string[] = p.artifacts;'
        " const s: number | undefined = e.seq; void a; void s; });\n"
        'client.on("*", (e) => { if (e.type === "stream:archived") void e.payload; });\n'
        'client.on("state", (c) => void c.state);\n'
        'client.on("resync", (r) => void r.reason);\n'
        'client.send("chat:send", { conversationId: "c", content: "hi" });\n'
    )
    (tmp_path / "bad.ts").write_text(
        'import { SidecarClient } from "./sidecar-client.js";\n'
        'const client = new SidecarClient("ws://127.0.0.1:3008/ws");\n'
        'client.on("stream:created", (p) => void p.streamid);\n'
    )
    flags = ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext"]
    flags += ["--lib", "es2022,dom"]
    good = subprocess.run([tsc, *flags, "good.ts"], cwd=tmp_path, capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([tsc, *flags, "bad.ts"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "streamid" in bad.stdout, bad.stdout
