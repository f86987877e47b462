"""What a test does when a tool it needs is missing: fail under ``CI=true``, skip elsewhere.

CI installs every tool (``scripts/test``), so there a missing one is a broken install and must
not pass as a skip; on a developer's machine the test skips and says what to install.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this is a CI run (where nothing may be skipped for want of a tool)."""
    return os.environ.get("CI") == "true"


def unavailable(message: str, *, module_level: bool = False) -> NoReturn:
    """Fail under CI, skip loudly (with ``message``) elsewhere; ``module_level`` at a test
    module's top, where it fails or skips the whole module."""
    if in_ci():
        pytest.fail(f"CI needs it: {message}", pytrace=False)
    pytest.skip(f"NOT CHECKED: {message}", allow_module_level=module_level)


def needs_module(name: str, install: str) -> None:
    """At a test module's top: :func:`unavailable` unless ``name`` can be imported."""
    if importlib.util.find_spec(name) is None:
        unavailable(f"the {name} package is not installed ({install})", module_level=True)
