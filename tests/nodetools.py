"""The npm dev tools the tests run (json2ts, tsc): ``npm ci`` at the repo root installs them.

Under ``CI=true`` a missing tool fails the test; elsewhere the test skips, saying so loudly.
"""

from __future__ import annotations

import shutil
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
