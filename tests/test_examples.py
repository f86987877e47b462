"""The runnable examples: ``examples/electron``'s Node test, with plain Node as Electron's
main process (Electron itself cannot be downloaded here).

It runs twice: against ``scripts/serve`` and against the binary from ``scripts/build-binary``.
``npm ci`` installs the example's pinned ``ws`` when ``node_modules`` is missing. Under
``CI=true`` a missing ``node``/``npm`` fails; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.frozen import ROOT, built_binary
from tests.needs import unavailable

ELECTRON = ROOT / "examples" / "electron"


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with the example's dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for examples/electron (Node >= 20)")
    assert node is not None and npm is not None
    if not (ELECTRON / "node_modules" / "ws").is_dir():
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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sidecar", ["scripts/serve", "binary"])
def test_electron_main_process_example(node: str, sidecar: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    if sidecar == "binary":
        env["SIDECAR_BINARY"] = str(built_binary())
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/sidecar-process.test.js"],
        cwd=ELECTRON,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
    assert "# pass 3" in result.stdout
