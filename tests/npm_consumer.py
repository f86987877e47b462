"""A scratch consumer of the npm package ``sidecar-hub-client``, built the way an app meets it.

``npm pack sidecar/static`` makes the tarball; a fresh directory gets the Tauri example's page
(``examples/tauri``: ``index.html``, ``src/main.ts``, ``vite.config.js``, its ``tsconfig``) and
the fixtures of ``tests/npm``; ``npm install <tarball>`` installs the package (it has no
dependencies: nothing else comes in). The tools (tsc, vite, publint, attw) are the repo's
pinned npm dev tools (``npm ci`` at the root); they run from there against the scratch
directory, which lies outside the repository so that nothing but the tarball can resolve.

Built once per test session (``npm_consumer`` in ``tests/conftest.py``); the test thread only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.needs import unavailable
from tests.nodetools import ROOT, node_tool

STATIC = ROOT / "sidecar" / "static"
TAURI = ROOT / "examples" / "tauri"
FIXTURES = ROOT / "tests" / "npm"


@dataclass
class Consumer:
    """The packed tarball and the scratch app that installed it."""

    app: Path
    tarball: Path
    files: list[str]
    unpacked_size: int
    #: Seconds each step took (pack, install, build), for the report.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dist(self) -> Path:
        return self.app / "dist"


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool (no shell), capturing its output; never raises on a non-zero exit."""
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _checked(argv: list[str], cwd: Path, timings: dict[str, float], name: str) -> str:
    started = time.monotonic()
    done = run(argv, cwd)
    timings[name] = round(time.monotonic() - started, 2)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def build(workdir: Path) -> Consumer:
    """Pack, install into a scratch copy of the Tauri page, build it with Vite."""
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm is needed to pack and install sidecar-hub-client (Node >= 20.19)")
    assert npm is not None
    vite = node_tool("vite")
    timings: dict[str, float] = {}
    packed = json.loads(
        _checked(
            [npm, "pack", str(STATIC), "--pack-destination", str(workdir), "--json"],
            workdir,
            timings,
            "npm pack",
        )
    )[0]
    tarball = workdir / packed["filename"]
    app = workdir / "app"
    (app / "src").mkdir(parents=True)
    for name in ("index.html", "vite.config.js", "src/main.ts"):
        shutil.copy(TAURI / name, app / name)
    shutil.copytree(FIXTURES, app / "fixtures")
    (app / "package.json").write_text(
        json.dumps({"name": "scratch-consumer", "private": True, "type": "module"}) + "\n"
    )
    tsconfig: dict[str, Any] = json.loads((TAURI / "tsconfig.json").read_text())
    compiler = {**tsconfig["compilerOptions"], "resolveJsonModule": True}
    for name, include in (
        ("tsconfig.json", ["src", "fixtures/good.ts"]),
        ("tsconfig.bad.json", ["fixtures/bad.ts"]),
    ):
        (app / name).write_text(json.dumps({"compilerOptions": compiler, "include": include}))
    install = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", str(tarball)]
    _checked(install, app, timings, "npm install")
    _checked([str(vite), "build", "--logLevel", "warn"], app, timings, "vite build")
    files = sorted(f["path"] for f in packed["files"])
    return Consumer(app, tarball, files, int(packed["unpackedSize"]), timings)
