"""The binary from ``scripts/build-binary``, built at most once per test run.

Under ``CI=true`` a build that cannot be made fails the test that asked for it; elsewhere it
is skipped with the reason. ``scripts/build-binary`` caches by a hash of the sources, so an
unchanged tree costs ~0.1 s; a build from nothing took 7-11 s on 2 cores.
``SIDECAR_BINARY_ONEFILE=1`` asks for the one-file build instead of the one-folder one.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from tests.needs import unavailable

ROOT = Path(__file__).resolve().parent.parent
ONEFILE = os.environ.get("SIDECAR_BINARY_ONEFILE") == "1"
BUILD_TIMEOUT = 300


@functools.cache
def _build() -> tuple[Path | None, str]:
    if sys.platform == "win32":
        command = [sys.executable, str(ROOT / "scripts" / "build_binary.py")]
    else:
        command = [str(ROOT / "scripts" / "build-binary")]
    if ONEFILE:
        command.append("--onefile")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if result.returncode != 0:
        return None, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    return (path, "") if path.is_file() else (None, f"no executable at {path}")


def built_binary() -> Path:
    """The executable's path (building it the first time); fails or skips if it cannot."""
    path, failure = _build()
    if path is None:
        unavailable(f"scripts/build-binary could not build the sidecar binary:\n{failure}")
    assert path is not None
    return path
