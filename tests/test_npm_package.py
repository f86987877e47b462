"""The npm package ``sidecar-hub-client`` as a consumer meets it (issue 22): ``npm pack``, a
scratch Vite + TypeScript app (the Tauri example's page) that installs the tarball, strict
``tsc`` on a good fixture (passes) and a bad one (fails on each wrong line, and only there),
``vite build``, publint and attw; and the package is the very files the sidecar serves, in
lockstep with the server's version. Needs the root's npm dev tools (``npm ci``)."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import sidecar
from sidecar.protocol import SUBPROTOCOL
from tests.conftest import RunningSidecar
from tests.nodetools import node_tool
from tests.npm_consumer import FIXTURES, STATIC, Consumer, run

SERVED = [
    "sidecar-client.d.ts",
    "sidecar-client.js",
    "sidecar-events.d.ts",
    "sidecar-events.schema.json",
]


def test_the_tarball_holds_exactly_the_files_the_sidecar_serves(
    npm_consumer: Consumer, sidecar: RunningSidecar
) -> None:
    assert npm_consumer.files == sorted(["README.md", "package.json", *SERVED])
    installed = npm_consumer.app / "node_modules" / "sidecar-hub-client"
    for name in SERVED:
        with urllib.request.urlopen(f"{sidecar.url}/client/{name}", timeout=5) as reply:
            assert reply.read() == (installed / name).read_bytes() == (STATIC / name).read_bytes()


def test_versions_move_in_lockstep_and_the_protocol_is_declared() -> None:
    package = json.loads((STATIC / "package.json").read_text())
    client = (STATIC / "sidecar-client.js").read_text()
    assert package["version"] == sidecar.__version__
    assert re.search(rf'^export const VERSION = "{re.escape(sidecar.__version__)}";$', client, re.M)
    assert package["sidecar"] == {
        "protocol": SUBPROTOCOL,
        "server": f"sidecar-hub=={sidecar.__version__}",
    }
    assert f"Speaks {SUBPROTOCOL}." in package["description"]
    readme = (STATIC / "README.md").read_text()
    assert (
        f"**Speaks `{SUBPROTOCOL}`.**" in readme and f"sidecar-hub=={sidecar.__version__}" in readme
    )
    assert package["type"] == "module" and package["sideEffects"] is False
    assert list(package["exports"]["."]) == ["types", "default"]  # types first
    assert package["exports"]["./events"] == {"types": "./sidecar-events.d.ts"}  # types only


def test_the_good_fixture_and_the_tauri_page_typecheck_strictly(npm_consumer: Consumer) -> None:
    done = run([str(node_tool("tsc")), "-p", "tsconfig.json"], npm_consumer.app)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_bad_fixture_fails_on_each_wrong_line_and_nowhere_else(npm_consumer: Consumer) -> None:
    done = run([str(node_tool("tsc")), "-p", "tsconfig.bad.json"], npm_consumer.app)
    lines = (FIXTURES / "bad.ts").read_text().splitlines()
    expected = {n for n, line in enumerate(lines, 1) if "// expect-error" in line}
    failing = {
        int(m) for m in re.findall(r"^fixtures/bad\.ts\((\d+),\d+\): error TS", done.stdout, re.M)
    }
    assert len(expected) >= 14
    assert failing == expected, done.stdout


def test_vite_builds_the_tauri_page_with_the_client_bundled(npm_consumer: Consumer) -> None:
    assets = list((npm_consumer.dist / "assets").glob("*.js"))
    assert len(assets) == 1 and (npm_consumer.dist / "index.html").is_file()
    bundle = assets[0].read_text()
    assert "sidecar.v1" in bundle and "channel:subscribe" in bundle
    assert assets[0].name in (npm_consumer.dist / "index.html").read_text()


def test_publint_and_attw_find_nothing(npm_consumer: Consumer) -> None:
    publint = run([str(node_tool("publint")), "run", "--strict", str(npm_consumer.tarball)], STATIC)
    assert publint.returncode == 0, publint.stdout + publint.stderr
    attw = [
        str(node_tool("attw")),
        str(npm_consumer.tarball),
        "--profile",
        "esm-only",
        "--format",
        "json",
    ]
    done = run(attw, npm_consumer.app)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    problems = [
        p
        for p in report.get("analysis", {}).get("problems", [])
        if p.get("resolutionKind") not in ("node10", "node16-cjs")
    ]
    assert problems == [], problems


def test_node_resolves_every_entry_of_the_installed_package(npm_consumer: Consumer) -> None:
    script = (
        'const client = await import("sidecar-hub-client");'
        'const schema = await import("sidecar-hub-client/schema.json", { with: { type: "json" } });'
        'const pkg = await import("sidecar-hub-client/package.json", { with: { type: "json" } });'
        "let events = 'resolved';"
        'try { await import("sidecar-hub-client/events"); } catch (err) { events = err.code; }'
        "console.log(JSON.stringify([client.SUBPROTOCOL, client.VERSION, schema.default.title,"
        " pkg.default.name, events, typeof client.SidecarClient]));"
    )
    done = run(["node", "--input-type=module", "-e", script], npm_consumer.app)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        SUBPROTOCOL,
        sidecar.__version__,
        "SidecarEnvelope",
        "sidecar-hub-client",
        "ERR_PACKAGE_PATH_NOT_EXPORTED",  # ./events is types only
        "function",
    ]
