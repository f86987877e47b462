"""The npm dev tools the tests run (json2ts, tsc, vite, publint, attw): ``npm ci`` at the repo
root installs them; and the Electron example's own dependencies.

Under ``CI=true`` a missing tool fails the test; elsewhere the test skips, saying so loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.needs import unavailable

ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = ROOT / "node_modules" / ".bin"


def node_tool(name: str) -> Path:
    """The path of ``node_modules/.bin/<name>``; fails (CI) or skips the test without it."""
    path = NODE_BIN / name
    if path.is_file() and shutil.which("node"):
        return path
    reason = f"{path} is missing (or node is): run `npm ci` in {ROOT}; ./scripts/test does"
    unavailable(reason)


ELECTRON = ROOT / "examples" / "electron"


def electron_example() -> str:
    """``node``, with ``examples/electron``'s dependencies installed (``npm ci --omit=dev``:
    ws, and sidecar-hub-client linked from ``sidecar/static``) if they are missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for examples/electron (Node >= 20)")
    assert node is not None and npm is not None
    installed = ELECTRON / "node_modules"
    if not ((installed / "ws").is_dir() and (installed / "sidecar-hub-client").exists()):
        result = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund"],
            cwd=ELECTRON,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            unavailable(f"npm ci failed in examples/electron:\n{result.stderr[-2000:]}")
    return node
