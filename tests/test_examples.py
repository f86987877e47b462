"""The runnable examples: ``examples/electron``'s Node test, with plain Node as Electron's
main process (Electron itself cannot be downloaded here), the renderer's client (the npm
package ``sidecar-hub-client``, installed from ``sidecar/static``) included.

It runs twice: against ``scripts/serve`` and against the binary from ``scripts/build-binary``.
``npm ci`` installs the example's pinned ``ws`` when ``node_modules`` is missing. Under
``CI=true`` a missing ``node``/``npm`` fails; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.frozen import ROOT, built_binary
from tests.nodetools import electron_example

ELECTRON = ROOT / "examples" / "electron"


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with the example's dependencies installed."""
    return electron_example()


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
    assert "# pass 4" in result.stdout
