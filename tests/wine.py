"""The Windows CPython under Wine, for tests that drive a Windows sidecar from Linux.

It is ``scripts/windows.py``'s (set up once per run, cached under ``.tools/windows/``): under
``CI=true`` a missing Wine fails the test that asked for it, elsewhere it is skipped with the
reason (:mod:`tests.needs`).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from tests.needs import unavailable

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def tools() -> ModuleType:
    """``scripts/windows.py`` as a module."""
    spec = importlib.util.spec_from_file_location("windows_tools", ROOT / "scripts" / "windows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def _setup() -> str:
    """Set the Windows CPython up (once per run); what went wrong, or ``""``."""
    try:
        tools().setup()
    except tools().Unavailable as exc:
        return str(exc)
    return ""


def session() -> Iterator[dict[str, str]]:
    """For a fixture: a running Wine session; yields the environment of its programs."""
    if sys.platform != "linux":
        unavailable("Wine runs the Windows CPython on Linux only")
    failure = _setup()
    if failure:
        unavailable(f"the Windows CPython under Wine: {failure}")
    with tools().wine_session() as env:
        yield env


def python(*args: str) -> list[str]:
    """The argv running the Windows ``python.exe`` with ``args`` under Wine."""
    argv: list[str] = tools().python_argv(*args)
    return argv
